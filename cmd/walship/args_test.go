package main

import (
	"bytes"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

func TestFlagsFirst(t *testing.T) {
	app := newApp(&appEnv{})
	cases := []struct{ in, want string }{
		{"walship fetch A B", "walship fetch A B"},
		{"walship fetch A B --spool /s", "walship fetch --spool /s A B"},
		{"walship fetch A --spool=/s B", "walship fetch --spool=/s A B"},
		{"walship --archive /a fetch A B --log-level debug", "walship --archive /a fetch --log-level debug A B"},
		{"walship slot create dr --ttl 72h --archive /a", "walship slot create --ttl 72h --archive /a dr"},
		{"walship slot list --json", "walship slot list --json"},
		{"walship backup show ID --archive /a", "walship backup show --archive /a ID"},
		{"walship verify --quick --json", "walship verify --quick --json"},
		{"walship slot advance dr -- -odd", "walship slot advance dr -- -odd"},
		{"walship restore --pgdata /d --standby", "walship restore --pgdata /d --standby"},
		{"walship", "walship"},
		{"walship fetch A B --spool", "walship fetch A B --spool"},
	}
	for _, c := range cases {
		got := strings.Join(flagsFirst(app, strings.Fields(c.in)), " ")
		if got != c.want {
			t.Errorf("flagsFirst(%q) = %q, want %q", c.in, got, c.want)
		}
	}
}

// A global flag works before the command name as well as after it.
func TestGlobalFlagBeforeCommand(t *testing.T) {
	arch := t.TempDir()
	for _, args := range [][]string{
		{"walship", "--archive", arch, "slot", "list"},
		{"walship", "slot", "list", "--archive", arch},
	} {
		var out, errb bytes.Buffer
		code := run(args, &out, &errb)
		// An empty directory is not an archive: exit 3 and that reason,
		// never "archive: not set".
		if code != exitArchive || !strings.Contains(errb.String(), "no walship archive here") {
			t.Errorf("%v: exit %d, stderr %q", args, code, errb.String())
		}
	}
	var errb bytes.Buffer
	cfg := filepath.Join(t.TempDir(), "none.yaml")
	if code := run([]string{"walship", "--config", cfg, "status"}, &bytes.Buffer{}, &errb); code != exitUsage || !strings.Contains(errb.String(), "none.yaml") {
		t.Errorf("--config before the command: exit %d, stderr %q", code, errb.String())
	}
}

// Help states each flag's real default once, never "(default: 0)" beside
// it.
func TestHelpShowsRealDefaults(t *testing.T) {
	for _, args := range [][]string{{"agent", "--help"}, {"retention", "plan", "--help"}, {"retention", "apply", "--help"}} {
		code, stdout, _ := runOut(t, t.TempDir(), nil, args...)
		if code != 0 {
			t.Fatalf("%v: status %d", args, code)
		}
		for _, line := range strings.Split(stdout, "\n") {
			if strings.Count(line, "(default") > 1 {
				t.Errorf("%v: two defaults: %q", args, line)
			}
			if strings.Contains(line, "(default: 0") && !strings.Contains(line, "0:") {
				t.Errorf("%v: a zero default that is not the real one: %q", args, line)
			}
		}
		if args[0] == "agent" && !strings.Contains(stdout, "(default: 16)") {
			t.Errorf("agent help lacks --ahead's default 16:\n%s", stdout)
		}
	}
}

// splitDefault is a scan; it must cut exactly what the regular expression
// it replaced, `\s*\(default ([^)]*)\)$`, would.
func TestSplitDefaultAsRegexp(t *testing.T) {
	re := regexp.MustCompile(`\s*\(default ([^)]*)\)$`)
	for _, u := range []string{
		"", ")", "(default )", "segments ahead (default 16)", "x  \t(default 5m)", "a (b) (default c)",
		"a (default b) c", "a (default b (default c)", "a (default b)) ", "a (default b))", "(default (x)",
		"no default", "a(default b)", "a (default  b  )", "a (DEFAULT b)",
	} {
		wantU, wantT := u, ""
		if m := re.FindStringSubmatchIndex(u); m != nil {
			wantU, wantT = u[:m[0]], u[m[2]:m[3]]
		}
		if gotU, gotT := splitDefault(u, ""); gotU != wantU || gotT != wantT {
			t.Errorf("splitDefault(%q) = %q, %q; the regexp gives %q, %q", u, gotU, gotT, wantU, wantT)
		}
		if gotU, gotT := splitDefault(u, "set"); gotU != u || gotT != "set" {
			t.Errorf("splitDefault(%q, set) = %q, %q; want it unchanged", u, gotU, gotT)
		}
	}
}
