package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/walship/walship/backends"
	"github.com/walship/walship/internal/testenv"
)

// rowsDigest is the row count and a digest of every row of "rows".
const rowsDigest = "SELECT count(*) || ':' || coalesce(md5(string_agg(batch || ',' || i, ';' ORDER BY batch, i)), '') FROM rows"

// restoreStarted restores into a new directory, starts the copy, waits
// until it has promoted and returns it running.
func restoreStarted(t *testing.T, w *testenv.Workdir, target archiveTarget, name string, args ...string) *testenv.Cluster {
	t.Helper()
	c := testenv.EmptyCluster(t, w, name)
	base := []string{"restore", "--archive", target.url, "--pgdata", c.Data, "--archive-mode", "off"}
	_, errs, code := runWalship(t, w, target.env, append(base, args...)...)
	if code != 0 {
		t.Fatalf("restore %v: exit %d\n%s", args, code, errs)
	}
	c.Env = target.env
	c.Start(t)
	c.WaitSQL(t, "SELECT pg_is_in_recovery()", "f", 2*time.Minute)
	return c
}

// keysWith lists the archive's keys under prefix.
func keysWith(t *testing.T, target archiveTarget, prefix string) []string {
	t.Helper()
	var keys []string
	err := target.store.List(context.Background(), prefix, func(o backends.ObjectInfo) error {
		keys = append(keys, o.Key)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return keys
}

// loop runs fn again and again in the background, a run at most every
// pace, until stop is called, which returns how many runs there were and
// every failure.
func loop(pace time.Duration, fn func() error) (stop func() (int, []error)) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	var mu sync.Mutex
	runs, fails := 0, []error(nil)
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(pace)
		defer tick.Stop()
		for {
			select {
			case <-done:
				return
			case <-tick.C:
			}
			err := fn()
			mu.Lock()
			runs++
			if err != nil {
				fails = append(fails, err)
			}
			mu.Unlock()
		}
	}()
	return func() (int, []error) {
		close(done)
		wg.Wait()
		return runs, fails
	}
}

// bgCmd is a walship command running in the background, its stdout and
// stderr kept apart.
type bgCmd struct {
	cmd      *exec.Cmd
	out, err testenv.Output
	done     chan struct{}
}

func startBg(t *testing.T, w *testenv.Workdir, env []string, args ...string) *bgCmd {
	t.Helper()
	b := &bgCmd{cmd: w.Command(env, walshipBin, args...), done: make(chan struct{})}
	b.cmd.Stdout, b.cmd.Stderr = &b.out, &b.err
	if err := b.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = b.cmd.Wait(); close(b.done) }()
	t.Cleanup(func() {
		if !b.exited() {
			_ = b.cmd.Process.Signal(syscall.SIGKILL)
			<-b.done
		}
	})
	return b
}

func (b *bgCmd) exited() bool {
	select {
	case <-b.done:
		return true
	default:
		return false
	}
}

func (b *bgCmd) stdout() string { return b.out.String() }
func (b *bgCmd) stderr() string { return b.err.String() }

// wait waits for the command to end; it fails the test after timeout.
func (b *bgCmd) wait(t *testing.T, timeout time.Duration) int {
	t.Helper()
	select {
	case <-b.done:
	case <-time.After(timeout):
		t.Fatalf("walship %v did not end within %s:\n%s", b.cmd.Args[1:], timeout, b.stderr())
	}
	return b.cmd.ProcessState.ExitCode()
}

// counter counts a loop's runs so far (for waiting on it).
type counter struct {
	mu sync.Mutex
	n  int
}

func (c *counter) inc() { c.mu.Lock(); c.n++; c.mu.Unlock() }
func (c *counter) get() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n
}

// commandErr runs a command and returns its failure with its output.
func commandErr(w *testenv.Workdir, env []string, name string, args ...string) error {
	cmd := w.Command(env, name, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return errors.New(strings.Join(append([]string{name}, args...), " ") + ": " + err.Error() + "\n" + out.String())
	}
	return nil
}

func TestRaceRetentionSlowBackupFilesystem(t *testing.T) { onFilesystem(t, raceRetentionSlowBackup) }

