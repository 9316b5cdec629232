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

// TestPGVersions runs the key scenarios on every PostgreSQL major of
// testenv.PGVersions (WALSHIP_TEST_PG_VERSIONS) but 15, where
// TestArchiveAndReplay* and TestBackupAndPITR* run them: archiving under load with an archive-only
// standby replaying through walship fetch, and a base backup with
// point-in-time restores to each kind of target, rows checked. The
// filesystem archive is enough here; S3 is tested on 15 and, for archive
// and replay, on the newest major.
func TestPGVersions(t *testing.T) {
	for _, major := range testenv.PGVersions(t) {
		if major == testenv.DefaultPGMajor {
			continue
		}
		t.Run(fmt.Sprintf("PG%d", major), func(t *testing.T) {
			t.Run("ArchiveAndReplay", func(t *testing.T) {
				w := testenv.NewWorkdir(t)
				w.Major = major
				archiveAndReplay(t, w, fsTarget(t, w))
			})
			t.Run("BackupAndPITR", func(t *testing.T) {
				w := testenv.NewWorkdir(t)
				w.Major = major
				backupAndPITR(t, w, fsTarget(t, w))
			})
			if major != testenv.PGMajors[len(testenv.PGMajors)-1] {
				return
			}
			t.Run("ArchiveAndReplayS3", func(t *testing.T) {
				w := testenv.NewWorkdir(t)
				w.Major = major
				archiveAndReplay(t, w, s3Target(t))
			})
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
