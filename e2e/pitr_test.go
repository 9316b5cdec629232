package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/walship/walship/internal/testenv"
)

// runWalship runs the walship binary as the PostgreSQL user and returns its
// stdout, stderr and exit status.
func runWalship(t *testing.T, w *testenv.Workdir, env []string, args ...string) (string, string, int) {
	t.Helper()
	cmd := w.Command(env, walshipBin, args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("walship %v: %v", args, err)
	}
	return out.String(), errb.String(), code
}

// mustWalship runs walship and fails the test unless it exits 0.
func mustWalship(t *testing.T, w *testenv.Workdir, env []string, args ...string) string {
	t.Helper()
	out, errs, code := runWalship(t, w, env, args...)
	if code != 0 {
		t.Fatalf("walship %s: exit %d\n%s", strings.Join(args, " "), code, errs)
	}
	return out
}

// pgEnv points libpq at a cluster.
func pgEnv(c *testenv.Cluster, extra []string) []string {
	return append([]string{"PGHOST=" + c.W.Dir, "PGPORT=" + strconv.Itoa(c.Port), "PGUSER=postgres", "PGDATABASE=postgres"}, extra...)
}

// batch is one committed batch of rows and where it ended.
type batch struct {
	n        int
	xid      string
	lsn      string // WAL position after its commit
	timeThen string // server clock after its commit, before the next batch
}

// archivingPrimary starts a primary that archives into target, with a
// tablespace holding one table.
func archivingPrimary(t *testing.T, w *testenv.Workdir, target archiveTarget) (*testenv.Cluster, string) {
	primary := testenv.InitDB(t, w, "primary")
	primary.Env = target.env
	primary.Configure(t, map[string]string{
		"wal_level": "replica", "archive_mode": "on",
		"archive_command": walshipBin + " push --archive " + target.url + " %p",
	})
	primary.Start(t)
	ts := w.Mkdir(t, "ts1")
	primary.SQL(t, "CREATE TABLESPACE ts1 LOCATION '"+ts+"'")
	primary.SQL(t, "CREATE TABLE rows (batch int, i int)")
	primary.SQL(t, "CREATE TABLE spaced (i int) TABLESPACE ts1; INSERT INTO spaced SELECT generate_series(1, 321)")
	return primary, ts
}

// commitBatch inserts batch n (n*100 rows) in one transaction.
func commitBatch(t *testing.T, c *testenv.Cluster, n int) batch {
	xid := c.SQL(t, fmt.Sprintf("WITH ins AS (INSERT INTO rows SELECT %d, generate_series(1, %d)) SELECT txid_current()", n, n*100))
	return batch{n: n, xid: xid,
		lsn:      c.SQL(t, "SELECT pg_current_wal_lsn()"),
		timeThen: c.SQL(t, "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00'"),
	}
}

// rowsUpTo is the row count after batches 1..n.
func rowsUpTo(n int) string {
	total := 0
	for i := 1; i <= n; i++ {
		total += i * 100
	}
	return strconv.Itoa(total)
}

// switchAndWait closes the current segment and waits until it is archived.
func switchAndWait(t *testing.T, c *testenv.Cluster) {
	seg := c.SQL(t, "SELECT pg_walfile_name(pg_current_wal_lsn())")
	c.SQL(t, "SELECT pg_switch_wal()")
	c.WaitSQL(t, "SELECT coalesce(last_archived_wal >= '"+seg+"', false) FROM pg_stat_archiver", "t", 2*time.Minute)
}

// restoreAndCount restores into a new directory, starts it and returns the
// row count once recovery has finished (promoted). Every restored copy must
// also have no signal file left after promotion and come back out of
// recovery with the same rows after a restart.
func restoreAndCount(t *testing.T, w *testenv.Workdir, target archiveTarget, name string, args ...string) string {
	t.Helper()
	c, _ := restoreAndStart(t, w, target, name, args...)
	count := c.SQL(t, "SELECT count(*) FROM rows")
	restartPromoted(t, c, "SELECT count(*) FROM rows", count)
	c.Stop()
	return count
}

