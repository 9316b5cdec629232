package e2e

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/walship/walship/archive"
	"github.com/walship/walship/internal/testenv"
	"github.com/walship/walship/sealed"
	"github.com/walship/walship/segment"
)

// A primary whose archiver was held back has a backlog of ready segments
// (pgbench -i -s 40: more than 30 of them). Started again with
// archive_command = walship push, PostgreSQL drains it: first with
// --parallel 1 (one segment per call, as before), then with the default,
// where each call takes the next ready segments along and their own calls
// return at once on the proofs. Every segment is archived, the archiver
// records no failure, walship logs no warning, no proof is left, and an
// archive-only standby replays all of it to the primary's exact contents.
func TestParallelPushDrainsABacklogFilesystem(t *testing.T) { onFilesystem(t, drainBacklogs) }

func TestParallelPushDrainsABacklogS3(t *testing.T) { onS3(t, drainBacklogs) }

func drainBacklogs(t *testing.T, w *testenv.Workdir, target archiveTarget) {
	primary := testenv.InitDB(t, w, "primary")
	primary.Env = target.env
	push := walshipBin + " push --archive " + target.url
	primary.Configure(t, map[string]string{
		"wal_level": "replica", "archive_mode": "on", "archive_command": push + " %p",
		"max_wal_size": "4GB", "checkpoint_timeout": "30min",
	})
	primary.Start(t)
	standby := testenv.EmptyCluster(t, w, "standby")
	archiveOnlyBase(t, w, primary, standby, target)

	scale := "40" // about 32 segments
	if testing.Short() {
		scale = "4"
	}
	first := ""
	for _, setting := range []string{"--parallel 1", ""} {
		// Hold the archiver back, make a backlog, let it go.
		primary.SQL(t, "ALTER SYSTEM SET archive_command = ''")
		primary.SQL(t, "SELECT pg_reload_conf()")
		w.Run(t, nil, primary.Tool("pgbench"), append(primary.ConnArgs(), "-i", "-s", scale, "-q", "postgres")...)
		last := primary.SQL(t, "SELECT pg_walfile_name(pg_current_wal_lsn())")
		primary.SQL(t, "SELECT pg_switch_wal()")
		ready := readyFiles(t, primary)
		if first == "" && len(ready) > 0 {
			first = ready[0]
		}
		if !testing.Short() && len(ready) < 30 {
			t.Fatalf("a backlog of %d ready segments, want at least 30", len(ready))
		}
		start := time.Now()
		primary.SQL(t, "ALTER SYSTEM SET archive_command = '"+push+" "+setting+" %p'")
		primary.SQL(t, "SELECT pg_reload_conf()")
		primary.WaitSQL(t, "SELECT coalesce(last_archived_wal >= '"+last+"', false) FROM pg_stat_archiver", "t", 5*time.Minute)
		took := time.Since(start)
		label := setting
		if label == "" {
			label = "the default parallelism"
		}
		t.Logf("%s: a backlog of %d segments drained in %v (%.1f ms a segment)", label, len(ready), took.Round(time.Millisecond),
			float64(took.Milliseconds())/float64(len(ready)))
		if fails := primary.SQL(t, "SELECT failed_count FROM pg_stat_archiver"); fails != "0" {
			t.Fatalf("pg_stat_archiver.failed_count = %s\n%s", fails, primary.Log())
		}
		if left := proofsLeft(t, primary); len(left) > 0 {
			t.Errorf("%s: proofs left after the backlog drained: %v", label, left)
		}
	}
	last := primary.SQL(t, "SELECT pg_walfile_name(pg_current_wal_lsn())")
	endLSN := primary.SQL(t, "SELECT pg_switch_wal()")
	primary.WaitSQL(t, "SELECT coalesce(last_archived_wal >= '"+last+"', false) FROM pg_stat_archiver", "t", 2*time.Minute)
	checkArchivedRun(t, target, first, last)
	if !strings.Contains(primary.Log(), "ahead=") {
		t.Error("no push took segments along with the default parallelism")
	}
	if !strings.Contains(primary.Log(), "pushed ahead by an earlier call") {
		t.Error("no push returned on a proof")
	}
	for _, line := range strings.Split(primary.Log(), "\n") {
		if strings.Contains(line, "level=ERROR") || strings.Contains(line, "level=WARN") {
			t.Errorf("primary log has a walship warning or error: %s", line)
		}
	}

	// Contents: an archive-only standby replays everything.
	replayFromArchive(t, w, standby, target, endLSN, 5*time.Minute)
	for _, q := range []string{
		"SELECT count(*) || ':' || sum(hashtext(aid || ',' || bid || ',' || abalance)) FROM pgbench_accounts",
		"SELECT count(*) || ':' || md5(string_agg(tid || ',' || bid || ',' || tbalance, ';' ORDER BY tid)) FROM pgbench_tellers",
		"SELECT count(*) || ':' || md5(string_agg(bid || ',' || bbalance, ';' ORDER BY bid)) FROM pgbench_branches",
	} {
		if p, s := primary.SQL(t, q), standby.SQL(t, q); p != s {
			t.Fatalf("standby differs from primary:\n%s\nprimary %s\nstandby %s", q, p, s)
		}
	}
}

// readyFiles lists the segments PostgreSQL has marked ready.
func readyFiles(t *testing.T, c *testenv.Cluster) []string {
	t.Helper()
	es, err := os.ReadDir(filepath.Join(c.Data, "pg_wal", "archive_status"))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range es {
		if name, ok := strings.CutSuffix(e.Name(), ".ready"); ok {
			if f, err := segment.ParseFile(name); err == nil && f.Kind == segment.KindSegment {
				out = append(out, name)
			}
		}
	}
	return out
}

func proofsLeft(t *testing.T, c *testenv.Cluster) []string {
	t.Helper()
	es, err := os.ReadDir(filepath.Join(c.Data, "pg_wal", archive.ProofDirName))
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	var out []string
	for _, e := range es {
		out = append(out, e.Name())
	}
	return out
}

// checkArchivedRun checks that every segment from first to last (timeline
// 1) is in the archive and unseals to a whole segment with a header for
// its name.
func checkArchivedRun(t *testing.T, target archiveTarget, first, last string) {
	t.Helper()
	ctx := context.Background()
	const segSize = 16 << 20
	ff, err := segment.ParseFile(first)
	if err != nil {
		t.Fatalf("first segment %q: %v", first, err)
	}
	lf, _ := segment.ParseFile(last)
	from, _ := ff.SegNo(segSize)
	to, _ := lf.SegNo(segSize)
	for n := from; n <= to; n++ {
		name := segment.Name{TLI: 1, SegNo: n}
		key := archive.SegmentKey(name, segSize)
		rc, _, err := target.store.Get(ctx, key)
		if err != nil {
			t.Fatalf("%s is not in the archive: %v", key, err)
		}
		r, err := sealed.NewReader(rc)
		if err != nil {
			rc.Close()
			t.Fatalf("%s: %v", key, err)
		}
		raw, err := io.ReadAll(r) // checks size and SHA-256 before EOF
		if err != nil {
			t.Fatalf("%s: %v", key, err)
		}
		r.Close()
		rc.Close()
		h, err := segment.ParseHeader(raw)
		f, _ := segment.ParseFile(name.String(segSize))
		if err != nil || len(raw) != segSize || segment.CheckHeader(h, f, int64(len(raw)), 0) != nil {
			t.Fatalf("%s does not hold its segment (%d bytes, %v)", key, len(raw), err)
		}
	}
}
