package fetch_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"

	"github.com/walship/walship/archive"
	"github.com/walship/walship/backends"
	"github.com/walship/walship/backends/memory"
	"github.com/walship/walship/fetch"
	"github.com/walship/walship/internal/testenv"
	"github.com/walship/walship/sealed"
	"github.com/walship/walship/segment"
)

const sysID = 7300000000000000001

var (
	zstd  = sealed.Compression{Codec: sealed.CodecZstd}
	quick = fetch.Options{Attempts: 3}
)

func quiet() *slog.Logger { return slog.New(slog.DiscardHandler) }

func pushed(t *testing.T, store backends.Storage, names ...string) (*archive.Archive, string) {
	t.Helper()
	a := archive.New(store, quiet())
	dir := t.TempDir()
	for _, n := range names {
		if _, err := a.Push(context.Background(), testenv.WriteSegment(t, dir, n, sysID, nil), zstd); err != nil {
			t.Fatal(err)
		}
	}
	return a, dir
}

// assertEmptyDir checks that a failed fetch left nothing behind.
func assertEmptyDir(t *testing.T, dir string) {
	t.Helper()
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		t.Errorf("left behind in %s: %s", dir, e.Name())
	}
}

func TestFetchRoundTrip(t *testing.T) {
	a, src := pushed(t, memory.New(), "000000010000000000000004")
	out := t.TempDir()
	dest := filepath.Join(out, "RECOVERYXLOG")
	res, err := fetch.Fetch(context.Background(), a, "000000010000000000000004", dest, quick)
	if err != nil || res.Size != 1<<20 {
		t.Fatalf("Fetch: %+v, %v", res, err)
	}
	want, _ := os.ReadFile(filepath.Join(src, "000000010000000000000004"))
	got, _ := os.ReadFile(dest)
	if !bytes.Equal(got, want) {
		t.Fatal("fetched bytes differ")
	}
	if ents, _ := os.ReadDir(out); len(ents) != 1 {
		t.Fatalf("dest dir holds %d entries, want only RECOVERYXLOG", len(ents))
	}
}

func TestFetchAbsentIsNotFound(t *testing.T) {
	a, _ := pushed(t, memory.New(), "000000010000000000000004")
	out := t.TempDir()
	for _, name := range []string{"000000010000000000000005", "00000002.history"} {
		_, err := fetch.Fetch(context.Background(), a, name, filepath.Join(out, "x"), quick)
		if !errors.Is(err, backends.ErrNotFound) {
			t.Fatalf("%s: %v, want ErrNotFound", name, err)
		}
	}
	assertEmptyDir(t, out)
}

func TestFetchFromNonArchiveIsNotAbsent(t *testing.T) {
	a := archive.New(memory.New(), quiet())
	out := t.TempDir()
	_, err := fetch.Fetch(context.Background(), a, "000000010000000000000005", filepath.Join(out, "x"), quick)
	if !errors.Is(err, archive.ErrNoIdentity) || errors.Is(err, backends.ErrNotFound) {
		t.Fatalf("fetch from an empty place: %v, want ErrNoIdentity and not ErrNotFound", err)
	}
}

func TestFetchCorruptedObject(t *testing.T) {
	store := memory.New()
	a, _ := pushed(t, store, "000000010000000000000004")
	store.Corrupt("wal/00000001/000000010000000000000004", 2000)
	out := t.TempDir()
	res, err := fetch.Fetch(context.Background(), a, "000000010000000000000004", filepath.Join(out, "RECOVERYXLOG"), quick)
	if !errors.Is(err, sealed.ErrChecksum) {
		t.Fatalf("corrupted object: %v, want ErrChecksum", err)
	}
	if res.Attempts != 3 {
		t.Errorf("attempts = %d, want 3 (a checksum failure may be transit damage)", res.Attempts)
	}
	assertEmptyDir(t, out)
}

func TestFetchForeignObject(t *testing.T) {
	// An object from another cluster's archive copied into this one.
	store := memory.New()
	a, _ := pushed(t, store, "000000010000000000000004")
	other := memory.New()
	oa := archive.New(other, quiet())
	if _, err := oa.Push(context.Background(), testenv.WriteSegment(t, t.TempDir(), "000000010000000000000005", sysID+7, nil), zstd); err != nil {
		t.Fatal(err)
	}
	rc, info, _ := other.Get(context.Background(), "wal/00000001/000000010000000000000005")
	body, _ := io.ReadAll(rc)
	if err := store.Put(context.Background(), info.Key, bytes.NewReader(body), int64(len(body))); err != nil {
		t.Fatal(err)
	}
	out := t.TempDir()
	_, err := fetch.Fetch(context.Background(), a, "000000010000000000000005", filepath.Join(out, "x"), quick)
	if !errors.Is(err, archive.ErrWrongCluster) {
		t.Fatalf("foreign object: %v, want ErrWrongCluster", err)
	}
	assertEmptyDir(t, out)
}

// flaky fails every Get for the segment with a transport error.
type flaky struct {
	backends.Storage
	gets atomic.Int32
}

func (f *flaky) Get(ctx context.Context, key string) (io.ReadCloser, backends.ObjectInfo, error) {
	if key == archive.IdentityKey {
		return f.Storage.Get(ctx, key)
	}
	f.gets.Add(1)
	return nil, backends.ObjectInfo{}, errors.New("connection reset by peer")
}

func TestFetchTransportFailureIsRetriedAndNotAbsent(t *testing.T) {
	store := &flaky{Storage: memory.New()}
	pushed(t, store.Storage, "000000010000000000000004")
	a := archive.New(store, quiet())
	out := t.TempDir()
	_, err := fetch.Fetch(context.Background(), a, "000000010000000000000004", filepath.Join(out, "x"), quick)
	if err == nil || errors.Is(err, backends.ErrNotFound) {
		t.Fatalf("transport failure: %v", err)
	}
	if store.gets.Load() != 3 {
		t.Errorf("%d attempts, want 3", store.gets.Load())
	}
	assertEmptyDir(t, out)
}

func TestFetchRefusesHostileNames(t *testing.T) {
	a, _ := pushed(t, memory.New(), "000000010000000000000004")
	out := t.TempDir()
	for _, name := range []string{"../identity.json", "/etc/passwd", "000000010000000000000004/../..", "identity.json", ""} {
		if _, err := fetch.Fetch(context.Background(), a, name, filepath.Join(out, "x"), quick); !errors.Is(err, segment.ErrBadName) {
			t.Errorf("Fetch(%q): %v, want ErrBadName", name, err)
		}
	}
	assertEmptyDir(t, out)
}

func TestFetchUnwritableDest(t *testing.T) {
	a, _ := pushed(t, memory.New(), "000000010000000000000004")
	_, err := fetch.Fetch(context.Background(), a, "000000010000000000000004", filepath.Join(t.TempDir(), "no", "such", "dir"), quick)
	if !errors.Is(err, archive.ErrLocal) {
		t.Fatalf("unwritable dest: %v, want ErrLocal", err)
	}
}