// restoreAndStart restores into a new directory (tablespace ts1 mapped
// beside it), starts it and waits until it has promoted. It returns the
// running copy and restore's log.
func restoreAndStart(t *testing.T, w *testenv.Workdir, target archiveTarget, name string, args ...string) (*testenv.Cluster, string) {
	t.Helper()
	c := testenv.EmptyCluster(t, w, name)
	ts := filepath.Join(w.Dir, name+"-ts1")
	base := []string{"restore", "--archive", target.url, "--pgdata", c.Data, "--archive-mode", "off",
		"--tablespace-mapping", filepath.Join(w.Dir, "ts1") + "=" + ts}
	_, errs, code := runWalship(t, w, target.env, append(base, args...)...)
	if code != 0 {
		t.Fatalf("restore %v: exit %d\n%s", args, code, errs)
	}
	t.Logf("restore %v:\n%s", args, errs)
	signals := signalFiles(c)
	if len(signals) != 1 || (signals[0] == "standby.signal") != slices.Contains(args, "--standby") {
		t.Fatalf("%s: restore left signal files %v, want exactly the one it means", name, signals)
	}
	c.Env = target.env
	c.Start(t)
	c.WaitSQL(t, "SELECT pg_is_in_recovery()", "f", 2*time.Minute)
	if n := c.SQL(t, "SELECT count(*) FROM spaced"); n != "321" {
		t.Fatalf("%s: tablespace table has %s rows, want 321", name, n)
	}
	return c, errs
}

// signalFiles lists the recovery signal files in a data directory.
func signalFiles(c *testenv.Cluster) []string {
	var found []string
	for _, f := range []string{"recovery.signal", "standby.signal"} {
		if _, err := os.Stat(filepath.Join(c.Data, f)); err == nil {
			found = append(found, f)
		}
	}
	return found
}

// restartPromoted checks that a promoted copy left no signal file (on
// PostgreSQL 18 a stale one made the next start PANIC), then stops and
// starts it: it must come up out of recovery, with query still giving want.
func restartPromoted(t *testing.T, c *testenv.Cluster, query, want string) {
	t.Helper()
	testenv.WaitFor(t, "the promoted copy to remove its signal file", 30*time.Second, func() bool { return len(signalFiles(c)) == 0 })
	c.Stop()
	c.Start(t)
	if r := c.SQL(t, "SELECT pg_is_in_recovery()"); r != "f" {
		t.Fatalf("%s: in recovery again after a restart", c.Data)
	}
	if got := c.SQL(t, query); got != want {
		t.Fatalf("%s: after a restart %q gives %s, want %s", c.Data, query, got, want)
	}
	if strings.Contains(c.Log(), "PANIC") {
		t.Fatalf("%s: the server log has a PANIC:\n%s", c.Data, c.Log())
	}
}

