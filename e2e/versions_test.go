package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/walship/walship/internal/testenv"
	"github.com/walship/walship/segment"
)

// matrix is the end-to-end tier TestPGVersions runs on every PostgreSQL
// major.
var matrix = []struct {
	name string
	run  func(*testing.T, *testenv.Workdir, archiveTarget)
}{
	// Archiving under pgbench load; an archive-only standby replays it all
	// through walship fetch and matches the primary.
	{"ArchiveAndReplay", archiveAndReplay},
	// A base backup, point-in-time restores to each kind of target (rows
	// checked, restarted), a standby restored from the archive that keeps
	// following it.
	{"BackupAndPITR", backupAndPITR},
	// An archive-only standby fed by walship agent under load; the agent
	// killed and restarted; a lost segment reported with the rebuild.
	{"AgentFollower", agentFollower},
	// A promotion: archiving goes on on timeline 2, restores along timeline
	// 2 and along timeline 1, restore's refusals on the same archive.
	{"TimelineRestore", timelineRestore},
	// Retention with a slot, verify, a gap found, a restore drill from the
	// schedule's config and the schedule daemon's drills.
	{"RetentionVerifyGapsDrill", retentionVerifyGapsDrill},
}

// TestPGVersions runs the matrix on every PostgreSQL major of
// testenv.PGVersions (WALSHIP_TEST_PG_VERSIONS, default 15 to 18), as
// PG<major>/<scenario>Filesystem on a filesystem archive, and, on the
// newest major, also as PG<major>/<scenario>S3 on versitygw. (The rest of
// the package runs on S3 with 15.)
func TestPGVersions(t *testing.T) {
	newest := testenv.PGMajors[len(testenv.PGMajors)-1]
	for _, major := range testenv.PGVersions(t) {
		t.Run(fmt.Sprintf("PG%d", major), func(t *testing.T) {
			for _, sc := range matrix {
				t.Run(sc.name+"Filesystem", func(t *testing.T) {
					w := testenv.NewWorkdir(t)
					w.Major = major
					sc.run(t, w, fsTarget(t, w))
				})
				if major != newest {
					continue
				}
				t.Run(sc.name+"S3", func(t *testing.T) {
					w := testenv.NewWorkdir(t)
					w.Major = major
					sc.run(t, w, s3Target(t))
				})
			}
		})
	}
}

// archiveOnlyBase fills standby's data directory with a base backup of
// primary that holds no WAL, so the standby needs the archive for all WAL
// from the backup's start on. With the server's own pg_basebackup (-X none)
// where it ships one; the packages of PostgreSQL 16 and up carry only the
// server and pg_basebackup 15 refuses newer servers, so there walship's own
// backup push and restore --standby make it (restore also writes
// standby.signal and a restore_command, which archiveAndReplay then sets as
// it does for pg_basebackup's copy).
func archiveOnlyBase(t *testing.T, w *testenv.Workdir, primary, standby *testenv.Cluster, target archiveTarget) {
	t.Helper()
	if primary.Ships("pg_basebackup") {
		w.Run(t, nil, primary.Tool("pg_basebackup"), append(primary.ConnArgs(), "-D", standby.Data, "-X", "none", "--no-sync", "-c", "fast")...)
	} else {
		id := strings.TrimSpace(mustWalship(t, w, pgEnv(primary, target.env), "backup", "push", "--archive", target.url, "--checkpoint", "fast"))
		mustWalship(t, w, target.env, "restore", "--archive", target.url, "--backup", id, "--pgdata", standby.Data,
			"--standby", "--archive-mode", "off")
	}
	ents, err := os.ReadDir(filepath.Join(standby.Data, "pg_wal"))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if f, err := segment.ParseFile(e.Name()); err == nil && (f.Kind == segment.KindSegment || f.Kind == segment.KindPartial) {
			t.Fatalf("the archive-only base holds WAL: pg_wal/%s", e.Name())
		}
	}
}
