package restore

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/walship/walship/archive"
	"github.com/walship/walship/backends"
	"github.com/walship/walship/backends/memory"
	"github.com/walship/walship/catalog"
	"github.com/walship/walship/manifest"
	"github.com/walship/walship/sealed"
)

// entry is one tar entry of a test backup.
type entry struct {
	name, data string
	typ        byte
	link       string
}

func file(name, data string) entry { return entry{name: name, data: data, typ: tar.TypeReg} }
func dir(name string) entry        { return entry{name: name, typ: tar.TypeDir} }

// dataDir is the smallest tar restore takes for a data directory.
func dataDir(extra ...entry) []entry {
	e := []entry{file("backup_label", "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\n"),
		dir("global"), dir("pg_wal"), file("PG_VERSION", "15\n")}
	e = append(e, extra...)
	return append(e, file("global/pg_control", strings.Repeat("c", 8192)))
}

func mkTar(t testing.TB, entries []entry) []byte {
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for _, e := range entries {
		h := &tar.Header{Name: e.name, Typeflag: e.typ, Mode: 0o600, Linkname: e.link, Size: int64(len(e.data))}
		if e.typ != tar.TypeReg {
			h.Size = 0
		}
		if e.typ == tar.TypeDir {
			h.Mode = 0o700
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if h.Size > 0 {
			if _, err := tw.Write([]byte(e.data)); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// sealBackup stores a backup of the given archives (name -> tar stream;
// a name other than base.tar is a tablespace at /old/<name>) as backup
// push would: sealed chunks of chunk bytes, the server manifest, then
// manifest.json. It returns the manifest.
func sealBackup(t testing.TB, store backends.Storage, id string, chunk int, archives map[string][]byte) *manifest.Manifest {
	t.Helper()
	ctx := context.Background()
	sl, err := sealed.NewSealer(sealed.Compression{Codec: sealed.CodecZstd})
	if err != nil {
		t.Fatal(err)
	}
	put := func(key string, raw []byte) manifest.Chunk {
		s, err := sl.Seal(raw)
		if err != nil {
			t.Fatal(err)
		}
		if err := store.PutIfAbsent(ctx, key, s.Reader(), s.Size()); err != nil {
			t.Fatal(err)
		}
		return manifest.Chunk{Key: key, Size: int64(len(raw)), StoredSize: s.Size(), SHA256: hex.EncodeToString(s.Header.SHA256[:])}
	}
	m := &manifest.Manifest{Format: manifest.Format, ID: id, SystemIdentifier: 7712376803198510374, SegmentSize: 16 << 20,
		Timeline: 1, StopTimeline: 1, StartLSN: 0x2000028, StopLSN: 0x2000100}
	oid := uint32(16384)
	for _, name := range []string{"base.tar", "16384.tar"} {
		data, ok := archives[name]
		if !ok {
			continue
		}
		ar := manifest.Archive{Name: name, Size: int64(len(data))}
		if name != "base.tar" {
			ar.TablespaceOID, ar.Location = oid, "/old/"+name
		}
		for seq, off := 0, 0; off < len(data) || seq == 0; seq, off = seq+1, off+chunk {
			end := min(off+chunk, len(data))
			ar.Chunks = append(ar.Chunks, put(fmt.Sprintf("%s%s/%s.%05d", manifest.Prefix, id, name, seq), data[off:end]))
		}
		m.Archives = append(m.Archives, ar)
	}
	m.ServerManifest = put(manifest.Prefix+id+"/backup_manifest", []byte(`{"PostgreSQL-Backup-Manifest-Version": 1}`))
	b, _ := json.Marshal(m)
	if err := store.PutIfAbsent(ctx, manifest.Prefix+id+"/manifest.json", bytes.NewReader(b), int64(len(b))); err != nil {
		t.Fatal(err)
	}
	return m
}

// restoreTar restores a backup of base.tar into a new directory; it
// returns the directory and Restore's error.
func restoreTar(t *testing.T, base []byte, o Options) (string, error) {
	t.Helper()
	store := memory.New()
	m := sealBackup(t, store, "20260101T000000Z", 700, map[string][]byte{"base.tar": base})
	return restorePlan(t, store, &Plan{Backup: m}, o)
}

func restorePlan(t *testing.T, store backends.Storage, p *Plan, o Options) (string, error) {
	t.Helper()
	if o.PGData == "" {
		o.PGData = filepath.Join(t.TempDir(), "pgdata")
	}
	if o.Target.Timeline == "" {
		o.Target = Target{Kind: TargetEnd, Timeline: "latest"}
	}
	if o.RestoreCommand == "" {
		o.RestoreCommand = "walship fetch %f %p"
	}
	err := Restore(context.Background(), archive.New(store, slog.New(slog.DiscardHandler)), p, o)
	return o.PGData, err
}

// A standby's backup, or a backup of a restored copy, restores like any
// other: the signal files and recovery settings it carried are replaced.
func TestRestoreReplacesCarriedRecoveryConfig(t *testing.T) {
	carried := dataDir(file("standby.signal", ""), file("recovery.signal", ""),
		file("postgresql.conf", "shared_buffers = 128MB\n#restore_command = ''\nrecovery_target_time = '2020-01-01 00:00:00+00'\n"),
		file("postgresql.auto.conf", "work_mem = '64MB'\nprimary_conninfo = 'host=old password=hunter2'\n"+
			recoveryBlock("20250101T000000Z", []Setting{{"restore_command", "old %f %p"}, {"recovery_target_xid", "999"}})+"port = '5433'\n"))
	base := mkTar(t, carried)
	for _, standby := range []bool{false, true} {
		var logs bytes.Buffer
		dir, err := restoreTar(t, base, Options{Standby: standby, Log: slog.New(slog.NewTextHandler(&logs, nil)),
			Target: Target{Kind: TargetLSN, LSN: 0x3000000, Timeline: "latest", Action: "promote"}})
		if err != nil {
			t.Fatal(err)
		}
		want, other := "recovery.signal", "standby.signal"
		if standby {
			want, other = other, want
		}
		if _, err := os.Stat(filepath.Join(dir, want)); err != nil {
			t.Errorf("standby=%v: %v", standby, err)
		}
		if _, err := os.Stat(filepath.Join(dir, other)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("standby=%v: the carried %s is still there (%v)", standby, other, err)
		}
		b, _ := os.ReadFile(filepath.Join(dir, "postgresql.auto.conf"))
		conf := string(b)
		for _, w := range []string{"work_mem = '64MB'\n", "port = '5433'\n", "restore_command = 'walship fetch %f %p'\n",
			"recovery_target_lsn = '0/3000000'\n", "recovery_target_xid = ''\n", "recovery_target_time = ''\n", "primary_conninfo = ''\n"} {
			if !strings.Contains(conf, w) {
				t.Errorf("postgresql.auto.conf lacks %q:\n%s", w, conf)
			}
		}
		for _, g := range []string{"old %f %p", "999", "hunter2", "20250101T000000Z"} {
			if strings.Contains(conf, g) {
				t.Errorf("postgresql.auto.conf still holds %q:\n%s", g, conf)
			}
		}
		if strings.Count(conf, blockBegin) != 1 {
			t.Errorf("want one walship block:\n%s", conf)
		}
		l := logs.String()
		if !strings.Contains(l, "level=WARN") || !strings.Contains(l, "recovery_target_time") || strings.Contains(l, "restore_command,") {
			t.Errorf("want a warning naming postgresql.conf's recovery_target_time only:\n%s", l)
		}
		if strings.Contains(l, "hunter2") {
			t.Errorf("a carried password was logged:\n%s", l)
		}
	}
}

func TestRestoreRefusesDamagedBackups(t *testing.T) {
	valid := mkTar(t, dataDir())
	cases := []struct {
		name string
		base []byte
	}{
		{"symlink out of pg_tblspc", mkTar(t, dataDir(dir("pg_tblspc"), entry{name: "pg_tblspc/16385", typ: tar.TypeSymlink, link: "/etc"}))},
		{"relative symlink", mkTar(t, dataDir(entry{name: "base", typ: tar.TypeSymlink, link: "../../x"}))},
		{"symlink inside", mkTar(t, dataDir(entry{name: "conf", typ: tar.TypeSymlink, link: "PG_VERSION"}))},
		{"hard link", mkTar(t, dataDir(entry{name: "copy", typ: tar.TypeLink, link: "PG_VERSION"}))},
		{"character device", mkTar(t, dataDir(entry{name: "null", typ: tar.TypeChar}))},
		{"block device", mkTar(t, dataDir(entry{name: "sda", typ: tar.TypeBlock}))},
		{"fifo", mkTar(t, dataDir(entry{name: "pipe", typ: tar.TypeFifo}))},
		{"path outside", mkTar(t, dataDir(file("../escape", "x")))},
		{"absolute path", mkTar(t, dataDir(file("/tmp/walship-escape", "x")))},
		{"a file twice", mkTar(t, dataDir(file("PG_VERSION", "16\n")))},
		{"a file under a file", mkTar(t, dataDir(file("PG_VERSION/x", "1")))},
		{"not tar", bytes.Repeat([]byte("this chunk is not a tar stream "), 100)},
		{"data after the end", append(bytes.Clone(valid), []byte("trailing garbage")...)},
		{"no backup_label", mkTar(t, dataDir()[1:])},
		{"no pg_control", mkTar(t, dataDir()[:4])},
		{"empty", nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir, err := restoreTar(t, c.base, Options{})
			if !errors.Is(err, ErrDamaged) {
				t.Fatalf("want ErrDamaged, got %v", err)
			}
			if _, serr := os.Stat(dir); !errors.Is(serr, os.ErrNotExist) {
				t.Errorf("the failed restore left %s (%v)", dir, serr)
			}
			if _, serr := os.Lstat("/tmp/walship-escape"); serr == nil {
				t.Error("wrote outside the data directory")
			}
			t.Log(err)
		})
	}
	t.Run("valid", func(t *testing.T) {
		// Zero padding after the end, and a file whose directory entry
		// is missing, are fine.
		base := append(mkTar(t, dataDir(file("base/1/1259", "x"))), make([]byte, 10240)...)
		if _, err := restoreTar(t, base, Options{}); err != nil {
			t.Fatal(err)
		}
	})
}

func TestRestoreRefusesDamagedManifests(t *testing.T) {
	base := mkTar(t, dataDir())
	space := mkTar(t, []entry{dir("PG_15_202209061")})
	cases := []struct {
		name   string
		mutate func(m *manifest.Manifest)
	}{
		{"no archives", func(m *manifest.Manifest) { m.Archives = nil }},
		{"only a tablespace", func(m *manifest.Manifest) { m.Archives = m.Archives[1:] }},
		{"two base archives", func(m *manifest.Manifest) { m.Archives[1].Location, m.Archives[1].Name = "", "base2.tar" }},
		{"an archive twice", func(m *manifest.Manifest) { m.Archives[1].Name = "base.tar" }},
		{"a relative tablespace", func(m *manifest.Manifest) { m.Archives[1].Location = "old/ts" }},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			store := memory.New()
			m := sealBackup(t, store, "20260101T000000Z", 1<<20, map[string][]byte{"base.tar": base, "16384.tar": space})
			c.mutate(m)
			ts := filepath.Join(t.TempDir(), "ts")
			dir, err := restorePlan(t, store, &Plan{Backup: m}, Options{TablespaceMap: map[string]string{"/old/16384.tar": ts}})
			if !errors.Is(err, ErrDamaged) {
				t.Fatalf("want ErrDamaged, got %v", err)
			}
			for _, d := range []string{dir, ts} {
				if _, serr := os.Stat(d); !errors.Is(serr, os.ErrNotExist) {
					t.Errorf("restore wrote %s before refusing (%v)", d, serr)
				}
			}
		})
	}
}

// A chunk that cannot be read keeps its own error: it is not "damaged".
// A chunk the manifest names but the archive lacks makes the backup
// damaged (status 4): no retry brings it back. The store's not-found stays
// in the chain for the message.
func TestRestoreMissingChunkIsDamage(t *testing.T) {
	store := memory.New()
	m := sealBackup(t, store, "20260101T000000Z", 700, map[string][]byte{"base.tar": mkTar(t, dataDir(file("big", strings.Repeat("d", 5000))))})
	if err := store.Delete(context.Background(), m.Archives[0].Chunks[3].Key); err != nil {
		t.Fatal(err)
	}
	_, err := restorePlan(t, store, &Plan{Backup: m}, Options{})
	if !errors.Is(err, backends.ErrNotFound) || !errors.Is(err, ErrDamaged) {
		t.Fatalf("want ErrDamaged wrapping the chunk's not-found error: %v", err)
	}
}

func TestRestoreRefusesRelativeDataDir(t *testing.T) {
	store := memory.New()
	m := sealBackup(t, store, "20260101T000000Z", 700, map[string][]byte{"base.tar": mkTar(t, dataDir())})
	for _, d := range []string{"", "relative/pgdata"} {
		err := Restore(context.Background(), archive.New(store, slog.New(slog.DiscardHandler)), &Plan{Backup: m},
			Options{PGData: d, Target: Target{Timeline: "latest"}})
		if !errors.Is(err, ErrUsage) {
			t.Errorf("PGData %q: %v", d, err)
		}
	}
}

// A history file that is sealed intact but garbled inside is damage.
func TestGarbledHistoryIsDamage(t *testing.T) {
	ctx := context.Background()
	store := memory.New()
	a := archive.New(store, slog.New(slog.DiscardHandler))
	if _, err := a.ClaimIdentity(ctx, archive.Identity{SystemIdentifier: 42, PGVersion: "15", SegmentSize: 16 << 20, BlockSize: 8192}); err != nil {
		t.Fatal(err)
	}
	sl, err := sealed.NewSealer(sealed.Compression{Codec: sealed.CodecZstd})
	if err != nil {
		t.Fatal(err)
	}
	s, err := sl.Seal([]byte("this is not\ta history file\n"))
	if err != nil {
		t.Fatal(err)
	}
	if err := store.PutIfAbsent(ctx, "history/00000002.history", s.Reader(), s.Size()); err != nil {
		t.Fatal(err)
	}
	if _, err := catalog.Load(ctx, a, catalog.Backups|catalog.Histories); !errors.Is(err, ErrDamaged) {
		t.Fatalf("want ErrDamaged, got %v", err)
	}
}
