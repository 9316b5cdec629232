package verify_test

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/walship/walship/archive"
	"github.com/walship/walship/backends"
	"github.com/walship/walship/backends/memory"
	"github.com/walship/walship/internal/testenv"
	"github.com/walship/walship/manifest"
	"github.com/walship/walship/sealed"
	"github.com/walship/walship/segment"
	"github.com/walship/walship/verify"
)

func TestVerify(t *testing.T) {
	ctx := context.Background()
	store := memory.New()
	a := archive.New(store, slog.New(slog.DiscardHandler))
	dir := t.TempDir()
	for n := uint64(2); n <= 7; n++ {
		name := segment.Name{TLI: 1, SegNo: n}.String(1 << 20)
		if _, err := a.Push(ctx, testenv.WriteSegment(t, dir, name, 7300000000000000003, nil), sealed.Compression{Codec: sealed.CodecZstd}); err != nil {
			t.Fatal(err)
		}
	}
	r, err := verify.Run(ctx, a, verify.Options{})
	if err != nil || len(r.Problems) != 0 || r.Checked != 6 {
		t.Fatalf("clean archive: %+v %v", r, err)
	}
	if err := store.Delete(ctx, "wal/00000001/000000010000000000000004"); err != nil {
		t.Fatal(err)
	}
	store.Corrupt("wal/00000001/000000010000000000000006", 200)
	r, _ = verify.Run(ctx, a, verify.Options{Quick: true})
	if len(r.Problems) != 1 || r.Problems[0].Kind != "gap" || !strings.Contains(r.Problems[0].Detail, "000000010000000000000004") || r.Checked != 0 {
		t.Fatalf("quick: %+v", r.Problems)
	}
	r, _ = verify.Run(ctx, a, verify.Options{})
	kinds := map[string]bool{}
	for _, p := range r.Problems {
		kinds[p.Kind] = true
	}
	if !kinds["gap"] || !kinds["checksum"] {
		t.Fatalf("full: %+v", r.Problems)
	}
}

