package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/walship/walship/backends"
	"github.com/walship/walship/internal/testenv"
)

// archivedSegments lists timeline 1's segments in the archive, oldest first.
func archivedSegments(t *testing.T, target archiveTarget) []string {
	t.Helper()
	var out []string
	err := target.store.List(context.Background(), "wal/00000001/", func(o backends.ObjectInfo) error {
		if name := path.Base(o.Key); len(name) == 24 {
			out = append(out, name)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(out)
	return out
}

// retentionVerifyGapsDrill: two backups and a slot behind the older one's
// start; retention keeps what the slot needs until it expires; verify
// passes after every apply; a deleted middle segment is reported as a gap
// by push, status and verify; a restore drill runs against the archive
// (TestPGVersions runs it on every major).
func retentionVerifyGapsDrill(t *testing.T, w *testenv.Workdir, target archiveTarget) {
	env := target.env
	primary, _ := archivingPrimary(t, w, target)
	commitBatch(t, primary, 1)
	switchAndWait(t, primary)
	first := archivedSegments(t, target)[0]
	mustWalship(t, w, env, "slot", "create", "--archive", target.url, "--ttl", "4s", "laggard")
	mustWalship(t, w, env, "slot", "advance", "--archive", target.url, "laggard", first)
	b1 := strings.TrimSpace(mustWalship(t, w, pgEnv(primary, env), "backup", "push", "--archive", target.url, "--checkpoint", "fast"))
	commitBatch(t, primary, 2)
	switchAndWait(t, primary)
	b2 := strings.TrimSpace(mustWalship(t, w, pgEnv(primary, env), "backup", "push", "--archive", target.url, "--checkpoint", "fast"))
	if b1 == b2 {
		t.Fatalf("two backups in the same second")
	}
	commitBatch(t, primary, 3)
	switchAndWait(t, primary)
	before := archivedSegments(t, target)

	verifyOK := func(when string) {
		t.Helper()
		out, errs, code := runWalship(t, w, env, "verify", "--archive", target.url)
		if code != 0 {
			t.Fatalf("verify %s: exit %d\n%s\n%s", when, code, out, errs)
		}
	}
	verifyOK("before retention")
	mustWalship(t, w, env, "retention", "apply", "--archive", target.url, "--keep-last", "1", "--grace", "0s")
	if _, err := target.store.Stat(context.Background(), "backups/"+b1+"/manifest.json"); !errors.Is(err, backends.ErrNotFound) {
		t.Errorf("keep-last 1 kept the older backup %s (%v)", b1, err)
	}
	if after := archivedSegments(t, target); len(after) != len(before) || after[0] != first {
		t.Fatalf("retention deleted WAL the live slot needs: before %v after %v", before, after)
	}
	verifyOK("after the first apply")

	// The slot expires: the same policy now deletes the WAL before the
	// kept backup.
	testenv.WaitFor(t, "the slot to expire", time.Minute, func() bool {
		out, _, _ := runWalship(t, w, env, "slot", "list", "--archive", target.url, "--json")
		var rows []struct{ Expired bool }
		return json.Unmarshal([]byte(out), &rows) == nil && len(rows) == 1 && rows[0].Expired
	})
	plan := mustWalship(t, w, env, "retention", "plan", "--archive", target.url, "--keep-last", "1", "--grace", "0s")
	if !strings.Contains(plan, "DELETE") || !strings.Contains(plan, first) {
		t.Fatalf("plan after the slot expired does not delete %s:\n%s", first, plan)
	}
	mustWalship(t, w, env, "retention", "apply", "--archive", target.url, "--keep-last", "1", "--grace", "0s")
	after := archivedSegments(t, target)
	if after[0] == first || len(after) >= len(before) {
		t.Fatalf("expired slot still protects WAL: %v", after)
	}
	verifyOK("after the slot expired")
	mustWalship(t, w, env, "slot", "drop", "--archive", target.url, "laggard")

	// A middle segment disappears before its successor is pushed.
	commitBatch(t, primary, 4)
	switchAndWait(t, primary)
	gone := archivedSegments(t, target)
	victim := gone[len(gone)-1]
	if err := target.store.Delete(context.Background(), "wal/00000001/"+victim); err != nil {
		t.Fatal(err)
	}
	commitBatch(t, primary, 5)
	switchAndWait(t, primary)
	if !strings.Contains(primary.Log(), "gap in the archive") || !strings.Contains(primary.Log(), victim) {
		t.Errorf("push did not warn about the gap at %s", victim)
	}
	out, _, code := runWalship(t, w, env, "status", "--archive", target.url)
	if code != 8 || !strings.Contains(out, victim) {
		t.Errorf("status: exit %d, want 8 naming %s:\n%s", code, victim, out)
	}
	out, _, code = runWalship(t, w, env, "verify", "--archive", target.url, "--quick")
	if code != 8 || !strings.Contains(out, victim) {
		t.Errorf("verify: exit %d, want 8 naming %s:\n%s", code, victim, out)
	}

	// A restore drill of the newest backup, from the schedule's config.
	cfg := filepath.Join(w.Dir, "walship.yaml")
	scratch := w.Mkdir(t, "scratch")
	yaml := fmt.Sprintf("archive: %s\nschedule:\n  jobs:\n    - name: drill\n      cron: \"@weekly\"\n      kind: drill\n      pg_bin: %s\n      scratch: %s\n      timeout: 5m\n",
		target.url, primary.Bin, scratch)
	if err := os.WriteFile(cfg, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	_, errs, code := runWalship(t, w, append([]string{"PGUSER=postgres"}, env...), "schedule", "run", "--config", cfg, "drill")
	if code != 0 || !strings.Contains(errs, "restore drill passed") {
		t.Fatalf("drill: exit %d\n%s", code, errs)
	}
	if ents, _ := os.ReadDir(scratch); len(ents) != 0 {
		t.Errorf("the drill left %d entries in its scratch directory", len(ents))
	}

	scheduleDaemon(t, w, target, primary.Bin)
}

// scheduleDaemon runs walship schedule as the daemon: a drill every second
// (it takes longer, so runs are skipped, never overlapped) and a verify every
// second that fails on the archive's gap and is counted while the daemon
// goes on; SIGTERM during a drill lets it finish and the daemon exits 0.
func scheduleDaemon(t *testing.T, w *testenv.Workdir, target archiveTarget, pgBin string) {
	cfg := filepath.Join(w.Dir, "daemon.yaml")
	scratch := w.Mkdir(t, "daemon-scratch")
	addr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	yaml := fmt.Sprintf("archive: %s\nschedule:\n  stop_timeout: 2m\n  metrics_addr: %s\n  jobs:\n"+
		"    - {name: drill, cron: \"@every 1s\", kind: drill, pg_bin: %s, scratch: %s, timeout: 5m}\n"+
		"    - {name: verify, cron: \"@every 1s\", kind: verify, quick: true}\n",
		target.url, addr, pgBin, scratch)
	if err := os.WriteFile(cfg, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	d := startWalship(t, w, append([]string{"PGUSER=postgres"}, target.env...), "schedule", "--config", cfg)
	metric := func(name, job string) float64 {
		resp, err := http.Get("http://" + addr + "/metrics")
		if err != nil {
			return -1
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		prefix := "walship_schedule_" + name + `{job="` + job + `"} `
		for _, line := range strings.Split(string(body), "\n") {
			if v, ok := strings.CutPrefix(line, prefix); ok {
				f, _ := strconv.ParseFloat(v, 64)
				return f
			}
		}
		return -1
	}
	waitFor(t, "a drill to succeed, a run to be skipped and a verify failure to be counted", 3*time.Minute, func() bool {
		return metric("last_success_timestamp_seconds", "drill") > 0 && metric("failures_total", "verify") >= 2
	})
	if metric("last_success_timestamp_seconds", "verify") != 0 {
		t.Errorf("verify succeeded on an archive with a gap")
	}
	// Stop while a drill runs: it must be allowed to finish.
	started := strings.Count(d.log(), `msg="job started" job=drill`)
	waitFor(t, "the next drill to start", time.Minute, func() bool {
		return strings.Count(d.log(), `msg="job started" job=drill`) > started
	})
	d.stop(syscall.SIGTERM)
	log := d.log()
	if code := d.cmd.ProcessState.ExitCode(); code != 0 {
		t.Fatalf("schedule exited %d after SIGTERM:\n%s", code, log)
	}
	running := 0
	for _, line := range strings.Split(log, "\n") {
		switch {
		case strings.Contains(line, `msg="job started" job=drill`):
			running++
			if running > 1 {
				t.Errorf("two drills ran at once:\n%s", log)
			}
		case strings.Contains(line, `msg="job done" job=drill`), strings.Contains(line, `msg="job failed" job=drill`):
			running--
		}
	}
	if running != 0 || !strings.Contains(log, "scheduler stopped") {
		t.Errorf("a drill did not finish before the daemon stopped:\n%s", log)
	}
	if strings.Contains(log, `msg="job failed" job=drill`) {
		t.Errorf("a drill failed:\n%s", log)
	}
	t.Logf("daemon: %d drills, %d skipped, %d verify failures", strings.Count(log, `msg="job done" job=drill`),
		strings.Count(log, `msg="job still running; this run skipped" job=drill`), strings.Count(log, `msg="job failed" job=verify`))
	if ents, _ := os.ReadDir(scratch); len(ents) != 0 {
		t.Errorf("the daemon's drills left %d entries in their scratch directory", len(ents))
	}
}
