package testenv

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
)

// walshipPkg is the command the end-to-end tiers run, by import path so
// that it builds from any package directory of the module.
const walshipPkg = "github.com/walship/walship/cmd/walship"

// WalshipMain is the TestMain of a package whose tests run the walship
// binary. It builds cmd/walship as README.md builds it (static, which
// starts faster) into a temporary directory the servers' user can read
// (the servers run it as archive_command and restore_command), calls run
// with the binary's path, then stops the shared S3 server and removes the
// binary. It returns run's status, or 1 if the build failed, for TestMain
// to pass to os.Exit:
//
//	func TestMain(m *testing.M) {
//		os.Exit(testenv.WalshipMain(func(bin string) int { walshipBin = bin; return m.Run() }))
//	}
func WalshipMain(run func(bin string) int) int {
	bin, remove, err := buildWalship()
	if err != nil {
		fmt.Fprintln(os.Stderr, "build walship:", err)
		return 1
	}
	code := run(bin)
	StopS3()
	remove()
	return code
}

// buildWalship builds cmd/walship into a new temporary directory and
// returns the binary's path and a function that removes the directory.
func buildWalship() (string, func(), error) {
	dir, err := os.MkdirTemp("", "walship-bin-")
	if err != nil {
		return "", nil, err
	}
	remove := func() { _ = os.RemoveAll(dir) }
	// MkdirTemp makes it 0700; the postgres user must reach the binary.
	if err := os.Chmod(dir, 0o755); err != nil {
		remove()
		return "", nil, err
	}
	bin := filepath.Join(dir, "walship")
	build := exec.Command("go", "build", "-o", bin, walshipPkg)
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if err := build.Run(); err != nil {
		remove()
		return "", nil, err
	}
	return bin, remove, nil
}
