// Package e2e runs walship against real PostgreSQL and a real S3 server.
// The end-to-end tier (versions_test.go's matrix: archiving under load and
// replay through walship fetch, backup and each kind of PITR target, a
// standby fed by the agent, a timeline switch, drills) runs on every
// supported major, 15 to 18; the other tests run on PostgreSQL 15. Every
// test that starts a server names its major (PG15, PG18, ...).
package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/walship/walship/backends"
	"github.com/walship/walship/internal/testenv"
)

var walshipBin string

func TestMain(m *testing.M) {
	os.Exit(testenv.WalshipMain(func(bin string) int {
		walshipBin = bin
		return m.Run()
	}))
}

// archiveTarget is where a test archives: a URL and the environment the
// server's commands need to reach it.
type archiveTarget struct {
	url string
	env []string
	// store is the archive seen directly, for what a test checks or
	// breaks behind walship's back.
	store backends.Storage
}

func fsTarget(t *testing.T, w *testenv.Workdir) archiveTarget {
	a := testenv.FSArchive(t, w)
	return archiveTarget{url: a.URL, store: a.Store}
}

func s3Target(t *testing.T) archiveTarget {
	a := testenv.S3Archive(t, "e2e", "cluster-a")
	return archiveTarget{url: a.URL, env: a.Env, store: a.Store}
}

// defaultMajor names the subtest of a test that runs on DefaultPGMajor
// alone: the major it ran on is in every end-to-end test's name.
var defaultMajor = fmt.Sprintf("PG%d", testenv.DefaultPGMajor)

// onFilesystem runs test on DefaultPGMajor, as subtest PG15, with a new
// work directory and an archive in it.
func onFilesystem(t *testing.T, test func(*testing.T, *testenv.Workdir, archiveTarget)) {
	t.Run(defaultMajor, func(t *testing.T) {
		w := testenv.NewWorkdir(t)
		test(t, w, fsTarget(t, w))
	})
}

// onS3 runs test on DefaultPGMajor, as subtest PG15, with a new work
// directory and an archive in a new bucket of the shared versitygw.
func onS3(t *testing.T, test func(*testing.T, *testenv.Workdir, archiveTarget)) {
	t.Run(defaultMajor, func(t *testing.T) {
		test(t, testenv.NewWorkdir(t), s3Target(t))
	})
}

// replayFromArchive starts standby as an archive-only standby of target
// (walship fetch as its restore_command, no primary_conninfo) and waits
// until it has replayed up to lsn.
func replayFromArchive(t *testing.T, w *testenv.Workdir, standby *testenv.Cluster, target archiveTarget, lsn string, timeout time.Duration) {
	t.Helper()
	standby.Env = target.env
	if err := os.WriteFile(filepath.Join(standby.Data, "standby.signal"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	w.Chown(t, standby.Data)
	standby.Configure(t, map[string]string{
		"restore_command": walshipBin + " fetch --archive " + target.url + " %f %p",
		"archive_mode":    "off", "primary_conninfo": "", "hot_standby": "on",
		"wal_retrieve_retry_interval": "200ms",
	})
	standby.Start(t)
	standby.WaitSQL(t, "SELECT pg_last_wal_replay_lsn() >= '"+lsn+"'::pg_lsn", "t", timeout)
}

// archiveAndReplay: a primary archiving with archive_command under pgbench
// load, and an archive-only standby replaying everything through
// restore_command (TestPGVersions runs it on every major).
func archiveAndReplay(t *testing.T, w *testenv.Workdir, target archiveTarget) {
	primary := testenv.InitDB(t, w, "primary")
	primary.Env = target.env
	primary.Configure(t, map[string]string{
		"wal_level": "replica", "archive_mode": "on",
		"archive_command": walshipBin + " push --archive " + target.url + " %p",
		"max_wal_size":    "64MB", "checkpoint_timeout": "30s",
	})
	primary.Start(t)
	pgbench := primary.Tool("pgbench")
	w.Run(t, nil, pgbench, append(primary.ConnArgs(), "-i", "-s", "4", "-q", "postgres")...)

	// An archive-only base: no WAL in the backup, so the standby needs the
	// archive for everything from the backup's start on.
	standby := testenv.EmptyCluster(t, w, "standby")
	archiveOnlyBase(t, w, primary, standby, target)

	// Load with forced WAL switches, so many segments are archived mid-way.
	for i := 0; i < 6; i++ {
		w.Run(t, nil, pgbench, append(primary.ConnArgs(), "-n", "-c", "2", "-t", "400", "postgres")...)
		primary.SQL(t, "SELECT pg_switch_wal()")
	}
	primary.SQL(t, "CHECKPOINT")
	last := primary.SQL(t, "SELECT pg_walfile_name(pg_current_wal_lsn())")
	endLSN := primary.SQL(t, "SELECT pg_switch_wal()")
	primary.WaitSQL(t, "SELECT last_archived_wal >= '"+last+"' FROM pg_stat_archiver", "t", 2*time.Minute)
	archived := primary.SQL(t, "SELECT archived_count || ' ' || failed_count FROM pg_stat_archiver")
	var nArchived, nFailed int
	if _, err := fmt.Sscanf(archived, "%d %d", &nArchived, &nFailed); err != nil {
		t.Fatalf("pg_stat_archiver: %q: %v", archived, err)
	}
	if nFailed != 0 {
		t.Fatalf("pg_stat_archiver.failed_count = %d\n%s", nFailed, primary.Log())
	}
	if nArchived < 8 {
		t.Fatalf("only %d files archived", nArchived)
	}
	t.Logf("primary archived %d files, last %s, switch at %s", nArchived, last, endLSN)

	// The standby: restore_command only, no primary_conninfo.
	replayFromArchive(t, w, standby, target, endLSN, 3*time.Minute)

	for _, q := range []string{
		"SELECT count(*) || ':' || md5(string_agg(aid || ',' || bid || ',' || abalance, ';' ORDER BY aid)) FROM pgbench_accounts",
		"SELECT count(*) || ':' || md5(string_agg(tid || ',' || bid || ',' || tbalance, ';' ORDER BY tid)) FROM pgbench_tellers",
		"SELECT count(*) || ':' || md5(string_agg(bid || ',' || bbalance, ';' ORDER BY bid)) FROM pgbench_branches",
		"SELECT count(*) || ':' || md5(string_agg(h::text, ';' ORDER BY h::text)) FROM pgbench_history h",
	} {
		p, s := primary.SQL(t, q), standby.SQL(t, q)
		if p != s {
			t.Fatalf("standby differs from primary:\n%s\nprimary %s\nstandby %s", q, p, s)
		}
	}
	if n := primary.SQL(t, "SELECT count(*) FROM pgbench_history"); n != "4800" {
		t.Fatalf("pgbench_history has %s rows, want 4800", n)
	}
	if fails := primary.SQL(t, "SELECT failed_count FROM pg_stat_archiver"); fails != "0" {
		t.Fatalf("failed_count = %s", fails)
	}
	// One line per push at info, nothing more.
	for _, line := range strings.Split(primary.Log(), "\n") {
		if strings.Contains(line, "level=ERROR") || strings.Contains(line, "level=WARN") {
			t.Errorf("primary log has a walship warning or error: %s", line)
		}
	}
	if strings.Contains(primary.Log()+standby.Log(), "SECRET") {
		t.Error("a log mentions a secret")
	}
	for _, e := range target.env {
		if k, v, _ := strings.Cut(e, "="); k == "AWS_SECRET_ACCESS_KEY" && strings.Contains(primary.Log()+standby.Log(), v) {
			t.Error("the S3 secret appears in a server log")
		}
	}
}