func TestRaceRetentionSlowBackupS3(t *testing.T) { onS3(t, raceRetentionSlowBackup) }

// raceRetentionSlowBackup: retention apply with no grace runs in a loop
// while a slow backup (1 MiB chunks, the server throttled to 4 MB/s) runs
// and the primary keeps switching and archiving segments. Retention must
// see the running backup's lease and keep it whole; the backup ends
// complete, retention then deletes the older backups, and the new backup
// restores, starts and holds every row.
func raceRetentionSlowBackup(t *testing.T, w *testenv.Workdir, target archiveTarget) {
	env := target.env
	primary, _ := archivingPrimary(t, w, target)
	primary.SQL(t, "CREATE TABLE filler AS SELECT g, md5(g::text) || repeat('x', 200) AS pad FROM generate_series(1, 100000) g")
	var older []string
	for n := 1; n <= 2; n++ {
		commitBatch(t, primary, n)
		switchAndWait(t, primary)
		older = append(older, strings.TrimSpace(mustWalship(t, w, pgEnv(primary, env), "backup", "push", "--archive", target.url, "--checkpoint", "fast")))
	}
	if older[0] == older[1] {
		t.Fatal("two backups in the same second")
	}

	retained, stopLoops := startRace(t, w, target, primary)
	defer stopLoops()
	began, before := time.Now(), retained.get()
	bk, id := startSlowBackup(t, w, target, primary)
	waitFor(t, "retention to run during the backup", time.Minute, func() bool { return retained.get() >= before+3 || bk.exited() })
	checkPlanKeepsRunning(t, w, target, id)
	if code := bk.wait(t, 5*time.Minute); code != 0 {
		t.Fatalf("backup push raced by retention: exit %d\n%s", code, bk.stderr())
	}
	if got := strings.TrimSpace(bk.stdout()); got != id {
		t.Fatalf("backup push printed %q, its lease was %s", got, id)
	}
	duringBackup, took := retained.get()-before, time.Since(began)
	// Retention goes on with the new backup complete: it deletes the two
	// older ones.
	waitFor(t, "retention to delete the older backups", 2*time.Minute, func() bool {
		return len(keysWith(t, target, "backups/"+older[0]+"/")) == 0 && len(keysWith(t, target, "backups/"+older[1]+"/")) == 0
	})
	runs, pushes := stopLoops()
	if duringBackup < 5 {
		t.Errorf("only %d retention runs while the backup ran", duringBackup)
	}
	t.Logf("race: backup ran %s; %d retention applies (%d while the backup ran), %d switched-and-archived batches",
		took.Round(100*time.Millisecond), runs, duringBackup, pushes)
	if keys := keysWith(t, target, "backups/"+id+"/"); len(keys) < 10 {
		t.Errorf("the backup has only %d objects: %v", len(keys), keys)
	}
	for _, k := range keysWith(t, target, "backups/") {
		if strings.HasSuffix(k, "/lease.json") {
			t.Errorf("a lease outlived its backup: %s", k)
		}
	}

	final := commitBatch(t, primary, 3)
	switchAndWait(t, primary)
	want := primary.SQL(t, rowsDigest)
	if _, errs, code := runWalship(t, w, env, "verify", "--archive", target.url); code != 0 {
		t.Fatalf("verify after the race: exit %d\n%s", code, errs)
	}
	c := restoreStarted(t, w, target, "r-raced", "--backup", id, "--target-lsn", final.lsn,
		"--tablespace-mapping", filepath.Join(w.Dir, "ts1")+"="+filepath.Join(w.Dir, "r-raced-ts1"))
	if got := c.SQL(t, rowsDigest); got != want {
		t.Errorf("restored backup %s: rows %s, the primary has %s", id, got, want)
	}
	if got := c.SQL(t, "SELECT count(*) FROM filler"); got != "100000" {
		t.Errorf("filler has %s rows", got)
	}
	c.Stop()
	deleteRunningBackup(t, w, target, primary)
}

