package backup_test

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/walship/walship/archive"
	"github.com/walship/walship/backends"
	"github.com/walship/walship/backends/memory"
	"github.com/walship/walship/backup"
	"github.com/walship/walship/catalog"
	"github.com/walship/walship/manifest"
	"github.com/walship/walship/postgres"
	"github.com/walship/walship/restore"
	"github.com/walship/walship/sealed"
	"github.com/walship/walship/segment"
)

const (
	sysID   = 7712376803198510374
	segSize = 16 << 20
	tsDir   = "/old/tablespace"
)

// fakeServer is a BASE_BACKUP source built in memory: a data directory
// tar, a tablespace tar and a server manifest that describes them.
type fakeServer struct {
	base, space []byte
	manifest    []byte
	start, stop segment.LSN
	failAfter   int // send this many bytes of base.tar, then fail (0: never)
	piece       int
	archiveMode string
	// version is server_version_num (default 150010); summarizeWAL what
	// SHOW summarize_wal says; uploaded the manifest UPLOAD_MANIFEST got;
	// baseErr what BASE_BACKUP fails with before sending anything.
	version      int
	summarizeWAL string
	uploaded     []byte
	baseErr      error
	calls        []string
	onBackup     func() // called as BASE_BACKUP begins
}

type file struct {
	name string
	data []byte
}

func newFakeServer(t *testing.T, corrupt bool) *fakeServer {
	ctl := make([]byte, 8192)
	binary.LittleEndian.PutUint64(ctl[0:], sysID)
	binary.LittleEndian.PutUint64(ctl[64:], 1<<32+4242) // next full xid
	big := bytes.Repeat([]byte("walship base backup test page "), 3000)
	baseFiles := []file{
		{"backup_label", []byte("START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\nSTART TIME: 2026-11-26 10:00:00 UTC\n")},
		{"tablespace_map", []byte("16384 " + tsDir + "\n")},
		{"PG_VERSION", []byte("15\n")},
		{"base/1/1259", big},
		{"postgresql.auto.conf", []byte("# auto\n")},
		{"global/pg_control", ctl},
	}
	spaceFiles := []file{{"PG_15_202209061/5/16385", big[:70000]}}
	return buildFakeServer(t, corrupt, baseFiles, spaceFiles)
}

// buildFakeServer makes a server that sends the files given and a
// manifest describing them, starting at 0/2000028.
func buildFakeServer(t *testing.T, corrupt bool, baseFiles, spaceFiles []file) *fakeServer {
	s := &fakeServer{start: 0x2000028, stop: 0x2000100, piece: 777, archiveMode: "on", version: 150010, summarizeWAL: "off"}
	s.base = mkTar(t, []string{"base", "base/1", "global", "pg_wal"}, baseFiles)
	s.space = mkTar(t, []string{"PG_15_202209061", "PG_15_202209061/5"}, spaceFiles)
	var entries []string
	all := append([]file{}, baseFiles...)
	for _, f := range spaceFiles {
		all = append(all, file{"pg_tblspc/16384/" + f.name, f.data})
	}
	for i, f := range all {
		c := crc32.Checksum(f.data, crc32.MakeTable(crc32.Castagnoli))
		if corrupt && i == 3 {
			c++
		}
		var le [4]byte
		binary.LittleEndian.PutUint32(le[:], c)
		entries = append(entries, fmt.Sprintf(`{ "Path": %q, "Size": %d, "Last-Modified": "2026-11-26 10:00:00 GMT", "Checksum-Algorithm": "CRC32C", "Checksum": "%x" }`,
			f.name, len(f.data), le))
	}
	body := "{ \"PostgreSQL-Backup-Manifest-Version\": 1,\n\"Files\": [\n" + strings.Join(entries, ",\n") + "\n],\n" +
		"\"WAL-Ranges\": [\n{ \"Timeline\": 1, \"Start-LSN\": \"0/2000028\", \"End-LSN\": \"0/2000100\" }\n],\n"
	sum := sha256.Sum256([]byte(body))
	s.manifest = []byte(body + `"Manifest-Checksum": "` + hex.EncodeToString(sum[:]) + "\"}\n")
	return s
}

