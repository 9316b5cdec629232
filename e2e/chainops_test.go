package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/walship/walship/internal/testenv"
	"github.com/walship/walship/manifest"
)

// chainEverywhere checks the chain of r in everything but restore, from the
// binary, on r's archive: a drill restores the newest chain; backup list
// shows type and parent; with a second full backup (full, incr, incr,
// full), retention keeps the newest chain only and keeps or deletes a chain
// whole; backup delete of the chain's middle is refused and deletes
// nothing, --with-dependants deletes it and its dependant, after which
// verify is clean and the full backup still restores.
func chainEverywhere(t *testing.T, r *chainRig) {
	t.Run("drill", func(t *testing.T) { drillChain(t, r) })
	t.Run("list", func(t *testing.T) {
		listChain(t, r, map[string][2]string{
			r.full.ID: {manifest.TypeFull, "-"},
			r.i1.ID:   {manifest.TypeIncremental, r.full.ID},
			r.i2.ID:   {manifest.TypeIncremental, r.i1.ID},
		})
	})
	full2 := pushBackup(t, r.w, r.env, r.target)
	t.Run("retention", func(t *testing.T) { retentionChains(t, r, full2) })
	t.Run("delete middle", func(t *testing.T) { deleteMiddle(t, r, full2) })
}