// startRace starts the loops: retention apply with no grace every 50 ms,
// and on the primary a commit and a segment switch every 250 ms. stop
// ends them (once), fails the test on any failed run, and returns how many
// applies and switches ran.
func startRace(t *testing.T, w *testenv.Workdir, target archiveTarget, primary *testenv.Cluster) (*counter, func() (int, int)) {
	retained := &counter{}
	stopRetention := loop(50*time.Millisecond, func() error {
		defer retained.inc()
		return commandErr(w, target.env, walshipBin, "retention", "apply", "--archive", target.url, "--keep-last", "1", "--grace", "0s")
	})
	batch := 100
	stopPushes := loop(250*time.Millisecond, func() error {
		batch++
		return commandErr(w, nil, filepath.Join(primary.Bin, "psql"), append(primary.ConnArgs(), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", "postgres",
			"-c", "INSERT INTO rows SELECT "+strconv.Itoa(batch)+", generate_series(1, 10)", "-c", "SELECT pg_switch_wal()")...)
	})
	var once sync.Once
	var runs, pushes int
	return retained, func() (int, int) {
		once.Do(func() {
			var rf, pf []error
			runs, rf = stopRetention()
			pushes, pf = stopPushes()
			for _, err := range append(rf, pf...) {
				t.Errorf("during the race: %v", err)
			}
		})
		return runs, pushes
	}
}

// startSlowBackup starts a throttled backup push in 1 MiB chunks and
// returns it once its lease is in the archive, with the backup's id.
func startSlowBackup(t *testing.T, w *testenv.Workdir, target archiveTarget, primary *testenv.Cluster) (*bgCmd, string) {
	t.Helper()
	bk := startBg(t, w, pgEnv(primary, target.env), "backup", "push", "--archive", target.url, "--checkpoint", "fast",
		"--chunk-size-mb", "1", "--max-rate-kb", "4096")
	id := ""
	waitFor(t, "the running backup's lease", time.Minute, func() bool {
		for _, k := range keysWith(t, target, "backups/") {
			if strings.HasSuffix(k, "/lease.json") {
				id = strings.Split(k, "/")[1]
				return true
			}
		}
		return bk.exited()
	})
	if id == "" {
		t.Fatalf("the backup ended before it could be raced:\n%s", bk.stderr())
	}
	return bk, id
}

// checkPlanKeepsRunning: mid-way, the plan keeps every object of the
// running backup, and says why.
func checkPlanKeepsRunning(t *testing.T, w *testenv.Workdir, target archiveTarget, id string) {
	t.Helper()
	var plan struct {
		RunningBackups []string `json:"running_backups"`
		Items          []struct {
			Key    string `json:"key"`
			Delete bool   `json:"delete"`
			Reason string `json:"reason"`
		} `json:"items"`
	}
	out := mustWalship(t, w, target.env, "retention", "plan", "--archive", target.url, "--keep-last", "1", "--grace", "0s", "--json")
	if err := json.Unmarshal([]byte(out), &plan); err != nil {
		t.Fatal(err)
	}
	// The backup may complete while the plan is made: then it is simply
	// a kept backup.
	mine, complete := 0, false
	for _, it := range plan.Items {
		if strings.HasPrefix(it.Key, "backups/"+id+"/") {
			mine++
			complete = complete || strings.HasSuffix(it.Key, "/manifest.json")
			if it.Delete || !(strings.Contains(it.Reason, "is running") || strings.Contains(it.Reason, "kept backup "+id)) {
				t.Errorf("the plan for %s of the running backup: delete=%v (%s)", it.Key, it.Delete, it.Reason)
			}
		}
	}
	if mine == 0 || (!complete && (len(plan.RunningBackups) != 1 || plan.RunningBackups[0] != id)) {
		t.Errorf("plan during the backup: running %v, %d of its objects", plan.RunningBackups, mine)
	}
}