func mkTar(t *testing.T, dirs []string, files []file) []byte {
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for _, d := range dirs {
		if err := tw.WriteHeader(&tar.Header{Name: d + "/", Typeflag: tar.TypeDir, Mode: 0o700}); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range files {
		if err := tw.WriteHeader(&tar.Header{Name: f.name, Typeflag: tar.TypeReg, Mode: 0o600, Size: int64(len(f.data))}); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(f.data); err != nil {
			t.Fatal(err)
		}
	}
	tw.Flush() // no trailer: PostgreSQL omits it
	return b.Bytes()
}

func (s *fakeServer) Identify(context.Context) (postgres.System, error) {
	return postgres.System{SystemIdentifier: sysID, Timeline: 1, XLogPos: 0x9000000, VersionNum: s.version, SegmentSize: segSize,
		BlockSize: 8192, ArchiveMode: s.archiveMode}, nil
}

func (s *fakeServer) Show(_ context.Context, name string) (string, error) {
	s.calls = append(s.calls, "SHOW "+name)
	if name == "summarize_wal" && s.version >= 170000 {
		return s.summarizeWAL, nil
	}
	return "", fmt.Errorf("%w: SHOW %s: unrecognized configuration parameter", postgres.ErrServer, name)
}

func (s *fakeServer) UploadManifest(_ context.Context, b []byte) error {
	s.calls = append(s.calls, "UPLOAD_MANIFEST")
	s.uploaded = append([]byte(nil), b...)
	return nil
}

func (s *fakeServer) BaseBackup(ctx context.Context, o postgres.BackupOptions, h postgres.BackupHandler) (segment.LSN, uint32, error) {
	s.calls = append(s.calls, fmt.Sprintf("BASE_BACKUP incremental=%v", o.Incremental))
	if o.Incremental && s.uploaded == nil {
		return 0, 0, fmt.Errorf("%w: must UPLOAD_MANIFEST before performing an incremental BASE_BACKUP", postgres.ErrServer)
	}
	if s.onBackup != nil {
		s.onBackup()
	}
	if s.baseErr != nil {
		return 0, 0, s.baseErr
	}
	send := func(data []byte, limit int) error {
		for off := 0; off < len(data); off += s.piece {
			if limit > 0 && off >= limit {
				return errors.New("server closed the connection unexpectedly")
			}
			if err := h.Data(data[off:min(off+s.piece, len(data))]); err != nil {
				return err
			}
		}
		return nil
	}
	if err := h.Started(s.start, 1, []postgres.Tablespace{{OID: 16384, Location: tsDir, SizeKB: 80}, {SizeKB: 200}}); err != nil {
		return 0, 0, err
	}
	if err := h.Archive("16384.tar", tsDir); err != nil {
		return 0, 0, err
	}
	if err := send(s.space, 0); err != nil {
		return 0, 0, err
	}
	if err := h.Archive("base.tar", ""); err != nil {
		return 0, 0, err
	}
	if err := send(s.base, s.failAfter); err != nil {
		return 0, 0, err
	}
	if err := h.Manifest(); err != nil {
		return 0, 0, err
	}
	if err := send(s.manifest, 0); err != nil {
		return 0, 0, err
	}
	return s.stop, 1, nil
}

func options() backup.Options {
	return backup.Options{
		Compression: sealed.Compression{Codec: sealed.CodecZstd}, ChunkSize: 16 << 10, Parallel: 3,
		WALTimeout: 200 * time.Millisecond, PollInterval: time.Millisecond,
	}
}

// putWAL archives placeholder segments 2..last on timeline 1.
func putWAL(t *testing.T, store backends.Storage, last uint64) {
	for n := uint64(2); n <= last; n++ {
		key := archive.SegmentKey(segment.Name{TLI: 1, SegNo: n}, segSize)
		if err := store.PutIfAbsent(context.Background(), key, bytes.NewReader([]byte("x")), 1); err != nil {
			t.Fatal(err)
		}
	}
}

func keysUnder(ctx context.Context, t *testing.T, store backends.Storage, prefix string) []string {
	var keys []string
	if err := store.List(ctx, prefix, func(o backends.ObjectInfo) error {
		keys = append(keys, o.Key)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return keys
}

func TestPushThenRestore(t *testing.T) {
	ctx := context.Background()
	store := memory.New()
	putWAL(t, store, 3)
	a := archive.New(store, slog.New(slog.DiscardHandler))
	srv := newFakeServer(t, false)
	m, err := backup.Push(ctx, a, srv, options())
	if err != nil {
		t.Fatal(err)
	}
	if m.Size != int64(len(srv.base)+len(srv.space)) || m.Files != 7 || m.NextXID != 1<<32+4242 {
		t.Fatalf("manifest: size %d files %d next xid %d", m.Size, m.Files, m.NextXID)
	}
	if len(m.Archives) != 2 || len(m.Archives[1].Chunks) < 3 {
		t.Fatalf("want two archives, base.tar in several chunks: %+v", m.Archives)
	}
	if want := time.Date(2026, 11, 26, 10, 0, 0, 0, time.UTC); !m.StartTime.Equal(want) || m.StopTime.Before(m.StartTime) {
		t.Errorf("start %v (want %v from backup_label), stop %v", m.StartTime, want, m.StopTime)
	}
	if m.StartWAL != "000000010000000000000002" || m.StopWAL != "000000010000000000000002" {
		t.Errorf("WAL %s..%s", m.StartWAL, m.StopWAL)
	}
	l, err := manifest.List(ctx, store)
	if err != nil || len(l.Backups) != 1 || l.Backups[0].ID != m.ID {
		t.Fatalf("list: %+v %v", l, err)
	}

	inv, err := catalog.Load(ctx, a, catalog.Backups|catalog.Histories)
	if err != nil {
		t.Fatal(err)
	}
	plan, err := restore.Choose(inv, restore.Target{Kind: restore.TargetImmediate}, "")
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "pgdata")
	newTS := filepath.Join(t.TempDir(), "ts")
	err = restore.Restore(ctx, a, plan, restore.Options{
		PGData: dir, Target: restore.Target{Kind: restore.TargetImmediate, Timeline: "latest", Action: "pause"},
		RestoreCommand: "/usr/bin/walship fetch --archive /a %f %p", TablespaceMap: map[string]string{tsDir: newTS},
	})
	if err != nil {
		t.Fatal(err)
	}
	got := func(p string) string {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	if !bytes.Equal([]byte(got(filepath.Join(dir, "base/1/1259"))), bytes.Repeat([]byte("walship base backup test page "), 3000)) {
		t.Error("base/1/1259 differs")
	}
	if n := len(got(filepath.Join(newTS, "PG_15_202209061/5/16385"))); n != 70000 {
		t.Errorf("tablespace file has %d bytes", n)
	}
	if tm := got(filepath.Join(dir, "tablespace_map")); tm != "16384 "+newTS+"\n" {
		t.Errorf("tablespace_map %q", tm)
	}
	conf := got(filepath.Join(dir, "postgresql.auto.conf"))
	for _, want := range []string{"# auto\n", "restore_command = '/usr/bin/walship fetch --archive /a %f %p'", "recovery_target = 'immediate'", "recovery_target_action = 'pause'"} {
		if !strings.Contains(conf, want) {
			t.Errorf("postgresql.auto.conf lacks %q:\n%s", want, conf)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "recovery.signal")); err != nil {
		t.Error(err)
	}
	if got(filepath.Join(dir, "backup_manifest")) != string(srv.manifest) {
		t.Error("backup_manifest differs from the server's")
	}
	if fi, _ := os.Stat(dir); fi.Mode().Perm() != 0o700 {
		t.Errorf("data directory mode %v", fi.Mode().Perm())
	}

	// A restore into a non-empty directory is refused before anything.
	if err := restore.CheckTarget(dir); !errors.Is(err, restore.ErrUsage) {
		t.Errorf("non-empty directory: %v", err)
	}

	// A damaged chunk fails the restore, which removes what it wrote.
	memoryCorrupt(t, store, m.Archives[1].Chunks[1].Key)
	dir2 := filepath.Join(t.TempDir(), "pgdata2")
	err = restore.Restore(ctx, a, plan, restore.Options{PGData: dir2, Target: restore.Target{Timeline: "latest"}, RestoreCommand: "x",
		TablespaceMap: map[string]string{tsDir: filepath.Join(t.TempDir(), "ts2")}})
	if !errors.Is(err, sealed.ErrChecksum) {
		t.Fatalf("restore of a damaged chunk: %v", err)
	}
	if _, err := os.Stat(dir2); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("failed restore left %s behind", dir2)
	}

	if err := backup.Delete(ctx, store, m.ID); err != nil {
		t.Fatal(err)
	}
	if keys := keysUnder(ctx, t, store, manifest.Prefix); len(keys) != 0 {
		t.Errorf("delete left %v", keys)
	}
	if _, err := manifest.Get(ctx, store, m.ID); !errors.Is(err, manifest.ErrNoBackup) {
		t.Errorf("get after delete: %v", err)
	}
}

// memoryCorrupt flips a byte in the middle of a stored object.
func memoryCorrupt(t *testing.T, store *memory.Storage, key string) {
	rc, _, err := store.Get(context.Background(), key)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(rc)
	rc.Close()
	b[len(b)/2+10] ^= 1
	if err := store.Put(context.Background(), key, bytes.NewReader(b), int64(len(b))); err != nil {
		t.Fatal(err)
	}
}

func TestPushFailuresLeaveNothing(t *testing.T) {
	cases := []struct {
		name  string
		setup func(*testing.T, *fakeServer)
		wal   uint64
		want  error
	}{
		{"file differs from the server's manifest", func(t *testing.T, s *fakeServer) {
			*s = *newFakeServer(t, true)
		}, 3, sealed.ErrChecksum},
		{"server fails mid-stream", func(_ *testing.T, s *fakeServer) { s.failAfter = 40000 }, 3, nil},
		{"WAL never archived", func(*testing.T, *fakeServer) {}, 0, backup.ErrIncomplete},
		{"archive_mode off", func(_ *testing.T, s *fakeServer) { s.archiveMode = "off" }, 3, postgres.ErrServer},
		{"manifest tampered", func(_ *testing.T, s *fakeServer) {
			s.manifest = bytes.Replace(s.manifest, []byte("10:00:00 GMT"), []byte("10:00:01 GMT"), 1)
		}, 3, sealed.ErrChecksum},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			store := memory.New()
			if tc.wal > 0 {
				putWAL(t, store, tc.wal)
			}
			srv := newFakeServer(t, false)
			tc.setup(t, srv)
			_, err := backup.Push(context.Background(), archive.New(store, slog.New(slog.DiscardHandler)), srv, options())
			if err == nil || (tc.want != nil && !errors.Is(err, tc.want)) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
			if keys := keysUnder(context.Background(), t, store, manifest.Prefix); len(keys) != 0 {
				sort.Strings(keys)
				t.Errorf("failed backup left %v", keys)
			}
		})
	}
}

func TestWrongClusterRefused(t *testing.T) {
	store := memory.New()
	a := archive.New(store, slog.New(slog.DiscardHandler))
	if _, err := a.ClaimIdentity(context.Background(), archive.Identity{SystemIdentifier: 1, PGVersion: "15", SegmentSize: segSize}); err != nil {
		t.Fatal(err)
	}
	_, err := backup.Push(context.Background(), a, newFakeServer(t, false), options())
	if !errors.Is(err, archive.ErrWrongCluster) {
		t.Fatalf("err = %v", err)
	}
}

func TestValidID(t *testing.T) {
	for _, id := range []string{"20261126T071033Z"} {
		if err := manifest.ValidID(id); err != nil {
			t.Errorf("%s: %v", id, err)
		}
	}
	for _, id := range []string{"", "latest", "../x", "20261126T071033", "20261126T071033Z/x"} {
		if err := manifest.ValidID(id); !errors.Is(err, manifest.ErrBadID) {
			t.Errorf("%q: %v", id, err)
		}
	}
}
