package contract

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/walship/walship/internal/faultproxy"
	"github.com/walship/walship/internal/testenv"
)

// scaled is rules with every probability multiplied by f.
func scaled(rules []faultproxy.Rule, f float64) []faultproxy.Rule {
	out := append([]faultproxy.Rule(nil), rules...)
	for i := range out {
		out[i].Probability *= f
	}
	return out
}

// walshipEnv is the part of the rig's environment walship needs, for
// commands PostgreSQL runs (archive_command, restore_command).
func (r *rig) walshipEnv() []string {
	var env []string
	for _, kv := range r.env {
		if strings.HasPrefix(kv, "WALSHIP_") || strings.HasPrefix(kv, "AWS_") {
			env = append(env, kv)
		}
	}
	return env
}

// runAs runs walship as the server's user, in w.
func runAs(t *testing.T, w *testenv.Workdir, env []string, args ...string) result {
	t.Helper()
	res, err := runCmd(w.Command(env, walshipBin, args...))
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatal(err)
	}
	return res
}

const rowsDigest = "SELECT count(*) || ':' || md5(string_agg(batch || ',' || i, ';' ORDER BY batch, i)) FROM rows"

// A base backup taken, and WAL archived, while the proxy injects faults;
// then restored and replayed (restore_command) while it injects faults into
// the reads: backup push exits 0 only for a backup that restores, restore
// exits 0 only with a data directory that starts and holds every row.
func TestContractBackupAndRestoreUnderFaults(t *testing.T) {
	r := newRig(t, 18)
	w := testenv.NewWorkdir(t)
	env := r.walshipEnv()
	primary := testenv.InitDB(t, w, "primary")
	primary.Env = env
	primary.Configure(t, map[string]string{
		"wal_level": "replica", "archive_mode": "on", "archive_command": walshipBin + " push %p",
	})
	primary.Start(t)
	pgEnv := append([]string{"PGHOST=" + w.Dir, "PGPORT=" + strconv.Itoa(primary.Port), "PGUSER=postgres", "PGDATABASE=postgres"}, env...)

	r.proxy.SetRules(scaled(pushFaults, 0.5)...)
	primary.SQL(t, "CREATE TABLE rows (batch int, i int); INSERT INTO rows SELECT 1, generate_series(1, 5000)")
	var f figures
	var id string
	for try := 1; id == ""; try++ {
		res := runAs(t, w, pgEnv, "backup", "push", "--checkpoint", "fast", "--chunk-size-mb", "1")
		f.runs++
		f.took(res.elapsed)
		switch {
		case res.code == 0:
			id = "pushed"
		case res.code == 3 && try < 5:
			f.failed++
		default:
			t.Fatalf("backup push: status %d:\n%s", res.code, res.stderr)
		}
	}
	// WAL the restore must replay, several segments of it.
	for b := 2; b <= 5; b++ {
		primary.SQL(t, fmt.Sprintf("INSERT INTO rows SELECT %d, generate_series(1, 3000); SELECT pg_switch_wal()", b))
	}
	want := primary.SQL(t, rowsDigest)
	seg := primary.SQL(t, "SELECT pg_walfile_name(pg_current_wal_lsn())")
	primary.SQL(t, "SELECT pg_switch_wal()")
	primary.WaitSQL(t, "SELECT coalesce(last_archived_wal >= '"+seg+"', false) FROM pg_stat_archiver", "t", 3*time.Minute)
	archFailed := primary.SQL(t, "SELECT failed_count FROM pg_stat_archiver")
	pushFaultsInjected := r.proxy.Injected(0)

	// Restore and replay under faults on every read.
	r.proxy.SetRules(scaled(fetchFaults, 0.4)...)
	var restored *testenv.Cluster
	for try := 1; restored == nil; try++ {
		c := testenv.EmptyCluster(t, w, fmt.Sprintf("restored%d", try))
		res := runAs(t, w, env, "restore", "--pgdata", c.Data, "--archive-mode", "off")
		f.runs++
		f.took(res.elapsed)
		switch {
		case res.code == 0:
			restored = c
		case (res.code == 3 || res.code == 4) && try < 5:
			f.failed++
			_ = os.RemoveAll(c.Data)
		default:
			t.Fatalf("restore: status %d:\n%s", res.code, res.stderr)
		}
	}
	restored.Env = env
	restored.Start(t)
	restored.WaitSQL(t, "SELECT pg_is_in_recovery()", "f", 3*time.Minute)
	if got := restored.SQL(t, rowsDigest); got != want {
		f.falseSuccess++
		t.Errorf("restored rows %s, want %s", got, want)
	}
	t.Logf("backup %s after %d runs; archive_command failures PostgreSQL retried: %s; faults while archiving and backing up: %d, while restoring: %d",
		id, f.runs-1, archFailed, pushFaultsInjected, r.proxy.Injected(0)-pushFaultsInjected)
	if _, err := os.Stat(filepath.Join(restored.Data, "recovery.signal")); err == nil {
		t.Error("recovery.signal left after promotion")
	}
	f.log(t, r.proxy)
}
