package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/walship/walship/archive"
	"github.com/walship/walship/backends"
	"github.com/walship/walship/backup"
	"github.com/walship/walship/config"
	"github.com/walship/walship/manifest"
	"github.com/walship/walship/postgres"
	"github.com/walship/walship/restore"
	"github.com/walship/walship/sealed"
	"github.com/walship/walship/segment"
)

func TestExitCode(t *testing.T) {
	wrap := func(err error) error { return fmt.Errorf("context: %w", err) }
	cases := []struct {
		op   op
		err  error
		want int
	}{
		{opPush, nil, exitOK},
		{opFetch, wrap(backends.ErrNotFound), exitAbsent},
		{opPush, wrap(backends.ErrNotFound), exitArchive}, // push never says "absent"
		{opFetch, wrap(archive.ErrNoIdentity), exitArchive},
		{opFetch, wrap(segment.ErrBadName), exitUsage},
		{opPush, &config.Error{Setting: "archive", Msg: "x"}, exitUsage},
		{opPush, wrap(archive.ErrConflict), exitIntegrity},
		{opPush, wrap(archive.ErrWrongCluster), exitIntegrity},
		{opPush, wrap(segment.ErrBadHeader), exitIntegrity},
		{opFetch, wrap(sealed.ErrChecksum), exitIntegrity},
		{opFetch, wrap(sealed.ErrNotSealed), exitIntegrity},
		{opFetch, wrap(archive.ErrLocal), exitLocal},
		{opFetch, errors.New("connection refused"), exitArchive},
		{opFetch, backends.Permanent(errors.New("AccessDenied")), exitArchive},
		{opBackup, wrap(postgres.ErrServer), exitPostgres},
		{opBackup, wrap(backup.ErrIncomplete), exitPostgres},
		{opBackup, wrap(fmt.Errorf("%w: %w", backup.ErrIncremental, postgres.ErrServer)), exitUsage},
		{opBackup, wrap(postgres.ErrPassword), exitUsage},
		{opBackup, wrap(manifest.ErrBadID), exitUsage},
		{opBackup, wrap(manifest.ErrNoBackup), exitAbsent},
		{opBackup, wrap(sealed.ErrChecksum), exitIntegrity},
		{opRestore, wrap(restore.ErrUnreachable), exitUnreachable},
		{opRestore, wrap(restore.ErrUsage), exitUsage},
		{opRestore, wrap(archive.ErrLocal), exitLocal},
		{opRestore, wrap(archive.ErrDamaged), exitIntegrity},
		{opRestore, wrap(segment.ErrBadHistory), exitIntegrity},
		{opAgent, wrap(archive.ErrDamaged), exitIntegrity},
	}
	for _, c := range cases {
		if got := exitCode(c.op, c.err); got != c.want {
			t.Errorf("exitCode(%v, %v) = %d, want %d", c.op, c.err, got, c.want)
		}
		if got := exitCode(c.op, c.err); got > 125 {
			t.Errorf("status %d above 125", got)
		}
	}
}

// runIn runs the CLI in dir and returns its status and stderr.
func runIn(t *testing.T, dir string, env map[string]string, args ...string) (int, string) {
	t.Helper()
	code, _, stderr := runOut(t, dir, env, args...)
	return code, stderr
}

// runOut is runIn that also returns stdout.
func runOut(t *testing.T, dir string, env map[string]string, args ...string) (int, string, string) {
	t.Helper()
	for _, k := range []string{config.EnvArchive, config.EnvConfig, config.EnvCompression, config.EnvCompressionLevel} {
		t.Setenv(k, "")
	}
	for k, v := range env {
		t.Setenv(k, v)
	}
	wd, _ := os.Getwd()
	if err := os.Chdir(dir); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = os.Chdir(wd) }()
	var stdout, stderr bytes.Buffer
	code := run(append([]string{"walship"}, args...), &stdout, &stderr)
	return code, stdout.String(), stderr.String()
}

