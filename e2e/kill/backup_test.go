package kill

import (
	"bytes"
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/walship/walship/internal/testenv"
)

// smallPrimary is a PostgreSQL 15 primary as small as initdb makes one
// (1 MiB WAL segments), archiving into tg with walship push.
func smallPrimary(t *testing.T, w *testenv.Workdir, tg target) (*testenv.Cluster, []string) {
	c := testenv.EmptyCluster(t, w, "primary")
	w.Run(t, nil, filepath.Join(c.Bin, "initdb"), "-D", c.Data, "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8", "--wal-segsize=1")
	c.Env = tg.env
	c.Configure(t, map[string]string{
		"wal_level": "replica", "archive_mode": "on", "shared_buffers": "16MB",
		"archive_command": walshipBin + " push --archive " + tg.url + " %p",
	})
	c.Start(t)
	// Start sets max_wal_senders = 4; a killed backup's sender may linger
	// a moment while the next backup starts.
	c.Configure(t, map[string]string{"max_wal_senders": "16"})
	w.Run(t, c.Env, filepath.Join(c.Bin, "pg_ctl"), "-D", c.Data, "-l", c.Data+".log", "-w", "-m", "fast", "restart")
	// Two of initdb's three databases go: a third of the data to back up.
	psql(t, c, "ALTER DATABASE template0 IS_TEMPLATE false", "DROP DATABASE template0", "DROP DATABASE postgres",
		"CREATE TABLE t AS SELECT g AS i, md5(g::text) AS s FROM generate_series(1, 5000) g")
	env := append([]string{"PGHOST=" + w.Dir, "PGPORT=" + strconv.Itoa(c.Port), "PGUSER=postgres", "PGDATABASE=template1"}, tg.env...)
	return c, env
}

// psql runs each statement on its own in template1 and returns the last
// one's output.
func psql(t *testing.T, c *testenv.Cluster, stmts ...string) string {
	t.Helper()
	args := append(c.ConnArgs(), "-X", "-At", "-v", "ON_ERROR_STOP=1", "-d", "template1")
	for _, s := range stmts {
		args = append(args, "-c", s)
	}
	return strings.TrimSpace(c.W.Run(t, nil, filepath.Join(c.Bin, "psql"), args...))
}

func TestKillBackupPush(t *testing.T) {
	w := testenv.NewWorkdir(t)
	tg := fsTarget(t, w)
	ctx := context.Background()
	c := newTally(t)
	k := newChecker(tg)
	rng := rngFor(t)
	pg, env := smallPrimary(t, w, tg)
	r := &backupRig{w: w, env: env, url: tg.url}
	backupOnce, del := r.take, r.del
	op := func() time.Duration {
		began := time.Now()
		id, err := backupOnce()
		if err != nil {
			t.Fatal(err)
		}
		d := time.Since(began)
		if err := del(id); err != nil {
			t.Fatal(err)
		}
		return d
	}
	c.untilKilled(rng, 3, op, func(i int, delay time.Duration) {
		c.what = fmt.Sprintf("iteration %d: backup push killed after %v", i, delay)
		pr := walship(w, env, r.args()...)
		killed, err := runKilled(pr, delay)
		switch {
		case killed:
			c.kills++
		case err != nil:
			c.violation("backup push ended by itself with %v before its kill:\n%s", err, pr.output())
		default:
			c.finished++
		}
		incomplete := k.check(ctx, c) // every complete backup whole, every object sealed
		if len(incomplete) > 0 || len(tg.tempFiles(t)) > 0 {
			c.debris++
		}
		if killed {
			id, err := backupOnce()
			c.reruns++
			if err != nil {
				c.violation("re-run of backup push: %v", err)
			}
			incomplete = k.check(ctx, c)
			if id != "" && !slices.Contains(k.complete, id) {
				c.violation("the re-run printed backup id %s, which is not a complete backup", id)
			}
		}
		// Clean-up: walship backup delete of what the kill left (and,
		// to keep the archive small, of every complete backup).
		for _, id := range append(incomplete, k.complete...) {
			if err := del(id); err != nil {
				c.violation("%v", err)
			}
		}
		if left := k.check(ctx, c); len(left) > 0 || len(k.complete) > 0 {
			c.violation("backups left after the clean-up: %v %v", left, k.complete)
		}
		if left := tg.tempFiles(t); len(left) > 0 {
			c.violation("debris after the re-run and clean-up: %v", left)
		}
	})
	if n := psql(t, pg, "SELECT failed_count FROM pg_stat_archiver"); n != "0" {
		t.Errorf("the primary's archive_command failed %s times", n)
	}
	c.report("")
}

// backupRig runs walship backup push and delete against one primary.
type backupRig struct {
	w   *testenv.Workdir
	env []string
	url string
}

// take takes a backup to completion and returns its id.
func (r *backupRig) take() (string, error) {
	cmd := r.w.Command(r.env, walshipBin, r.args()...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("%w\n%s", err, stderr.String())
	}
	return strings.TrimSpace(string(out)), nil
}

func (r *backupRig) args() []string {
	return []string{"backup", "push", "--archive", r.url, "--checkpoint", "fast", "--chunk-size-mb", "1", "--wal-timeout", "60s"}
}

func (r *backupRig) del(id string) error {
	pr := walship(r.w, r.env, "backup", "delete", "--archive", r.url, id)
	if err := pr.cmd.Run(); err != nil {
		return fmt.Errorf("walship backup delete %s: %w\n%s", id, err, pr.output())
	}
	return nil
}