// drillChain runs the schedule's drill job once, with the chain's second
// incremental the newest backup: the drill must restore it from its chain,
// every member applied, and pass.
func drillChain(t *testing.T, r *chainRig) {
	w := r.w
	cfg := filepath.Join(w.Dir, "drill.yaml")
	scratch := w.Mkdir(t, "drill-scratch")
	yaml := fmt.Sprintf("archive: %s\nschedule:\n  jobs:\n    - {name: drill, cron: \"@weekly\", kind: drill, pg_bin: %s, scratch: %s, timeout: 5m}\n",
		r.target.url, r.primary.Bin, scratch)
	if err := os.WriteFile(cfg, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	_, errs, code := runWalship(t, w, append([]string{"PGUSER=postgres"}, r.target.env...),
		"schedule", "run", "--config", cfg, "--log-level", "debug", "drill")
	if code != 0 {
		t.Fatalf("drill: exit %d\n%s", code, errs)
	}
	var passed string
	for _, l := range strings.Split(errs, "\n") {
		if strings.Contains(l, `msg="restore drill passed"`) {
			passed = l
		}
	}
	// The drill's answer: out of recovery, with the databases of i2's
	// consistent point (scratch was dropped before it was taken).
	if !strings.Contains(passed, "backup="+r.i2.ID) || !strings.Contains(passed, "PostgreSQL "+r.primary.SQL(t, "SHOW server_version")+", 3 databases") {
		t.Fatalf("the drill did not pass on the newest backup %s (want its PostgreSQL and 3 databases):\n%s", r.i2.ID, errs)
	}
	if chain := r.full.ID + "," + r.i1.ID + "," + r.i2.ID; !strings.Contains(passed, "chain="+chain) {
		t.Errorf("the drill's result does not name the chain %s: %s", chain, passed)
	}
	for _, m := range []*manifest.Manifest{r.full, r.i1, r.i2} {
		if !strings.Contains(errs, `msg="backup of the chain applied" backup=`+m.ID+" type="+m.Kind()) {
			t.Errorf("the drill did not apply %s %s of the chain:\n%s", m.Kind(), m.ID, errs)
		}
	}
	t.Logf("drill: %s", passed)
	if ents, _ := os.ReadDir(scratch); len(ents) != 0 {
		t.Errorf("the drill left %d entries in its scratch directory", len(ents))
	}
}

// listChain checks backup list's TYPE and PARENT columns: want maps each
// backup's id to them, and lists every backup.
func listChain(t *testing.T, r *chainRig, want map[string][2]string) {
	t.Helper()
	out := mustWalship(t, r.w, r.target.env, "backup", "list", "--archive", r.target.url)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if h := strings.Fields(lines[0]); len(h) < 3 || h[0] != "ID" || h[1] != "TYPE" || h[2] != "PARENT" {
		t.Fatalf("backup list's header is not ID TYPE PARENT ...:\n%s", out)
	}
	got := map[string][2]string{}
	for _, l := range lines[1:] {
		if f := strings.Fields(l); len(f) >= 3 {
			got[f[0]] = [2]string{f[1], f[2]}
		}
	}
	if len(got) != len(want) {
		t.Errorf("backup list shows %d backups, want %d:\n%s", len(got), len(want), out)
	}
	for id, w := range want {
		if got[id] != w {
			t.Errorf("backup list: %s is %v, want type %s parent %s:\n%s", id, got[id], w[0], w[1], out)
		}
	}
}

// retentionChains plans retention from the binary on full, i1, i2, full2:
// keep-last counts chains, and no incremental is kept without its chain.
func retentionChains(t *testing.T, r *chainRig, full2 *manifest.Manifest) {
	all := []*manifest.Manifest{r.full, r.i1, r.i2, full2}
	for _, tc := range []struct {
		keepLast      string
		kept, deleted []string
	}{
		{"1", []string{full2.ID}, []string{r.full.ID, r.i1.ID, r.i2.ID}},
		{"2", []string{r.full.ID, r.i1.ID, r.i2.ID, full2.ID}, nil},
	} {
		out := mustWalship(t, r.w, r.target.env, "retention", "plan", "--archive", r.target.url,
			"--keep-last", tc.keepLast, "--grace", "0s", "--json")
		var plan struct {
			Kept    []string `json:"kept_backups"`
			Deleted []string `json:"deleted_backups"`
			Items   []struct {
				Key    string
				Delete bool
			}
		}
		if err := json.Unmarshal([]byte(out), &plan); err != nil {
			t.Fatalf("retention plan --json: %v\n%s", err, out)
		}
		slices.Sort(plan.Kept)
		slices.Sort(plan.Deleted)
		if !slices.Equal(plan.Kept, tc.kept) || !slices.Equal(plan.Deleted, tc.deleted) {
			t.Errorf("retention plan --keep-last %s on full, incr, incr, full: keeps %v deletes %v, want keep %v delete %v",
				tc.keepLast, plan.Kept, plan.Deleted, tc.kept, tc.deleted)
		}
		for _, m := range all {
			if m.Incremental() && slices.Contains(plan.Kept, m.ID) && !slices.Contains(plan.Kept, m.Parent) {
				t.Errorf("retention plan --keep-last %s keeps incremental %s without its parent %s", tc.keepLast, m.ID, m.Parent)
			}
			for _, it := range plan.Items {
				if it.Key == manifest.Key(m.ID) && it.Delete != slices.Contains(tc.deleted, m.ID) {
					t.Errorf("retention plan --keep-last %s: %s delete=%v", tc.keepLast, it.Key, it.Delete)
				}
			}
		}
	}
}

// deleteMiddle deletes the chain's first incremental from the binary:
// refused (status 2, naming its dependant) with nothing deleted; then with
// --with-dependants, which takes both. verify is clean after it, and the
// full backup restores to the end as before.
func deleteMiddle(t *testing.T, r *chainRig, full2 *manifest.Manifest) {
	w, target := r.w, r.target
	before := backupKeys(t, target.store)
	_, errs, code := runWalship(t, w, target.env, "backup", "delete", "--archive", target.url, r.i1.ID)
	if code != 2 || !strings.Contains(errs, r.i2.ID) || !strings.Contains(errs, "--with-dependants") {
		t.Fatalf("backup delete %s (the parent of %s): exit %d, want 2 naming %s and --with-dependants:\n%s", r.i1.ID, r.i2.ID, code, r.i2.ID, errs)
	}
	if after := backupKeys(t, target.store); !slices.Equal(before, after) {
		t.Fatalf("backup delete %s was refused, but backups/ changed:\nbefore %v\nafter  %v", r.i1.ID, before, after)
	}
	t.Logf("refused as it should: %s", strings.TrimSpace(errs))

	_, errs = mustWalshipErr(t, w, target.env, "backup", "delete", "--archive", target.url, "--with-dependants", r.i1.ID)
	i2At, i1At := strings.Index(errs, "id="+r.i2.ID), strings.Index(errs, "id="+r.i1.ID)
	if i2At < 0 || i1At < 0 || i2At > i1At {
		t.Errorf("backup delete --with-dependants %s: want %s then %s deleted:\n%s", r.i1.ID, r.i2.ID, r.i1.ID, errs)
	}
	for _, k := range backupKeys(t, target.store) {
		if strings.HasPrefix(k, manifest.Prefix+r.i1.ID+"/") || strings.HasPrefix(k, manifest.Prefix+r.i2.ID+"/") {
			t.Errorf("backup delete --with-dependants left %s", k)
		}
	}
	listChain(t, r, map[string][2]string{r.full.ID: {manifest.TypeFull, "-"}, full2.ID: {manifest.TypeFull, "-"}})
	if out, errs, code := runWalship(t, w, target.env, "verify", "--archive", target.url); code != 0 {
		t.Fatalf("verify after deleting %s and %s: exit %d\n%s\n%s", r.i2.ID, r.i1.ID, code, out, errs)
	}
	c, log := restoreAndStart(t, w, target, "r-full", "--backup", r.full.ID)
	if !strings.Contains(log, "restoring backup "+r.full.ID) || strings.Contains(log, "chain=") {
		t.Errorf("restore --backup %s did not restore the full backup alone:\n%s", r.full.ID, log)
	}
	sameState(t, "restore of the full backup to the end", chainState(t, c), r.end)
	c.Stop()
}

// mustWalshipErr runs walship, fails the test unless it exits 0, and
// returns its stdout and stderr.
func mustWalshipErr(t *testing.T, w *testenv.Workdir, env []string, args ...string) (string, string) {
	t.Helper()
	out, errs, code := runWalship(t, w, env, args...)
	if code != 0 {
		t.Fatalf("walship %s: exit %d\n%s", strings.Join(args, " "), code, errs)
	}
	return out, errs
}

// TestChainS3 takes a chain (full, two incrementals) into the S3 archive on
// the newest PostgreSQL major of testenv.PGVersions (the filesystem archive
// has the rest of the chain's tests, TestRestoreChain) and restores it to
// the end: started, and compared row for row with the primary.
func TestChainS3(t *testing.T) {
	major := slices.Max(testenv.PGVersions(t))
	if major < 17 {
		t.Skipf("the newest major tested, PostgreSQL %d, has no incremental backups", major)
	}
	t.Run(fmt.Sprintf("PG%d", major), func(t *testing.T) {
		w := testenv.NewWorkdir(t)
		w.Major = major
		target := s3Target(t)
		primary, _ := archivingPrimary(t, w, target)
		env := pgEnv(primary, target.env)
		setSummarizeWAL(t, primary, "on")
		w.Run(t, nil, primary.Tool("pgbench"), append(primary.ConnArgs(), "-i", "-s", "2", "-q", "postgres")...)
		full := pushBackup(t, w, env, target)
		pgbenchRun(t, w, primary, 200)
		commitBatch(t, primary, 1)
		i1 := pushBackup(t, w, env, target, "--incremental")
		pgbenchRun(t, w, primary, 200)
		primary.SQL(t, "UPDATE spaced SET i = i WHERE i % 3 = 0")
		commitBatch(t, primary, 2)
		i2 := pushBackup(t, w, env, target, "--incremental")
		pgbenchRun(t, w, primary, 100)
		commitBatch(t, primary, 3)
		end := stateOf(t, primary, pgbenchTables)
		switchAndWait(t, primary)
		if i1.Parent != full.ID || i2.Parent != i1.ID || !i2.Incremental() || incrementalFiles(t, target.store, i2.ID) == 0 {
			t.Fatalf("chain on S3: %s <- %s (%s, parent %s) <- %s (%s, parent %s)", full.ID, i1.ID, i1.Kind(), i1.Parent, i2.ID, i2.Kind(), i2.Parent)
		}
		c, log := restoreAndStart(t, w, target, "r-end")
		checkChainLog(t, log, i2, full.ID+","+i1.ID+","+i2.ID)
		sameState(t, "restore of the chain from S3 to the end", stateOf(t, c, pgbenchTables), end)
		c.Stop()
	})
}
