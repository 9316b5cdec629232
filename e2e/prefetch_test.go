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
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/walship/walship/archive"
	"github.com/walship/walship/fetch"
	"github.com/walship/walship/internal/testenv"
	"github.com/walship/walship/segment"
	"github.com/walship/walship/spool"
)

// prefetchers lists the pids of the walship prefetchers started for the
// data directory pgdata (walship fetch --prefetch-run PGDATA) that are
// still running; a zombie has no command line and is not listed.
func prefetchers(t *testing.T, pgdata string) []int {
	t.Helper()
	ents, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		args := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
		for i, a := range args {
			if a == "--prefetch-run" && i+1 < len(args) && args[i+1] == pgdata && args[0] == walshipBin {
				pids = append(pids, pid)
			}
		}
	}
	return pids
}

// prefetchSpoolOf is the default spool of a data directory.
func prefetchSpoolOf(pgdata string) string {
	return filepath.Join(pgdata, "pg_wal", fetch.PrefetchDirName)
}

// spoolSegments lists the segment files in a spool.
func spoolSegments(dir string) []string {
	ents, _ := os.ReadDir(dir)
	var out []string
	for _, e := range ents {
		if _, err := segment.ParseFile(e.Name()); err == nil {
			out = append(out, e.Name())
		}
	}
	return out
}

// assertPrefetcherGone waits until no prefetcher runs for pgdata and
// checks it removed its segments and said why it stopped.
func assertPrefetcherGone(t *testing.T, pgdata, why string) {
	t.Helper()
	testenv.WaitFor(t, "the prefetcher to exit", 30*time.Second, func() bool { return len(prefetchers(t, pgdata)) == 0 })
	dir := prefetchSpoolOf(pgdata)
	if segs := spoolSegments(dir); len(segs) != 0 {
		t.Errorf("the prefetcher left segments in %s: %v", dir, segs)
	}
	log, _ := os.ReadFile(filepath.Join(dir, spool.LogFile))
	if !strings.Contains(string(log), "prefetcher stopped") || !strings.Contains(string(log), why) {
		t.Errorf("the prefetcher's log does not say it stopped (%s):\n%s", why, log)
	}
	if strings.Contains(string(log), "level=ERROR") {
		t.Errorf("the prefetcher logged an error:\n%s", log)
	}
}

// TestPrefetchPITR: a point-in-time recovery with the restore_command
// walship restore writes, prefetch on by default: it reaches the target
// with the right rows; once the prefetcher is ahead, segments are moved
// from its spool by the restore_command's mv without starting walship
// (and the prefetcher counts them taken); the prefetcher is gone after
// promotion. The test's segments are nearly empty and replay outruns any
// download, so PostgreSQL is held at a segment (batch 3's: by then it has
// reached consistency, and pg_ctl start returns) until the prefetcher has
// filled its spool: otherwise whether a segment is moved, or waited for
// by walship fetch, is a matter of timing.
func TestPrefetchPITR(t *testing.T) { onFilesystem(t, prefetchPITR) }

