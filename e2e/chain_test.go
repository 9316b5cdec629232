package e2e

import (
	"fmt"
	"strings"
	"testing"

	"github.com/walship/walship/internal/testenv"
	"github.com/walship/walship/manifest"
)

// TestRestoreChain restores incremental backups on every PostgreSQL major
// of testenv.PGVersions from 17 on, with walship alone (no
// pg_combinebackup on the restore side): a full backup, pgbench changes and
// the kinds of change an incremental must carry (a relation truncated by
// VACUUM, then grown again; a table dropped, one created; a database
// created, then dropped; changed blocks in a tablespace), an incremental,
// more changes, a second incremental, more changes. The chain is restored
// to a time and an LSN between the two incrementals, to the second's
// consistent point and to the end of the archive; each copy is started and
// compared row for row with the primary as it was at that point.
func TestRestoreChain(t *testing.T) {
	for _, major := range testenv.PGVersions(t) {
		if major < 17 {
			continue
		}
		t.Run(fmt.Sprintf("PG%d", major), func(t *testing.T) { restoreChainOn(t, major) })
	}
}

// chainTables are the queries whose answers must match, row for row: the
// count and an MD5 of every row in order.
var chainTables = []string{
	"SELECT count(*) || ':' || md5(string_agg(aid || ',' || bid || ',' || abalance, ';' ORDER BY aid)) FROM pgbench_accounts",
	"SELECT count(*) || ':' || md5(string_agg(tid || ',' || bid || ',' || tbalance, ';' ORDER BY tid)) FROM pgbench_tellers",
	"SELECT count(*) || ':' || md5(string_agg(bid || ',' || bbalance, ';' ORDER BY bid)) FROM pgbench_branches",
	"SELECT count(*) || ':' || md5(string_agg(h::text, ';' ORDER BY h::text)) FROM pgbench_history h",
	"SELECT count(*) || ':' || md5(string_agg(batch || ',' || i, ';' ORDER BY batch, i)) FROM rows",
	"SELECT count(*) || ':' || md5(string_agg(i::text, ';' ORDER BY i)) FROM spaced",
	"SELECT count(*) || ':' || md5(string_agg(id || ',' || data, ';' ORDER BY id)) FROM shrunk",
	"SELECT pg_relation_size('shrunk') / current_setting('block_size')::int",
	"SELECT string_agg(relname, ',' ORDER BY relname) FROM pg_class WHERE relname IN ('dropped', 'created')",
	"SELECT count(*) || ':' || coalesce(sum(i), 0) FROM created",
	"SELECT string_agg(datname, ',' ORDER BY datname) FROM pg_database",
}

// chainState answers chainTables on c.
func chainState(t *testing.T, c *testenv.Cluster) []string {
	t.Helper()
	var out []string
	for _, q := range chainTables {
		out = append(out, c.SQL(t, q))
	}
	return out
}

func sameState(t *testing.T, what string, got, want []string) {
	t.Helper()
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("%s differs from the primary:\n%s\nprimary  %s\nrestored %s", what, chainTables[i], want[i], got[i])
		}
	}
}

