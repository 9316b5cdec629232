package main

import (
	"archive/tar"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/walship/walship/config"
)

// The restore_command walship restore writes carries the prefetch setting
// of this walship (the server does not read its shell's environment): on
// by default, off or bounded as configured, none with an agent's spool.
func TestRestoreCommandPrefetch(t *testing.T) {
	arch := fsBackup(t, func(*tar.Writer) {}, nil)
	cases := []struct {
		env       map[string]string
		args      []string
		want, not []string
	}{
		{nil, nil, []string{" --prefetch 16 %f %p"}, []string{"--prefetch-bytes", "--prefetch-idle"}},
		{map[string]string{config.EnvFetchPrefetch: "0"}, nil, []string{" --prefetch 0 %f %p"}, []string{"--prefetch-bytes"}},
		{map[string]string{config.EnvFetchPrefetchBytes: "1GiB", config.EnvFetchPrefetchIdle: "30s", config.EnvFetchPrefetchPar: "4"}, nil,
			[]string{" --prefetch 16 --prefetch-bytes 1GiB --prefetch-idle 30s --prefetch-parallel 4 %f %p"}, nil},
		{nil, []string{"--spool", "/var/spool/walship"}, []string{"--spool /var/spool/walship %f %p"}, []string{"--prefetch"}},
	}
	for i, tc := range cases {
		tc.env = fetchEnv(tc.env)
		pgdata := filepath.Join(t.TempDir(), "pgdata")
		args := append([]string{"restore", "--archive", arch, "--pgdata", pgdata, "--target-immediate"}, tc.args...)
		if code, out := runIn(t, t.TempDir(), tc.env, args...); code != 0 {
			t.Fatalf("case %d: status %d: %s", i, code, out)
		}
		b, _ := os.ReadFile(filepath.Join(pgdata, "postgresql.auto.conf"))
		var line string
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "restore_command") {
				line = l
			}
		}
		for _, w := range tc.want {
			if !strings.Contains(line, w) {
				t.Errorf("case %d: restore_command %q lacks %q", i, line, w)
			}
		}
		for _, n := range tc.not {
			if strings.Contains(line, n) {
				t.Errorf("case %d: restore_command %q has %q", i, line, n)
			}
		}
	}
}

// A bad prefetch setting is a usage error, one line naming it, 130 during
// a point-in-time recovery, never "absent".
func TestFetchPrefetchSettings(t *testing.T) {
	arch := fsBackup(t, func(*tar.Writer) {}, nil)
	pitr := t.TempDir()
	if err := os.WriteFile(filepath.Join(pitr, "recovery.signal"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		env  map[string]string
		args []string
		want string
	}{
		{nil, []string{"--prefetch", "-1"}, "fetch.prefetch"},
		{nil, []string{"--prefetch", "5000"}, "fetch.prefetch"},
		{nil, []string{"--prefetch-bytes", "lots"}, "--prefetch-bytes"},
		{nil, []string{"--prefetch-bytes", "1kB"}, "fetch.prefetch_bytes"},
		{nil, []string{"--prefetch-dir", "rel/dir"}, "fetch.prefetch_dir"},
		{nil, []string{"--prefetch-dir", "/data/pg_wal"}, "fetch.prefetch_dir"},
		{nil, []string{"--prefetch-idle", "10ms"}, "fetch.prefetch_idle"},
		{nil, []string{"--prefetch-parallel", "99"}, "fetch.prefetch_parallel"},
		{map[string]string{config.EnvFetchPrefetch: "many"}, nil, config.EnvFetchPrefetch},
		{map[string]string{config.EnvFetchPrefetchBytes: "12 parsecs"}, nil, config.EnvFetchPrefetchBytes},
	}
	for _, tc := range cases {
		tc.env = fetchEnv(tc.env)
		for dir, want := range map[string]int{t.TempDir(): exitUsage, pitr: exitUsage + recoveryAbort} {
			args := append([]string{"fetch", "--archive", arch}, tc.args...)
			code, out := runIn(t, dir, tc.env, append(args, "000000010000000000000002", filepath.Join(t.TempDir(), "x"))...)
			if code != want || !strings.Contains(out, tc.want) || strings.Count(strings.TrimSpace(out), "\n") != 0 {
				t.Errorf("%v %v: status %d, want %d and one line naming %s: %q", tc.env, tc.args, code, want, tc.want, out)
			}
		}
	}
}

// fetchEnv is env with every other fetch setting cleared (runIn's
// t.Setenv lasts for the whole test).
func fetchEnv(env map[string]string) map[string]string {
	out := map[string]string{config.EnvFetchPrefetch: "", config.EnvFetchPrefetchBytes: "", config.EnvFetchPrefetchDir: "", config.EnvFetchPrefetchIdle: "", config.EnvFetchPrefetchPar: ""}
	maps.Copy(out, env)
	return out
}
