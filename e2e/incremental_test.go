package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"path"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/walship/walship/archive"
	"github.com/walship/walship/backends"
	"github.com/walship/walship/internal/testenv"
	"github.com/walship/walship/manifest"
)

// TestIncremental takes incremental backups on every PostgreSQL major of
// testenv.PGVersions from 17 on: a full backup, pgbench changes, an
// incremental against it, more changes, a second incremental whose parent
// is chosen as the newest backup (the first incremental); and the
// refusals, each before anything is written to the archive: summarize_wal
// off, WAL summaries that do not reach back to the parent (it was taken
// before summarize_wal was turned on), and on PostgreSQL 15 the server
// itself.
func TestIncremental(t *testing.T) {
	for _, major := range testenv.PGVersions(t) {
		switch {
		case major == testenv.DefaultPGMajor:
			t.Run(fmt.Sprintf("PG%d", major), func(t *testing.T) { incrementalRefusedOn(t, major) })
		case major >= 17:
			t.Run(fmt.Sprintf("PG%d", major), func(t *testing.T) { incrementalChain(t, major) })
		}
	}
}

// refusedBeforeWriting runs backup push with args, which must exit 2 with
// one error line saying each of says, and leave backups/ as it was.
func refusedBeforeWriting(t *testing.T, w *testenv.Workdir, env []string, target archiveTarget, says []string, args ...string) {
	t.Helper()
	before := backupKeys(t, target.store)
	_, errs, code := runWalship(t, w, env, append([]string{"backup", "push", "--archive", target.url, "--checkpoint", "fast"}, args...)...)
	if code != 2 {
		t.Fatalf("backup push %v: exit %d, want 2 (refused)\n%s", args, code, errs)
	}
	var errLines []string
	for _, l := range strings.Split(strings.TrimSpace(errs), "\n") {
		if strings.Contains(l, "level=ERROR") {
			errLines = append(errLines, l)
		}
	}
	if len(errLines) != 1 {
		t.Fatalf("backup push %v: want one error line, got %d:\n%s", args, len(errLines), errs)
	}
	for _, s := range says {
		if !strings.Contains(errLines[0], s) {
			t.Errorf("backup push %v: the error does not say %q:\n%s", args, s, errLines[0])
		}
	}
	t.Logf("refused as it should: %s", errLines[0])
	if after := backupKeys(t, target.store); !slices.Equal(before, after) {
		t.Errorf("backup push %v: refused, but backups/ changed:\nbefore %v\nafter  %v", args, before, after)
	}
}

