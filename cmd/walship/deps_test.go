package main

import (
	"os/exec"
	"strings"
	"testing"
)

// The layout states the architecture: backends know nothing of WAL, segment
// is pure, domain packages reach storage only through the interface.
func TestImportBoundaries(t *testing.T) {
	rules := map[string][]string{
		"./backends/...":  {"walship/segment", "walship/archive", "walship/restore", "walship/config"},
		"./segment/...":   {"walship/backends", "walship/archive", "walship/restore", "walship/config", "walship/backup", "walship/postgres"},
		"./archive/...":   {"walship/backends/fs", "walship/backends/s3", "walship/restore", "walship/config"},
		"./restore/...":   {"walship/backends/fs", "walship/backends/s3", "walship/config", "walship/postgres"},
		"./backup/...":    {"walship/backends/fs", "walship/backends/s3", "walship/config", "walship/restore"},
		"./retention/...": {"walship/backends/fs", "walship/backends/s3", "walship/config", "walship/restore", "walship/postgres"},
		"./verify/...":    {"walship/backends/fs", "walship/backends/s3", "walship/config", "walship/postgres"},
		"./postgres/...":  {"walship/backends", "walship/archive", "walship/restore", "walship/backup", "walship/config"},
	}
	for pkgs, forbidden := range rules {
		out, err := exec.Command("go", "list", "-f", `{{.ImportPath}}: {{join .Imports " "}}`, "../../"+strings.TrimPrefix(pkgs, "./")).CombinedOutput()
		if err != nil {
			t.Fatalf("go list %s: %v\n%s", pkgs, err, out)
		}
		for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
			for _, f := range forbidden {
				if strings.Contains(line, "github.com/walship/"+f+" ") || strings.HasSuffix(line, "github.com/walship/"+f) {
					t.Errorf("%s imports %s", strings.SplitN(line, ":", 2)[0], f)
				}
			}
		}
	}
}