// backupAndPITR: a base backup, restores to each kind of target, a standby
// restored from the archive (TestPGVersions runs it on every major).
func backupAndPITR(t *testing.T, w *testenv.Workdir, target archiveTarget) {
	primary, _ := archivingPrimary(t, w, target)
	out := mustWalship(t, w, pgEnv(primary, target.env), "backup", "push", "--archive", target.url, "--checkpoint", "fast")
	id := strings.TrimSpace(out)
	list := mustWalship(t, w, target.env, "backup", "list", "--archive", target.url)
	if !strings.Contains(list, id) {
		t.Fatalf("backup list does not show %s:\n%s", id, list)
	}

	var b []batch
	for n := 1; n <= 4; n++ {
		b = append(b, commitBatch(t, primary, n))
		if n == 3 {
			primary.SQL(t, "SELECT pg_create_restore_point('after-batch-3')")
		}
	}
	switchAndWait(t, primary)

	cases := []struct {
		name string
		args []string
		want string
	}{
		{"lsn", []string{"--target-lsn", b[0].lsn}, rowsUpTo(1)},
		{"time", []string{"--target-time", b[1].timeThen}, rowsUpTo(2)},
		{"xid", []string{"--target-xid", b[2].xid}, rowsUpTo(3)},
		{"name", []string{"--target-name", "after-batch-3"}, rowsUpTo(3)},
		{"immediate", []string{"--target-immediate"}, "0"},
		{"end", nil, rowsUpTo(4)},
	}
	if strings.HasPrefix(target.url, "s3://") {
		cases = cases[:2] // every kind runs on the filesystem archive
	}
	for _, tc := range cases {
		if got := restoreAndCount(t, w, target, "r-"+tc.name, tc.args...); got != tc.want {
			t.Errorf("restore to %s: %s rows, want %s", tc.name, got, tc.want)
		}
	}

	// A standby restored from the archive keeps following it.
	sb := testenv.EmptyCluster(t, w, "standby")
	mustWalship(t, w, target.env, "restore", "--archive", target.url, "--pgdata", sb.Data, "--standby",
		"--archive-mode", "off", "--tablespace-mapping", filepath.Join(w.Dir, "ts1")+"="+filepath.Join(w.Dir, "sb-ts1"))
	sb.Env = target.env
	sb.Configure(t, map[string]string{"wal_retrieve_retry_interval": "200ms"})
	sb.Start(t)
	sb.WaitSQL(t, "SELECT count(*) FROM rows", rowsUpTo(4), 2*time.Minute)
	commitBatch(t, primary, 5)
	switchAndWait(t, primary)
	sb.WaitSQL(t, "SELECT count(*) FROM rows", rowsUpTo(5), 2*time.Minute)
	if r := sb.SQL(t, "SELECT pg_is_in_recovery()"); r != "t" {
		t.Fatalf("standby left recovery")
	}
}

// promotedStandby makes a primary archiving into target, its backup (id)
// and batches 1 and 2 of rows, and a standby restored from that backup
// (tablespace ts1 mapped to sb-ts1) that replays both batches from the
// archive and, once the primary is stopped, is promoted. It keeps the
// backup's archive_command: it archives timeline 2 and its history file
// into the same archive.
func promotedStandby(t *testing.T, w *testenv.Workdir, target archiveTarget) (sb *testenv.Cluster, id string) {
	t.Helper()
	primary, _ := archivingPrimary(t, w, target)
	id = strings.TrimSpace(mustWalship(t, w, pgEnv(primary, target.env), "backup", "push", "--archive", target.url, "--checkpoint", "fast"))
	commitBatch(t, primary, 1)
	switchAndWait(t, primary)

	sb = testenv.EmptyCluster(t, w, "standby")
	mustWalship(t, w, target.env, "restore", "--archive", target.url, "--pgdata", sb.Data, "--standby",
		"--tablespace-mapping", filepath.Join(w.Dir, "ts1")+"="+filepath.Join(w.Dir, "sb-ts1"))
	sb.Env = target.env
	sb.Configure(t, map[string]string{"wal_retrieve_retry_interval": "200ms"})
	sb.Start(t)
	commitBatch(t, primary, 2)
	switchAndWait(t, primary)
	sb.WaitSQL(t, "SELECT count(*) FROM rows", rowsUpTo(2), 2*time.Minute)
	primary.Stop()
	sb.SQL(t, "SELECT pg_promote()")
	sb.WaitSQL(t, "SELECT pg_is_in_recovery()", "f", time.Minute)
	return sb, id
}