// An incremental whose parent is gone is a "chain" problem.
func TestVerifyReportsBrokenChain(t *testing.T) {
	ctx := context.Background()
	store := memory.New()
	a := archive.New(store, slog.New(slog.DiscardHandler))
	if _, err := a.ClaimIdentity(ctx, archive.Identity{SystemIdentifier: 9, PGVersion: "17", SegmentSize: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	m := manifest.Manifest{Format: manifest.Format, ID: "20261201T000000Z", SystemIdentifier: 9, SegmentSize: 1 << 20,
		Timeline: 1, StopTimeline: 1, Type: manifest.TypeIncremental, Parent: "20261130T000000Z"}
	b, _ := json.Marshal(m)
	if err := store.Put(ctx, manifest.Key(m.ID), bytes.NewReader(b), int64(len(b))); err != nil {
		t.Fatal(err)
	}
	r, err := verify.Run(ctx, a, verify.Options{Quick: true})
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, p := range r.Problems {
		found = found || (p.Kind == "chain" && p.Key == manifest.Key(m.ID) && strings.Contains(p.Detail, m.Parent))
	}
	if !found {
		t.Errorf("no chain problem for an incremental without its parent: %+v", r.Problems)
	}
}

// faultStore is a memory store whose reads fail where a test says: onGet
// may fail a Get before it starts (or act on ctx), and the body of a key in
// cut ends with errReset after cut[key] bytes.
type faultStore struct {
	*memory.Storage
	onGet func(ctx context.Context, key string) error
	cut   map[string]int
}

// errReset is what a connection reset looks like through the S3 backend.
var errReset = errors.New("read tcp 127.0.0.1:51234->127.0.0.1:7070: read: connection reset by peer")

func (f *faultStore) Get(ctx context.Context, key string) (io.ReadCloser, backends.ObjectInfo, error) {
	if f.onGet != nil {
		if err := f.onGet(ctx, key); err != nil {
			return nil, backends.ObjectInfo{}, err
		}
	}
	rc, info, err := f.Storage.Get(ctx, key)
	if n, ok := f.cut[key]; ok && err == nil {
		return io.NopCloser(io.MultiReader(io.LimitReader(rc, int64(n)), errReader{})), info, nil
	}
	return rc, info, err
}

type errReader struct{}

func (errReader) Read([]byte) (int, error) { return 0, errReset }

// pushed is an archive of segments 2 to 7 of timeline 1 in a memory store.
func pushed(t *testing.T) *memory.Storage {
	t.Helper()
	store := memory.New()
	a := archive.New(store, slog.New(slog.DiscardHandler))
	dir := t.TempDir()
	for n := uint64(2); n <= 7; n++ {
		name := segment.Name{TLI: 1, SegNo: n}.String(1 << 20)
		if _, err := a.Push(context.Background(), testenv.WriteSegment(t, dir, name, 7300000000000000003, nil), sealed.Compression{Codec: sealed.CodecZstd}); err != nil {
			t.Fatal(err)
		}
	}
	return store
}

// A verify cut short by its context is an error with no report: a partial
// report would read as a clean archive of fewer objects.
func TestVerifyCutShortIsAnError(t *testing.T) {
	t.Run("cancelled", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		store := &faultStore{Storage: pushed(t), onGet: func(_ context.Context, key string) error {
			if strings.HasPrefix(key, "wal/") {
				cancel() // the first segment read ends the run
			}
			return nil
		}}
		r, err := verify.Run(ctx, archive.New(store, slog.New(slog.DiscardHandler)), verify.Options{Parallel: 1})
		if !errors.Is(err, context.Canceled) || r != nil {
			t.Fatalf("cancelled verify: report %+v, error %v; want no report and context.Canceled", r, err)
		}
	})
	t.Run("deadline", func(t *testing.T) {
		store := &faultStore{Storage: pushed(t), onGet: func(ctx context.Context, key string) error {
			if !strings.HasPrefix(key, "wal/") {
				return nil
			}
			<-ctx.Done() // a store that answers no segment read before the deadline
			return fmt.Errorf("s3 get %q: %w", key, ctx.Err())
		}}
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		r, err := verify.Run(ctx, archive.New(store, slog.New(slog.DiscardHandler)), verify.Options{})
		if !errors.Is(err, context.DeadlineExceeded) || r != nil {
			t.Fatalf("verify past its deadline: report %+v, error %v; want no report and context.DeadlineExceeded", r, err)
		}
	})
}

// backupOf stores backup id starting in segment 2: chunks of the given
// contents, a server manifest and manifest.json.
func backupOf(t *testing.T, store *memory.Storage, id string, chunks ...string) *manifest.Manifest {
	t.Helper()
	put := func(key, raw string) manifest.Chunk {
		s, err := sealed.Seal([]byte(raw), sealed.Compression{Codec: sealed.CodecZstd})
		if err != nil {
			t.Fatal(err)
		}
		if err := store.Put(context.Background(), key, bytes.NewReader(s.Bytes()), s.Size()); err != nil {
			t.Fatal(err)
		}
		return manifest.Chunk{Key: key, Size: int64(len(raw)), StoredSize: s.Size(), SHA256: hex.EncodeToString(s.Header.SHA256[:])}
	}
	start := segment.LSN(2<<20 + 0x28)
	m := &manifest.Manifest{Format: manifest.Format, ID: id, PGVersion: "15", SystemIdentifier: 7300000000000000003, SegmentSize: 1 << 20,
		Timeline: 1, StopTimeline: 1, StartLSN: start, StopLSN: start + 0x100,
		WALRanges: []manifest.WALRange{{Timeline: 1, Start: start, End: start + 0x100}}}
	ar := manifest.Archive{Name: "base.tar"}
	for i, c := range chunks {
		ar.Chunks = append(ar.Chunks, put(fmt.Sprintf("%s%s/base.tar.%05d", manifest.Prefix, id, i), c))
	}
	m.Archives = []manifest.Archive{ar}
	m.ServerManifest = put(manifest.ServerKey(id), `{"PostgreSQL-Backup-Manifest-Version": 1}`)
	b, _ := json.Marshal(m)
	if err := store.Put(context.Background(), manifest.Key(id), bytes.NewReader(b), int64(len(b))); err != nil {
		t.Fatal(err)
	}
	return m
}

// A read that fails (the store, the network) is "unreadable", whatever the
// key is called; only what the sealed format or the backup manifest proves
// wrong is "checksum".
func TestVerifyClassifiesReadFailures(t *testing.T) {
	const id = "20261120T000000Z"
	mem := pushed(t)
	m := backupOf(t, mem, id, "first chunk", "second chunk", "third chunk")
	// The third chunk is replaced by a sound sealed object of the same
	// size that is not the one the manifest names.
	other, err := sealed.Seal([]byte("third chunK"), sealed.Compression{Codec: sealed.CodecZstd})
	if err != nil {
		t.Fatal(err)
	}
	third := m.Archives[0].Chunks[2].Key
	if other.Size() != m.Archives[0].Chunks[2].StoredSize {
		t.Fatalf("replacement is %d bytes, want %d", other.Size(), m.Archives[0].Chunks[2].StoredSize)
	}
	if err := mem.Put(context.Background(), third, bytes.NewReader(other.Bytes()), other.Size()); err != nil {
		t.Fatal(err)
	}
	corrupt := "wal/00000001/000000010000000000000005"
	mem.Corrupt(corrupt, 200)
	first := m.Archives[0].Chunks[0].Key
	store := &faultStore{Storage: mem,
		onGet: func(_ context.Context, key string) error {
			if key == m.ServerManifest.Key {
				return fmt.Errorf("s3 get %q: %w", key, errReset)
			}
			return nil
		},
		cut: map[string]int{first: sealed.HeaderSize + 4}, // the body breaks off after its header
	}
	r, err := verify.Run(context.Background(), archive.New(store, slog.New(slog.DiscardHandler)), verify.Options{})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, p := range r.Problems {
		got[p.Key] = p.Kind
	}
	want := map[string]string{m.ServerManifest.Key: "unreadable", first: "unreadable", third: "checksum", corrupt: "checksum"}
	if len(got) != len(want) || len(r.Problems) != len(want) {
		t.Fatalf("problems %+v, want kinds %v", r.Problems, want)
	}
	for k, kind := range want {
		if got[k] != kind {
			t.Errorf("%s: kind %q, want %q (problems %+v)", k, got[k], kind, r.Problems)
		}
	}
}