// deleteRunningBackup: a running backup deleted from under backup push
// (its lease with it) makes push fail with status 3, write no manifest and
// leave nothing.
func deleteRunningBackup(t *testing.T, w *testenv.Workdir, target archiveTarget, primary *testenv.Cluster) {
	bk, id := startSlowBackup(t, w, target, primary)
	// Without --force a running backup is refused, and left whole.
	if _, stderr, code := runWalship(t, w, target.env, "backup", "delete", "--archive", target.url, id); code != 2 || !strings.Contains(stderr, "running") {
		t.Errorf("backup delete of a running backup: exit %d, want 2 (running)\n%s", code, stderr)
	}
	// Once it has stored data, a forced delete pulls that data from under
	// it: push must notice (the lease gone, or its chunks), never write
	// a manifest for what is no longer there.
	waitFor(t, "a chunk of the running backup", time.Minute, func() bool {
		for _, k := range keysWith(t, target, "backups/"+id+"/") {
			if strings.Contains(k, ".tar.") {
				return true
			}
		}
		return bk.exited()
	})
	mustWalship(t, w, target.env, "backup", "delete", "--force", "--archive", target.url, id)
	if code := bk.wait(t, 5*time.Minute); code != 3 || !(strings.Contains(bk.stderr(), "lease lost") || strings.Contains(bk.stderr(), "lost from the archive")) {
		t.Errorf("backup push whose backup was deleted while running: exit %d, want 3 (lease or data lost)\n%s", code, bk.stderr())
	}
	if keys := keysWith(t, target, "backups/"+id+"/"); len(keys) != 0 {
		t.Errorf("the failed backup left %v", keys)
	}
}

func TestRetentionAfterPromotionFilesystem(t *testing.T) { onFilesystem(t, retentionAfterPromotion) }

func TestRetentionAfterPromotionS3(t *testing.T) { onS3(t, retentionAfterPromotion) }

// retentionAfterPromotion: a standby restored from the archive is
// promoted and archives 00000002.history, and nothing of timeline 2 else
// yet; retention runs in that window and must keep the history file. Once
// timeline-2 WAL arrives, a restore to the latest timeline reaches it, and
// verify and status are clean. Then the history file is deleted by hand:
// verify and status report it.
func retentionAfterPromotion(t *testing.T, w *testenv.Workdir, target archiveTarget) {
	env := target.env
	sb, id := promotedStandby(t, w, target)
	waitFor(t, "the new primary to archive 00000002.history", time.Minute, func() bool {
		_, err := target.store.Stat(context.Background(), "history/00000002.history")
		return err == nil
	})
	if tl2 := keysWith(t, target, "wal/00000002/"); len(tl2) != 0 {
		t.Fatalf("timeline 2 already has WAL archived, the window this test needs is gone: %v", tl2)
	}
	plan := mustWalship(t, w, env, "retention", "plan", "--archive", target.url, "--keep-last", "1", "--grace", "0s")
	mustWalship(t, w, env, "retention", "apply", "--archive", target.url, "--keep-last", "1", "--grace", "0s")
	if _, err := target.store.Stat(context.Background(), "history/00000002.history"); err != nil {
		t.Fatalf("retention right after the promotion removed 00000002.history (%v); plan:\n%s", err, plan)
	}
	if out, errs, code := runWalship(t, w, env, "status", "--archive", target.url); code != 0 {
		t.Errorf("status right after the promotion: exit %d\n%s%s", code, out, errs)
	}

	commitBatch(t, sb, 3)
	switchAndWait(t, sb)
	mustWalship(t, w, env, "retention", "apply", "--archive", target.url, "--keep-last", "1", "--grace", "0s")
	want := sb.SQL(t, rowsDigest)
	c := restoreStarted(t, w, target, "r-latest", "--backup", id,
		"--tablespace-mapping", filepath.Join(w.Dir, "ts1")+"="+filepath.Join(w.Dir, "r-latest-ts1"))
	if got := c.SQL(t, rowsDigest); got != want || !strings.HasPrefix(got, rowsUpTo(3)+":") {
		t.Errorf("restore to the latest timeline: rows %s, want %s (timeline 2's batch 3 included)", got, want)
	}
	if tli := c.SQL(t, "SELECT substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)"); tli != "00000003" {
		t.Errorf("the restored copy went on from timeline %s, want 00000003 (after timeline 2)", tli)
	}
	c.Stop()
	for _, cmd := range [][]string{{"verify"}, {"status"}} {
		if out, errs, code := runWalship(t, w, env, append(cmd, "--archive", target.url)...); code != 0 {
			t.Errorf("%s after timeline-2 WAL: exit %d\n%s%s", cmd[0], code, out, errs)
		}
	}

	// The history file deleted by hand: a restore from timeline 1 would
	// silently stay there; verify and status say so.
	if err := target.store.Delete(context.Background(), "history/00000002.history"); err != nil {
		t.Fatal(err)
	}
	for _, cmd := range [][]string{{"verify", "--quick"}, {"status"}} {
		out, errs, code := runWalship(t, w, env, append(cmd, "--archive", target.url)...)
		if code != 8 || !strings.Contains(out, "00000002.history") || !strings.Contains(out, "timeline 2") {
			t.Errorf("%s without 00000002.history: exit %d, want 8 naming it\n%s%s", cmd[0], code, out, errs)
		}
	}
}