// timelineRestore promotes a standby that archives into the same archive,
// writes on timeline 2, and restores along the history; then checks
// restore's refusals on the same archive (TestPGVersions runs it on every
// major).
func timelineRestore(t *testing.T, w *testenv.Workdir, target archiveTarget) {
	sb, id := promotedStandby(t, w, target)
	b3 := commitBatch(t, sb, 3)
	commitBatch(t, sb, 4)
	switchAndWait(t, sb)
	if _, err := target.store.Stat(context.Background(), "history/00000002.history"); err != nil {
		t.Fatalf("timeline 2's history file is not archived: %v", err)
	}
	if tli := sb.SQL(t, "SELECT substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)"); tli != "00000002" {
		t.Fatalf("the promoted standby writes on timeline %s, want 00000002", tli)
	}

	if got := restoreAndCount(t, w, target, "r-tl2", "--target-lsn", b3.lsn); got != rowsUpTo(3) {
		t.Errorf("restore to an LSN on timeline 2: %s rows, want %s", got, rowsUpTo(3))
	}
	if got := restoreAndCount(t, w, target, "r-tl1", "--target-timeline", "1"); got != rowsUpTo(2) {
		t.Errorf("restore along timeline 1: %s rows, want %s", got, rowsUpTo(2))
	}

	refuse := func(t *testing.T, want int, dir string, args ...string) string {
		t.Helper()
		_, errs, code := runWalship(t, w, target.env, append([]string{"restore", "--archive", target.url, "--pgdata", dir,
			"--tablespace-mapping", filepath.Join(w.Dir, "ts1") + "=" + dir + "-ts"}, args...)...)
		if code != want {
			t.Fatalf("restore %v: exit %d, want %d\n%s", args, code, want, errs)
		}
		if n := strings.Count(errs, "level=ERROR"); n != 1 {
			t.Errorf("want one error line, got:\n%s", errs)
		}
		return errs
	}
	gone := func(t *testing.T, dirs ...string) {
		t.Helper()
		for _, d := range dirs {
			if _, err := os.Stat(d); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("%s was left behind (%v)", d, err)
			}
		}
	}
	t.Run("non-empty directory", func(t *testing.T) {
		dir := w.Mkdir(t, "busy")
		keep := filepath.Join(dir, "keep")
		if err := os.WriteFile(keep, []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
		refuse(t, 2, dir)
		if ents, _ := os.ReadDir(dir); len(ents) != 1 {
			t.Errorf("restore touched the non-empty directory: %v", ents)
		}
	})
	t.Run("timeline without the target", func(t *testing.T) {
		dir := filepath.Join(w.Dir, "no-tl")
		msg := refuse(t, 6, dir, "--target-lsn", b3.lsn, "--target-timeline", "current")
		if !strings.Contains(msg, "not in the archive") {
			t.Errorf("message does not name the missing WAL: %s", msg)
		}
		gone(t, dir, dir+"-ts")
	})
	t.Run("target beyond the archive", func(t *testing.T) {
		dir := filepath.Join(w.Dir, "far")
		refuse(t, 6, dir, "--target-lsn", "FF/0")
		gone(t, dir, dir+"-ts")
	})
	t.Run("target before every backup", func(t *testing.T) {
		dir := filepath.Join(w.Dir, "early")
		msg := refuse(t, 6, dir, "--target-time", "2001-01-01 00:00:00+00")
		if !strings.Contains(msg, "before every backup") {
			t.Errorf("message: %s", msg)
		}
		gone(t, dir, dir+"-ts")
	})
	t.Run("corrupted chunk", func(t *testing.T) {
		chunk := "backups/" + id + "/base.tar.00000"
		orig := getObject(t, target, chunk)
		bad := bytes.Clone(orig)
		bad[len(bad)/2] ^= 0x40
		putObject(t, target, chunk, bad)
		defer putObject(t, target, chunk, orig)
		dir := filepath.Join(w.Dir, "corrupt")
		msg := refuse(t, 4, dir, "--target-lsn", b3.lsn)
		if !strings.Contains(msg, "base.tar.00000") {
			t.Errorf("message does not name the chunk: %s", msg)
		}
		gone(t, dir, dir+"-ts")
	})
}

