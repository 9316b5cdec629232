package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/walship/walship/internal/testenv"
)

// TestRestoreBackupOfRestoredCopy: a point-in-time copy becomes the new
// primary (archiving timeline 2 into the same archive), is backed up, and
// that backup is restored to a target. The backup carries the first
// restore's recovery settings (as plain lines: ALTER SYSTEM rewrote the
// file without walship's markers) and a stale recovery target in
// postgresql.conf; the second restore must replace the one and override
// the other, and keep the copy's own settings.
func TestRestoreBackupOfRestoredCopyFilesystem(t *testing.T) {
	onFilesystem(t, restoreBackupOfRestoredCopy)
}

func TestRestoreBackupOfRestoredCopyS3(t *testing.T) { onS3(t, restoreBackupOfRestoredCopy) }

func restoreBackupOfRestoredCopy(t *testing.T, w *testenv.Workdir, target archiveTarget) {
	primary, _ := archivingPrimary(t, w, target)
	mustWalship(t, w, pgEnv(primary, target.env), "backup", "push", "--archive", target.url, "--checkpoint", "fast")
	commitBatch(t, primary, 1)
	b2 := commitBatch(t, primary, 2)
	commitBatch(t, primary, 3) // lost: the copy stops before it
	switchAndWait(t, primary)
	primary.Stop()

	// The first copy keeps the primary's archive_command (no --archive-mode
	// off): promoted, it archives timeline 2 into the same archive.
	c1 := testenv.EmptyCluster(t, w, "copy1")
	mustWalship(t, w, target.env, "restore", "--archive", target.url, "--pgdata", c1.Data, "--target-xid", b2.xid,
		"--tablespace-mapping", filepath.Join(w.Dir, "ts1")+"="+filepath.Join(w.Dir, "copy1-ts1"))
	c1.Env = target.env
	c1.Start(t)
	c1.WaitSQL(t, "SELECT pg_is_in_recovery()", "f", 2*time.Minute)
	if n := c1.SQL(t, "SELECT count(*) FROM rows"); n != rowsUpTo(2) {
		t.Fatalf("first copy: %s rows, want %s", n, rowsUpTo(2))
	}
	c1.SQL(t, "ALTER SYSTEM SET work_mem = '7MB'")
	appendFile(t, filepath.Join(c1.Data, "postgresql.conf"), "recovery_target_time = '2001-01-01 00:00:00+00'\n")
	conf1 := readFile(t, filepath.Join(c1.Data, "postgresql.auto.conf"))
	if !strings.Contains(conf1, "recovery_target_xid = '"+b2.xid+"'") || strings.Contains(conf1, "# BEGIN walship") {
		t.Fatalf("ALTER SYSTEM did not leave the first restore's settings as plain lines:\n%s", conf1)
	}

	b4 := commitBatch(t, c1, 4)
	id2 := strings.TrimSpace(mustWalship(t, w, pgEnv(c1, target.env), "backup", "push", "--archive", target.url, "--checkpoint", "fast"))
	b5 := commitBatch(t, c1, 5)
	commitBatch(t, c1, 6) // after the target
	switchAndWait(t, c1)
	q := "SELECT count(*) || ':' || md5(string_agg(batch || ',' || i, ';' ORDER BY batch, i)) FROM rows"
	want := c1.SQL(t, strings.Replace(q, "FROM rows", "FROM rows WHERE batch <> 6", 1))
	if !strings.HasPrefix(want, "1200:") { // batches 1, 2, 4 and 5
		t.Fatalf("first copy before the target: %s", want)
	}
	t.Logf("backup %s of the copy after %s; target %s", id2, b4.lsn, b5.lsn)

	c2, logs := restoreAndStart(t, w, target, "copy2", "--backup", id2, "--target-lsn", b5.lsn,
		"--tablespace-mapping", filepath.Join(w.Dir, "copy1-ts1")+"="+filepath.Join(w.Dir, "copy2-ts1"))
	for _, s := range []string{"removed recovery settings the backup carried", "restore_command", "recovery_target_xid",
		"postgresql.conf in the backup sets recovery settings", "recovery_target_time"} {
		if !strings.Contains(logs, s) {
			t.Errorf("restore log does not mention %q:\n%s", s, logs)
		}
	}
	if got := c2.SQL(t, q); got != want {
		t.Fatalf("copy of the copy: rows %s, want %s", got, want)
	}
	if wm := c2.SQL(t, "SHOW work_mem"); wm != "7MB" {
		t.Errorf("the copy's own setting was lost: work_mem %s", wm)
	}
	if tl := c2.SQL(t, "SELECT substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)"); tl != "00000003" {
		t.Errorf("copy of the copy is on timeline %s, want 3", tl)
	}
	conf2 := readFile(t, filepath.Join(c2.Data, "postgresql.auto.conf"))
	if strings.Count(conf2, "# BEGIN walship restore") != 1 || strings.Contains(conf2, b2.xid) || strings.Count(conf2, "restore_command") != 1 {
		t.Errorf("postgresql.auto.conf of the copy of the copy:\n%s", conf2)
	}
	restartPromoted(t, c2, q, want)
}

func appendFile(t *testing.T, path, s string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(s); err != nil {
		t.Fatal(err)
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