func prefetchPITR(t *testing.T, w *testenv.Workdir, target archiveTarget) {
	primary, _ := archivingPrimary(t, w, target)
	mustWalship(t, w, pgEnv(primary, target.env), "backup", "push", "--archive", target.url, "--checkpoint", "fast")
	var held string
	for n := 1; n <= 10; n++ {
		if n == 3 {
			// Held here, the server has reached consistency and
			// pg_ctl start returns.
			held = primary.SQL(t, "SELECT pg_walfile_name(pg_current_wal_lsn())")
		}
		commitBatch(t, primary, n)
		if n == 8 {
			primary.SQL(t, "SELECT pg_create_restore_point('pf-8')")
		}
		switchAndWait(t, primary)
	}
	c, flag := restoreHeldAt(t, w, target, "pf", held, "--target-name", "pf-8")
	c.Env = target.env
	c.Start(t)
	testenv.WaitFor(t, "the prefetcher to place 6 segments", time.Minute, func() bool { return len(spoolSegments(prefetchSpoolOf(c.Data))) >= 6 })
	if err := os.WriteFile(flag, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	c.WaitSQL(t, "SELECT pg_is_in_recovery()", "f", 2*time.Minute)
	if got := c.SQL(t, "SELECT count(*) FROM rows"); got != rowsUpTo(8) {
		t.Fatalf("recovered %s rows, want %s (to the restore point after batch 8)", got, rowsUpTo(8))
	}
	assertPrefetcherGone(t, c.Data, "recovery ended")
	restored, fetched := restoredSegments(c.Log())
	byMv := restored - fetched
	taken := prefetcherTaken(t, c.Data)
	t.Logf("%d segments restored: %d through walship fetch, %d by the restore_command's mv; the prefetcher saw %d taken", restored, fetched, byMv, taken)
	if byMv < 5 || taken < byMv {
		t.Errorf("%d of %d segments restored without walship fetch (want at least 5 of the 6 placed before the target, from the held one on, by mv), the prefetcher saw %d taken (want at least those):\n%s",
			byMv, restored, taken, c.Log())
	}
	restartPromoted(t, c, "SELECT count(*) FROM rows", rowsUpTo(8))
}

// restoreHeldAt restores into a new directory, as restoreAndStart does,
// and wraps the restore_command walship restore wrote in a script that
// holds PostgreSQL's request for segment seg until the returned file
// exists, then runs the command as written.
func restoreHeldAt(t *testing.T, w *testenv.Workdir, target archiveTarget, name, seg string, args ...string) (*testenv.Cluster, string) {
	t.Helper()
	c := testenv.EmptyCluster(t, w, name)
	mustWalship(t, w, target.env, append([]string{"restore", "--archive", target.url, "--pgdata", c.Data, "--archive-mode", "off",
		"--tablespace-mapping", filepath.Join(w.Dir, "ts1") + "=" + filepath.Join(w.Dir, name+"-ts1")}, args...)...)
	orig := restoreCommandOf(t, c.Data)
	if !strings.Contains(orig, " --prefetch 16 %f %p") || !strings.Contains(orig, "mv -f pg_wal/.walship-prefetch/%f %p 2>/dev/null || ") {
		t.Fatalf("restore wrote no prefetching, mv-first restore_command: %s", orig)
	}
	flag := filepath.Join(w.Dir, name+"-go-on")
	wrapper := filepath.Join(w.Dir, name+"-hold.sh")
	script := fmt.Sprintf("#!/bin/sh\nif [ \"$1\" = %s ]; then while [ ! -e %s ]; do sleep 0.05; done; fi\n%s\n",
		seg, flag, strings.NewReplacer("%f", `"$1"`, "%p", `"$2"`).Replace(orig))
	if err := os.WriteFile(wrapper, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	w.Chown(t, wrapper)
	c.Configure(t, map[string]string{"restore_command": wrapper + " %f %p"})
	return c, flag
}

var (
	restoredRe = regexp.MustCompile(`restored log file "[0-9A-F]{24}" from archive`)
	fetchedRe  = regexp.MustCompile(`msg=(fetched|"fetched from the prefetch spool") file=[0-9A-F]{24} `)
	takenRe    = regexp.MustCompile(`msg="prefetcher stopped" .*taken=([0-9]+) `)
)

// restoredSegments counts, in a server log, the segments PostgreSQL
// restored through its restore_command, and those of them walship fetch
// delivered (the rest the command's mv moved from the prefetch spool).
func restoredSegments(log string) (restored, fetched int) {
	return len(restoredRe.FindAllString(log, -1)), len(fetchedRe.FindAllString(log, -1))
}

// prefetcherTaken is the count of segments taken from its spool that the
// prefetcher of pgdata logged when it stopped.
func prefetcherTaken(t *testing.T, pgdata string) int {
	t.Helper()
	b, _ := os.ReadFile(filepath.Join(prefetchSpoolOf(pgdata), spool.LogFile))
	m := takenRe.FindAllSubmatch(b, -1)
	if len(m) == 0 {
		t.Fatalf("the prefetcher logged no count of segments taken:\n%s", b)
	}
	n, _ := strconv.Atoi(string(m[len(m)-1][1]))
	return n
}

// TestPrefetchBeliefNeverEndsRecovery: the prefetcher looks for a segment
// before it is in the archive (here: it is hidden, and PostgreSQL is held
// before asking for it); once it is back, the recovery fetches it from the
// archive and replays past it to the target. A prefetcher's "not there"
// never ends a point-in-time recovery early.
func TestPrefetchBeliefNeverEndsRecovery(t *testing.T) {
	onFilesystem(t, prefetchBeliefNeverEndsRecovery)
}

func prefetchBeliefNeverEndsRecovery(t *testing.T, w *testenv.Workdir, target archiveTarget) {
	primary, _ := archivingPrimary(t, w, target)
	mustWalship(t, w, pgEnv(primary, target.env), "backup", "push", "--archive", target.url, "--checkpoint", "fast")
	var hidden string
	for n := 1; n <= 6; n++ {
		if n == 3 {
			hidden = primary.SQL(t, "SELECT pg_walfile_name(pg_current_wal_lsn())")
		}
		commitBatch(t, primary, n)
		if n == 6 {
			primary.SQL(t, "SELECT pg_create_restore_point('pf-6')")
		}
		switchAndWait(t, primary)
	}
	f, _ := segment.ParseFile(hidden)
	key := archive.Key(f)
	ctx := context.Background()
	rc, _, err := target.store.Get(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(rc)
	rc.Close()
	if err != nil {
		t.Fatal(err)
	}
	if err := target.store.Delete(ctx, key); err != nil {
		t.Fatal(err)
	}

	// PostgreSQL is held before it asks for the hidden segment, around
	// the restore_command walship restore wrote.
	c, flag := restoreHeldAt(t, w, target, "belief", hidden, "--target-name", "pf-6")
	c.Env = append(slices.Clip(target.env), "WALSHIP_LOG_LEVEL=debug") // a copy: target.env is shared
	c.Start(t)

	spoolLog := filepath.Join(prefetchSpoolOf(c.Data), spool.LogFile)
	testenv.WaitFor(t, "the prefetcher to find "+hidden+" missing", time.Minute, func() bool {
		b, _ := os.ReadFile(spoolLog)
		for _, l := range strings.Split(string(b), "\n") {
			if strings.Contains(l, "not in the archive (yet)") && strings.Contains(l, "segment="+hidden) {
				return true
			}
		}
		return false
	})
	if r := c.SQL(t, "SELECT pg_is_in_recovery()"); r != "t" {
		t.Fatal("the copy left recovery before it was given the hidden segment")
	}
	if err := target.store.PutIfAbsent(ctx, key, bytes.NewReader(body), int64(len(body))); err != nil {
		t.Fatal(err)
	}
	w.Chown(t, filepath.Join(w.Dir, "archive")) // put back by root, read by postgres
	if err := os.WriteFile(flag, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	c.WaitSQL(t, "SELECT pg_is_in_recovery()", "f", 2*time.Minute)
	if got := c.SQL(t, "SELECT count(*) FROM rows"); got != rowsUpTo(6) {
		t.Fatalf("recovered %s rows, want %s: the recovery stopped before the target", got, rowsUpTo(6))
	}
	// Through walship fetch or, if the prefetcher placed it once it was
	// back, by mv.
	if !strings.Contains(c.Log(), `restored log file "`+hidden+`" from archive`) {
		t.Errorf("the server log shows no restore of %s:\n%s", hidden, c.Log())
	}
	assertPrefetcherGone(t, c.Data, "recovery ended")
}

// restoreCommandOf reads the last restore_command set in pgdata's
// postgresql.auto.conf.
func restoreCommandOf(t *testing.T, pgdata string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(pgdata, "postgresql.auto.conf"))
	if err != nil {
		t.Fatal(err)
	}
	var v string
	for _, l := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(l, "restore_command = '"); ok {
			v = strings.ReplaceAll(strings.TrimSuffix(rest, "'"), "''", "'")
		}
	}
	if v == "" {
		t.Fatalf("no restore_command in %s:\n%s", pgdata, b)
	}
	return v
}

// TestPrefetchFetchStatuses runs walship fetch as PostgreSQL's startup
// process would, in a data directory in point-in-time recovery (no
// server), against a filesystem archive of synthetic segments, one of
// them damaged: the first fetch starts one prefetcher; later fetches take
// from its spool; the damaged segment is never offered and its fetch
// fails with the archive's status (4 + 128), not "absent"; "absent" (1)
// comes only for what the archive does not have; removing recovery.signal
// (promotion) ends the prefetcher.
func TestPrefetchFetchStatuses(t *testing.T) {
	w := testenv.NewWorkdir(t)
	target := fsTarget(t, w)
	segs := w.Mkdir(t, "segs")
	for n := uint64(1); n <= 10; n++ {
		p := testenv.WriteSegment(t, segs, spoolSeg(n), spoolSysID, nil)
		w.Chown(t, p)
		mustWalship(t, w, nil, "push", "--archive", target.url, p)
	}
	damaged := filepath.Join(w.Dir, "archive", archive.Key(segment.File{Kind: segment.KindSegment, TLI: 1, Seg: 6}))
	b, err := os.ReadFile(damaged)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0xFF
	if err := os.WriteFile(damaged, b, 0o600); err != nil {
		t.Fatal(err)
	}
	pgdata := w.Mkdir(t, "pgdata")
	w.Mkdir(t, "pgdata/pg_wal")
	if err := os.WriteFile(filepath.Join(pgdata, "recovery.signal"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	w.Chown(t, pgdata)
	fetch := func(n uint64) (int, string) {
		t.Helper()
		dest := filepath.Join(pgdata, "pg_wal", "RECOVERYXLOG")
		_ = os.Remove(dest)
		cmd := w.Command(nil, walshipBin, "fetch", "--archive", target.url, spoolSeg(n), "pg_wal/RECOVERYXLOG")
		cmd.Dir = pgdata
		var errb bytes.Buffer
		cmd.Stderr = &errb
		err := cmd.Run()
		var ee *exec.ExitError
		if err != nil && !errors.As(err, &ee) {
			t.Fatal(err)
		}
		if err == nil {
			got, _ := os.ReadFile(dest)
			want, _ := os.ReadFile(filepath.Join(segs, spoolSeg(n)))
			if !bytes.Equal(got, want) {
				t.Fatalf("fetch %d exit 0 but RECOVERYXLOG is not the segment", n)
			}
		}
		return cmd.ProcessState.ExitCode(), errb.String()
	}
	spoolDir := prefetchSpoolOf(pgdata)
	if code, errs := fetch(1); code != 0 || !strings.Contains(errs, "msg=fetched ") {
		t.Fatalf("first fetch: exit %d\n%s", code, errs)
	}
	testenv.WaitFor(t, "2 to 5 prefetched", 30*time.Second, func() bool { return len(spoolSegments(spoolDir)) >= 4 })
	if pids := prefetchers(t, pgdata); len(pids) != 1 {
		t.Fatalf("%d prefetchers run, want 1", len(pids))
	}
	for n := uint64(2); n <= 5; n++ {
		if code, errs := fetch(n); code != 0 || !strings.Contains(errs, "fetched from the prefetch spool") {
			t.Fatalf("fetch %d: exit %d, want it from the prefetch spool\n%s", n, code, errs)
		}
	}
	for _, s := range spoolSegments(spoolDir) {
		if s == spoolSeg(6) {
			t.Fatal("the damaged segment was placed in the prefetch spool")
		}
	}
	if code, errs := fetch(6); code != 4+128 || !strings.Contains(errs, "checksum") {
		t.Fatalf("fetch of the damaged segment: exit %d, want 132 (damaged, in a point-in-time recovery)\n%s", code, errs)
	}
	for n := uint64(7); n <= 10; n++ {
		if code, errs := fetch(n); code != 0 {
			t.Fatalf("fetch %d: exit %d\n%s", n, code, errs)
		}
	}
	if code, errs := fetch(11); code != 1 {
		t.Fatalf("fetch of a segment the archive does not have: exit %d, want 1\n%s", code, errs)
	}
	if pids := prefetchers(t, pgdata); len(pids) != 1 {
		t.Fatalf("after 11 fetches %d prefetchers run, want the one", len(pids))
	}
	if err := os.Remove(filepath.Join(pgdata, "recovery.signal")); err != nil {
		t.Fatal(err)
	}
	assertPrefetcherGone(t, pgdata, "recovery ended")
}