// backupKeys lists backups/, sorted.
func backupKeys(t *testing.T, store backends.Storage) []string {
	t.Helper()
	var keys []string
	if err := store.List(context.Background(), manifest.Prefix, func(o backends.ObjectInfo) error {
		keys = append(keys, o.Key)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	slices.Sort(keys)
	return keys
}

// showBackup reads a backup's manifest with backup show.
func showBackup(t *testing.T, w *testenv.Workdir, target archiveTarget, id string) *manifest.Manifest {
	t.Helper()
	var m manifest.Manifest
	if err := json.Unmarshal([]byte(mustWalship(t, w, target.env, "backup", "show", "--archive", target.url, id)), &m); err != nil {
		t.Fatalf("backup show %s: %v", id, err)
	}
	return &m
}

// pushBackup takes a backup and returns its manifest.
func pushBackup(t *testing.T, w *testenv.Workdir, env []string, target archiveTarget, args ...string) *manifest.Manifest {
	t.Helper()
	start := time.Now()
	id := strings.TrimSpace(mustWalship(t, w, env, append([]string{"backup", "push", "--archive", target.url, "--checkpoint", "fast"}, args...)...))
	m := showBackup(t, w, target, id)
	t.Logf("backup %s %v: %s, %d bytes, %d stored, %d files, %.1fs", id, args, m.Kind(), m.Size, m.StoredSize, m.Files,
		time.Since(start).Seconds())
	return m
}

// incrementalFiles counts the INCREMENTAL.* files backup id's server
// manifest lists (the files walship checked, as any other, against it).
func incrementalFiles(t *testing.T, store backends.Storage, id string) int {
	t.Helper()
	b, err := archive.ReadSealed(context.Background(), store, manifest.ServerKey(id))
	if err != nil {
		t.Fatal(err)
	}
	sm, err := manifest.ParseServer(b)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, f := range sm.Files {
		if strings.HasPrefix(path.Base(f.Path), "INCREMENTAL.") {
			n++
		}
	}
	t.Logf("backup %s: %d of its %d files are INCREMENTAL.*", id, n, len(sm.Files))
	return n
}

// setSummarizeWAL turns summarize_wal on or off (a reload suffices).
func setSummarizeWAL(t *testing.T, c *testenv.Cluster, v string) {
	t.Helper()
	c.SQL(t, "ALTER SYSTEM SET summarize_wal = "+v)
	c.SQL(t, "SELECT pg_reload_conf()")
	c.WaitSQL(t, "SHOW summarize_wal", v, 30*time.Second)
}

func pgbenchRun(t *testing.T, w *testenv.Workdir, c *testenv.Cluster, txns int) {
	t.Helper()
	w.Run(t, nil, c.Tool("pgbench"), append(c.ConnArgs(), "-n", "-c", "2", "-t", strconv.Itoa(txns), "postgres")...)
}

func incrementalChain(t *testing.T, major int) {
	w := testenv.NewWorkdir(t)
	w.Major = major
	target := fsTarget(t, w)
	primary, _ := archivingPrimary(t, w, target)
	env := pgEnv(primary, target.env)
	w.Run(t, nil, primary.Tool("pgbench"), append(primary.ConnArgs(), "-i", "-s", "5", "-q", "postgres")...)

	// summarize_wal is off by default.
	refusedBeforeWriting(t, w, env, target, []string{"summarize_wal is off"}, "--incremental")
	refusedBeforeWriting(t, w, env, target, []string{"--from", "--incremental"}, "--from", "20261126T071033Z")

	// A parent taken before summarize_wal was on: the server's summaries
	// begin after its start, and the server refuses.
	early := pushBackup(t, w, env, target)
	pgbenchRun(t, w, primary, 50)
	primary.SQL(t, "CHECKPOINT")
	setSummarizeWAL(t, primary, "on")
	refusedBeforeWriting(t, w, env, target, []string{early.ID, "summarize_wal", "wal_summary_keep_time", "take a full backup"}, "--incremental")
	refusedBeforeWriting(t, w, env, target, []string{"--from 20200101T000000Z", "no complete backup"}, "--incremental", "--from", "20200101T000000Z")

	full := pushBackup(t, w, env, target)
	pgbenchRun(t, w, primary, 400)
	i1 := pushBackup(t, w, env, target, "--incremental")
	pgbenchRun(t, w, primary, 400)
	i2 := pushBackup(t, w, env, target, "--incremental")

	if early.Type != manifest.TypeFull || full.Type != manifest.TypeFull || full.Parent != "" {
		t.Errorf("full backups: %s %q, %s %q parent %q", early.ID, early.Type, full.ID, full.Type, full.Parent)
	}
	if i1.Type != manifest.TypeIncremental || i1.Parent != full.ID {
		t.Errorf("first incremental %s: type %q parent %q, want incremental of %s", i1.ID, i1.Type, i1.Parent, full.ID)
	}
	if i2.Type != manifest.TypeIncremental || i2.Parent != i1.ID {
		t.Errorf("second incremental %s: type %q parent %q, want incremental of the newest backup %s", i2.ID, i2.Type, i2.Parent, i1.ID)
	}
	for _, m := range []*manifest.Manifest{i1, i2} {
		if n := incrementalFiles(t, target.store, m.ID); n == 0 {
			t.Errorf("incremental %s: its server manifest lists no INCREMENTAL.* file", m.ID)
		}
		if m.StoredSize*4 > full.StoredSize || m.Size*4 > full.Size {
			t.Errorf("incremental %s: %d bytes (%d stored), not far below the full backup's %d (%d stored)",
				m.ID, m.Size, m.StoredSize, full.Size, full.StoredSize)
		}
	}
	t.Logf("PostgreSQL %d, pgbench scale 5: full %d bytes (%d stored); incrementals after 800 transactions: %d (%d stored), %d (%d stored)",
		major, full.Size, full.StoredSize, i1.Size, i1.StoredSize, i2.Size, i2.StoredSize)

	setSummarizeWAL(t, primary, "off")
	refusedBeforeWriting(t, w, env, target, []string{"summarize_wal is off"}, "--incremental")
}

// incrementalRefusedOn checks that a server older than 17 is refused
// before anything is written.
func incrementalRefusedOn(t *testing.T, major int) {
	w := testenv.NewWorkdir(t)
	w.Major = major
	target := fsTarget(t, w)
	primary, _ := archivingPrimary(t, w, target)
	switchAndWait(t, primary)
	refusedBeforeWriting(t, w, pgEnv(primary, target.env), target,
		[]string{"PostgreSQL " + strconv.Itoa(major), "17 or later"}, "--incremental")
}