// TestRestoreTimeline2FreshArchive: a copy promoted with archiving off
// (as the README advises) starts a new archive on timeline 2, which never
// gets 00000002.history. Backups of it are taken, verify and status are
// clean, and restores start and hold every row.
func TestRestoreTimeline2FreshArchive(t *testing.T) { onFilesystem(t, restoreTimeline2FreshArchive) }

func restoreTimeline2FreshArchive(t *testing.T, w *testenv.Workdir, target archiveTarget) {
	c := testenv.InitDB(t, w, "promoted")
	c.Configure(t, map[string]string{"wal_level": "replica", "archive_mode": "off"})
	c.Start(t)
	c.SQL(t, "CREATE TABLE rows (batch int, i int)")
	commitBatch(t, c, 1)
	c.Stop()
	if err := os.WriteFile(filepath.Join(c.Data, "standby.signal"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	w.Chown(t, filepath.Join(c.Data, "standby.signal"))
	c.Start(t)
	c.SQL(t, "SELECT pg_promote()")
	c.WaitSQL(t, "SELECT pg_is_in_recovery()", "f", time.Minute)
	if seg := c.SQL(t, "SELECT pg_walfile_name(pg_current_wal_lsn())"); !strings.HasPrefix(seg, "00000002") {
		t.Fatalf("not on timeline 2 after the promotion: %s", seg)
	}
	c.Stop()
	c.Env = target.env
	c.Configure(t, map[string]string{"archive_mode": "on", "archive_command": walshipBin + " push --archive " + target.url + " %p"})
	c.Start(t)
	commitBatch(t, c, 2)
	id := strings.TrimSpace(mustWalship(t, w, pgEnv(c, target.env), "backup", "push", "--archive", target.url, "--checkpoint", "fast"))
	b3 := commitBatch(t, c, 3)
	commitBatch(t, c, 4)
	switchAndWait(t, c)
	if h := keysWith(t, target, "history/"); len(h) != 0 {
		t.Fatalf("the archive has history files, the case this test needs is gone: %v", h)
	}
	show := mustWalship(t, w, nil, "backup", "show", "--archive", target.url, id)
	if !strings.Contains(show, `"timeline": 2`) {
		t.Fatalf("backup not on timeline 2:\n%s", show)
	}
	for _, cmd := range [][]string{{"verify"}, {"status"}} {
		if out, errs, code := runWalship(t, w, target.env, append(cmd, "--archive", target.url)...); code != 0 {
			t.Errorf("%s of a fresh timeline-2 archive: exit %d\n%s%s", cmd[0], code, out, errs)
		}
	}
	want := c.SQL(t, rowsDigest)
	r := restoreStarted(t, w, target, "r-end")
	if got := r.SQL(t, rowsDigest); got != want || !strings.HasPrefix(got, rowsUpTo(4)+":") {
		t.Errorf("restore to the end: rows %s, want %s", got, want)
	}
	if !strings.Contains(r.Log(), "selected new timeline ID: 3") {
		t.Errorf("restored copy's log:\n%s", r.Log())
	}
	r.Stop()
	r = restoreStarted(t, w, target, "r-lsn", "--target-lsn", b3.lsn, "--target-timeline", "current")
	if got := r.SQL(t, "SELECT count(*) FROM rows"); got != rowsUpTo(3) {
		t.Errorf("restore to batch 3's LSN: %s rows, want %s", got, rowsUpTo(3))
	}
	if got := r.SQL(t, "SELECT substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)"); got != "00000003" {
		t.Errorf("the copy promoted onto timeline %s, want 00000003", got)
	}
}