func restoreChainOn(t *testing.T, major int) {
	w := testenv.NewWorkdir(t)
	w.Major = major
	target := fsTarget(t, w)
	primary, _ := archivingPrimary(t, w, target)
	env := pgEnv(primary, target.env)
	setSummarizeWAL(t, primary, "on")
	w.Run(t, nil, primary.Tool("pgbench"), append(primary.ConnArgs(), "-i", "-s", "5", "-q", "postgres")...)
	// shrunk: one row per block (as PostgreSQL's 011_ib_truncation.pl
	// makes it), so that VACUUM can truncate it: 40 blocks, cut to 30
	// before the first incremental, grown to 60 before the second.
	primary.SQL(t, "CREATE TABLE shrunk (id int, data text STORAGE PLAIN) WITH (autovacuum_enabled = false);"+
		"INSERT INTO shrunk SELECT i, repeat('0123456789ABCDEF', 256) FROM generate_series(1, 40) i")
	primary.SQL(t, "VACUUM shrunk")
	primary.SQL(t, "CREATE TABLE dropped AS SELECT generate_series(1, 5000) i")
	full := pushBackup(t, w, env, target)

	// Changes for the first incremental.
	pgbenchRun(t, w, primary, 300)
	primary.SQL(t, "DELETE FROM shrunk WHERE id > 30")
	primary.SQL(t, "VACUUM (TRUNCATE) shrunk")
	primary.SQL(t, "DROP TABLE dropped")
	primary.SQL(t, "CREATE TABLE created AS SELECT generate_series(1, 3000) i")
	primary.SQL(t, "UPDATE spaced SET i = i WHERE i % 7 = 0")
	primary.SQL(t, "CREATE DATABASE scratch")
	commitBatch(t, primary, 1)
	i1 := pushBackup(t, w, env, target, "--incremental")

	// A point between the two incrementals: recovery to the time after
	// batch 2 stops before the next commit.
	betweenAt := commitBatch(t, primary, 2)
	between := chainState(t, primary)

	// Changes for the second: shrunk grows again past its old length.
	pgbenchRun(t, w, primary, 300)
	primary.SQL(t, "INSERT INTO shrunk SELECT i, repeat('fedcba9876543210', 256) FROM generate_series(41, 70) i")
	primary.SQL(t, "UPDATE created SET i = i + 1 WHERE i % 5 = 0")
	primary.SQL(t, "DROP DATABASE scratch")
	commitBatch(t, primary, 4)
	atI2 := chainState(t, primary)
	i2 := pushBackup(t, w, env, target, "--incremental")
	pgbenchRun(t, w, primary, 100)
	commitBatch(t, primary, 5)
	end := chainState(t, primary)
	switchAndWait(t, primary)

	if i1.Parent != full.ID || i2.Parent != i1.ID || !i2.Incremental() {
		t.Fatalf("chain: %s <- %s (%s) <- %s (%s)", full.ID, i1.ID, i1.Parent, i2.ID, i2.Parent)
	}
	if n := incrementalFiles(t, target.store, i2.ID); n == 0 {
		t.Fatalf("backup %s holds no INCREMENTAL file", i2.ID)
	}
	if between[0] == end[0] || between[7] != "30" || end[7] != "60" || !strings.Contains(between[10], "scratch") || strings.Contains(end[10], "scratch") {
		t.Fatalf("the two points do not differ as the test means:\n%v\n%v", between, end)
	}

	t.Run("between", func(t *testing.T) {
		c, log := restoreAndStart(t, w, target, "r-between", "--target-time", betweenAt.timeThen)
		checkChainLog(t, log, i1, full.ID+","+i1.ID)
		sameState(t, "restore to "+betweenAt.timeThen, chainState(t, c), between)
		c.Stop()
	})
	t.Run("lsn between", func(t *testing.T) {
		c, log := restoreAndStart(t, w, target, "r-lsn", "--target-lsn", betweenAt.lsn)
		checkChainLog(t, log, i1, full.ID+","+i1.ID)
		sameState(t, "restore to LSN "+betweenAt.lsn, chainState(t, c), between)
		c.Stop()
	})
	// Recovery stops where the newest backup is consistent: the rebuilt
	// files with the least WAL replayed over them.
	t.Run("immediate", func(t *testing.T) {
		c, log := restoreAndStart(t, w, target, "r-immediate", "--target-immediate")
		checkChainLog(t, log, i2, full.ID+","+i1.ID+","+i2.ID)
		sameState(t, "restore to the newest backup's consistent point", chainState(t, c), atI2)
		c.Stop()
	})
	t.Run("end", func(t *testing.T) {
		c, log := restoreAndStart(t, w, target, "r-end")
		checkChainLog(t, log, i2, full.ID+","+i1.ID+","+i2.ID)
		sameState(t, "restore to the end", chainState(t, c), end)
		restartPromoted(t, c, chainTables[0], end[0])
		c.Stop()
	})
}

// checkChainLog checks restore said it restored backup m from chain.
func checkChainLog(t *testing.T, log string, m *manifest.Manifest, chain string) {
	t.Helper()
	if !strings.Contains(log, "restoring backup "+m.ID) || !strings.Contains(log, "chain="+chain) {
		t.Errorf("restore did not restore %s from the chain %s:\n%s", m.ID, chain, log)
	}
}
