// Package testenv starts the real servers walship's tests run against: a
// versitygw S3 gateway and PostgreSQL clusters. A test that cannot get one
// skips, except under CI=true (or WALSHIP_TEST_REQUIRE naming it), where a
// missing server is a failure: a skipped integration test never counts as
// passing in CI.
package testenv

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Required reports whether a missing server must fail the test.
func Required(what string) bool {
	if os.Getenv("CI") == "true" {
		return true
	}
	for _, w := range strings.Split(os.Getenv("WALSHIP_TEST_REQUIRE"), ",") {
		if strings.TrimSpace(w) == what {
			return true
		}
	}
	return false
}

// Unavailable skips or fails the test, depending on Required.
func Unavailable(t testing.TB, what, why string) {
	t.Helper()
	if Required(what) {
		t.Fatalf("%s is required here (CI=true or WALSHIP_TEST_REQUIRE) but unavailable: %s", what, why)
	}
	t.Skipf("%s unavailable: %s", what, why)
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// WaitFor polls cond until it returns true or the deadline passes. Each
// poll is a real check of the condition; the interval only paces it.
func WaitFor(t testing.TB, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		<-tick.C
	}
}

// S3 is a running versitygw.
type S3 struct {
	Endpoint  string
	AccessKey string
	SecretKey string
	Region    string

	cmd  *exec.Cmd
	root string
}

// StopS3 ends the versitygw server StartS3 started, if any, and removes
// its data. Call it from TestMain after m.Run: the server is shared by
// the tests of a package, so no single test can clean it up.
func StopS3() {
	if s3Srv == nil || s3Srv.cmd == nil {
		return
	}
	_ = s3Srv.cmd.Process.Kill()
	_ = s3Srv.cmd.Wait()
	_ = os.RemoveAll(s3Srv.root)
}

var (
	s3Once     sync.Once
	s3Srv      *S3
	errS3Start error
)

func findBinary(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, dir := range []string{os.Getenv("GOBIN"), filepath.Join(os.Getenv("HOME"), "go", "bin")} {
		if dir == "" {
			continue
		}
		p := filepath.Join(dir, name)
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s not found on PATH or in ~/go/bin (scripts/test.sh installs it)", name)
}

// StartS3 returns a versitygw shared by the tests of this package, started on
// a free 127.0.0.1 port with a temporary posix root, or the one named by
// WALSHIP_TEST_S3_ENDPOINT.
func StartS3(t testing.TB) *S3 {
	t.Helper()
	if ep := os.Getenv("WALSHIP_TEST_S3_ENDPOINT"); ep != "" {
		return &S3{Endpoint: ep, AccessKey: os.Getenv("AWS_ACCESS_KEY_ID"), SecretKey: os.Getenv("AWS_SECRET_ACCESS_KEY"), Region: "us-east-1"}
	}
	s3Once.Do(func() { s3Srv, errS3Start = startVersity() })
	if errS3Start != nil {
		Unavailable(t, "s3", errS3Start.Error())
	}
	return s3Srv
}

func startVersity() (*S3, error) {
	bin, err := findBinary("versitygw")
	if err != nil {
		return nil, err
	}
	root, err := os.MkdirTemp("", "walship-versitygw-")
	if err != nil {
		return nil, err
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	addr := l.Addr().String()
	l.Close()
	srv := &S3{Endpoint: "http://" + addr, AccessKey: "walshiptest", SecretKey: randHex(16), Region: "us-east-1"}
	data, meta := filepath.Join(root, "data"), filepath.Join(root, "meta")
	for _, d := range []string{data, meta} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, err
		}
	}
	// The sidecar keeps object metadata out of extended attributes, which
	// not every filesystem a CI machine has supports.
	cmd := exec.Command(bin, "--port", addr, "posix", "--sidecar", meta, data)
	// Credentials through the environment, never on a command line.
	cmd.Env = append(os.Environ(), "ROOT_ACCESS_KEY_ID="+srv.AccessKey, "ROOT_SECRET_ACCESS_KEY="+srv.SecretKey)
	logf, err := os.Create(filepath.Join(root, "versitygw.log"))
	if err != nil {
		return nil, err
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	// The process outlives this call; it ends with the test binary
	// (Pdeathsig) so no server is ever left running.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			srv.cmd, srv.root = cmd, root
			return srv, nil
		}
		select {
		case <-ctx.Done():
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
			return nil, fmt.Errorf("versitygw did not listen on %s within 30s (log in %s)", addr, logf.Name())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// RandName is a random lower-case name for buckets and prefixes.
func RandName(prefix string) string { return prefix + randHex(6) }