func TestCLIUsageErrorsAreOneLine(t *testing.T) {
	dir := t.TempDir()
	arch := t.TempDir()
	cases := []struct {
		args []string
		env  map[string]string
		want string
	}{
		{[]string{"push"}, map[string]string{config.EnvArchive: arch}, "exactly one PATH"},
		{[]string{"push", "x"}, nil, "setting archive"},
		{[]string{"push", "--archive", "relative/dir", "x"}, nil, "setting archive"},
		{[]string{"push", "--archive", arch, "--compression", "lz9", "x"}, nil, "setting compression"},
		{[]string{"push", "--archive", arch, "--compression-level", "99", "x"}, nil, "setting compression-level"},
		{[]string{"push", "x"}, map[string]string{config.EnvArchive: "s3://AKIAXXXX:supersecret@bucket/p"}, "must not contain credentials"},
		{[]string{"fetch", "--archive", arch, "only-one"}, nil, "NAME and DEST"},
		{[]string{"push", "--no-such-flag", "x"}, nil, "no-such-flag"},
		{[]string{"backup", "push", "--archive", arch, "--pg", "host=x password=hunter2"}, nil, "contains a password"},
		{[]string{"backup", "push", "--archive", arch, "--pg", "postgres://u:hunter2@x/db"}, nil, "contains a password"},
		{[]string{"backup", "push", "--archive", arch, "--checkpoint", "slow"}, nil, "--checkpoint"},
		{[]string{"backup", "show", "--archive", arch, "../../etc"}, nil, "not a backup id"},
		{[]string{"backup", "show", "--archive", arch}, nil, "takes 1 argument"},
		{[]string{"restore", "--archive", arch}, nil, "pgdata"},
		{[]string{"restore", "--archive", arch, "--pgdata", dir, "--target-time", "2026-11-26 10:00:00"}, nil, "zone"},
		{[]string{"restore", "--archive", arch, "--pgdata", dir, "--target-lsn", "nope"}, nil, "--target-lsn"},
		{[]string{"restore", "--archive", arch, "--pgdata", dir, "--target-xid", "abc"}, nil, "--target-xid"},
		{[]string{"restore", "--archive", arch, "--pgdata", dir, "--target-lsn", "0/1", "--target-xid", "5"}, nil, "at most one"},
		{[]string{"restore", "--archive", arch, "--pgdata", dir, "--target-action", "pause"}, nil, "needs a target"},
		{[]string{"restore", "--archive", arch, "--pgdata", dir, "--target-immediate", "--target-action", "explode"}, nil, "target action"},
		{[]string{"restore", "--archive", arch, "--pgdata", dir, "--target-timeline", "sideways"}, nil, "target timeline"},
		{[]string{"restore", "--archive", arch, "--pgdata", dir, "--tablespace-mapping", "a=b"}, nil, "OLDDIR=NEWDIR"},
		{[]string{"restore", "--archive", arch, "--pgdata", dir, "--archive-mode", "maybe"}, nil, "--archive-mode"},
		{[]string{"agent", "--archive", arch, "--slot", "dr1", "--spool", "/srv/pg/main/pg_wal/spool"}, nil, "inside pg_wal"},
		{[]string{"agent", "--archive", arch, "--slot", "dr1"}, nil, "--spool"},
		{[]string{"agent", "--archive", arch, "--slot", "dr1", "--spool", "/tmp/s", "--ahead", "0"}, nil, "agent.ahead"},
		{[]string{"slot", "create", "--archive", arch, "Bad-Name"}, nil, "bad slot"},
		{[]string{"retention", "plan", "--archive", arch}, nil, "no retention policy"},
	}
	for _, c := range cases {
		code, stdout, out := runOut(t, dir, c.env, c.args...)
		if stdout != "" {
			t.Errorf("%v: a usage error printed to stdout: %q", c.args, stdout)
		}
		if code != exitUsage {
			t.Errorf("%v: status %d, want %d (%s)", c.args, code, exitUsage, out)
		}
		if !strings.Contains(out, c.want) {
			t.Errorf("%v: stderr %q lacks %q", c.args, out, c.want)
		}
		if strings.Count(strings.TrimSpace(out), "\n") > 0 && !strings.Contains(out, "USAGE") {
			t.Errorf("%v: more than one line: %q", c.args, out)
		}
		if strings.Contains(out, "supersecret") {
			t.Errorf("%v: secret printed: %q", c.args, out)
		}
	}
}

// In a point-in-time recovery a failure must not look like "end of WAL".
func TestFetchFailureDuringPITRStopsRecovery(t *testing.T) {
	pgdata := t.TempDir()
	if err := os.WriteFile(filepath.Join(pgdata, "recovery.signal"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(t.TempDir(), "not-mounted")
	code, _ := runIn(t, pgdata, nil, "fetch", "--archive", missing, "000000010000000000000001", "pg_wal/RECOVERYXLOG")
	if code != exitArchive+recoveryAbort {
		t.Fatalf("PITR fetch from a missing archive: status %d, want %d", code, exitArchive+recoveryAbort)
	}
	// A standby retries, so it keeps the plain status.
	if err := os.WriteFile(filepath.Join(pgdata, "standby.signal"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	code, _ = runIn(t, pgdata, nil, "fetch", "--archive", missing, "000000010000000000000001", "pg_wal/RECOVERYXLOG")
	if code != exitArchive {
		t.Fatalf("standby fetch from a missing archive: status %d, want %d", code, exitArchive)
	}
}

// A damaged record in the archive is status 4 (damaged), never 3
// (unreachable): automation must not retry it forever.
func TestDamagedIdentityIsStatus4(t *testing.T) {
	arch := t.TempDir()
	if err := os.WriteFile(filepath.Join(arch, "identity.json"), []byte("{not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	for _, args := range [][]string{
		{"fetch", "--archive", arch, "000000010000000000000001", filepath.Join(dir, "x")},
		{"status", "--archive", arch},
	} {
		if code, out := runIn(t, dir, nil, args...); code != exitIntegrity {
			t.Errorf("%v: status %d, want %d (%s)", args, code, exitIntegrity, out)
		}
	}
}