// getObject reads key from the archive behind walship's back.
func getObject(t *testing.T, target archiveTarget, key string) []byte {
	t.Helper()
	r, _, err := target.store.Get(context.Background(), key)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	b, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// putObject replaces key in the archive behind walship's back.
func putObject(t *testing.T, target archiveTarget, key string, b []byte) {
	t.Helper()
	if err := target.store.Put(context.Background(), key, bytes.NewReader(b), int64(len(b))); err != nil {
		t.Fatalf("put %s: %v", key, err)
	}
}

// TestBackupFromStandby takes the backup from a streaming standby: the
// stop segment reaches the archive only after the primary switches, which
// backup push waits for.
func TestBackupFromStandby(t *testing.T) { onFilesystem(t, backupFromStandby) }

func backupFromStandby(t *testing.T, w *testenv.Workdir, target archiveTarget) {
	primary, _ := archivingPrimary(t, w, target)
	commitBatch(t, primary, 1)

	sb := testenv.EmptyCluster(t, w, "streaming")
	w.Run(t, nil, filepath.Join(primary.Bin, "pg_basebackup"), append(primary.ConnArgs(), "-D", sb.Data, "-R", "-X", "stream",
		"--no-sync", "-c", "fast", "-T", filepath.Join(w.Dir, "ts1")+"="+filepath.Join(w.Dir, "streaming-ts1"))...)
	sb.Start(t)
	commitBatch(t, primary, 2)
	sb.WaitSQL(t, "SELECT count(*) FROM rows", rowsUpTo(2), time.Minute)

	cmd := w.Command(pgEnv(sb, nil), walshipBin, "backup", "push", "--archive", target.url, "--checkpoint", "fast", "--wal-timeout", "2m")
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	// Until the backup completes, keep the primary switching segments (a
	// standby cannot), so the stop segment gets archived.
	deadline := time.After(3 * time.Minute)
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for waiting := true; waiting; {
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("backup push from the standby: %v\n%s", err, errb.String())
			}
			waiting = false
		case <-tick.C:
			primary.SQL(t, "SELECT pg_switch_wal()")
		case <-deadline:
			_ = cmd.Process.Kill()
			t.Fatalf("backup push from the standby did not finish:\n%s", errb.String())
		}
	}
	id := strings.TrimSpace(out.String())
	show := mustWalship(t, w, nil, "backup", "show", "--archive", target.url, id)
	if !strings.Contains(show, `"from_standby": true`) {
		t.Errorf("manifest does not say the backup came from a standby:\n%s", show)
	}
	b3 := commitBatch(t, primary, 3)
	commitBatch(t, primary, 4)
	switchAndWait(t, primary)
	if got := restoreAndCount(t, w, target, "r-from-standby", "--backup", id, "--target-lsn", b3.lsn,
		"--tablespace-mapping", filepath.Join(w.Dir, "streaming-ts1")+"="+filepath.Join(w.Dir, "r-from-standby-ts1")); got != rowsUpTo(3) {
		t.Errorf("restore of the standby's backup: %s rows, want %s", got, rowsUpTo(3))
	}

	// Without a target and without --standby the copy replays the archive
	// to its end and promotes: the standby.signal and primary_conninfo
	// (pg_basebackup -R) the backup carried are gone.
	c, logs := restoreAndStart(t, w, target, "r-from-standby-end", "--backup", id,
		"--tablespace-mapping", filepath.Join(w.Dir, "streaming-ts1")+"="+filepath.Join(w.Dir, "r-from-standby-end-ts1"))
	for _, want := range []string{"removed signal files the backup carried", "files=standby.signal", "primary_conninfo"} {
		if !strings.Contains(logs, want) {
			t.Errorf("restore log lacks %q (did the backup carry the standby's configuration?):\n%s", want, logs)
		}
	}
	want := primary.SQL(t, "SELECT count(*) || ':' || md5(string_agg(batch || ',' || i, ';' ORDER BY batch, i)) FROM rows")
	q := "SELECT count(*) || ':' || md5(string_agg(batch || ',' || i, ';' ORDER BY batch, i)) FROM rows"
	if got := c.SQL(t, q); got != want || !strings.HasPrefix(got, rowsUpTo(4)+":") {
		t.Fatalf("restore of the standby's backup to the end: rows %s, primary %s (want %s rows)", got, want, rowsUpTo(4))
	}
	restartPromoted(t, c, q, want)
}
