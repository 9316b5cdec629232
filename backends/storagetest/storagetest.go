// Package storagetest is the conformance suite every backends.Storage
// implementation runs: the memory store, the filesystem and a real
// S3-compatible server all have to pass the same tests.
package storagetest

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/walship/walship/backends"
)

// Options tunes the suite to a backend.
type Options struct {
	// LargeSize is the size of the object used to exercise large uploads
	// (S3 multipart). Zero means 8 MiB.
	LargeSize int
}

// Run runs the suite. newStorage must return an empty store each call.
func Run(t *testing.T, newStorage func(t *testing.T) backends.Storage, opts Options) {
	if opts.LargeSize == 0 {
		opts.LargeSize = 8 << 20
	}
	for _, c := range []struct {
		name string
		test func(t *testing.T, s backends.Storage)
	}{
		{"AbsentIsNotFound", absentIsNotFound},
		{"PutGetStat", putGetStat},
		{"PutIfAbsentRefusesExisting", putIfAbsentRefusesExisting},
		{"PutReplaces", putReplaces},
		{"ConcurrentPutIfAbsentHasOneWinner", concurrentPutIfAbsentHasOneWinner},
		{"ShortBodyLeavesNothing", shortBodyLeavesNothing},
		{"FailingBodyLeavesNothing", failingBodyLeavesNothing},
		{"LargeObject", func(t *testing.T, s backends.Storage) { largeObject(t, s, opts.LargeSize) }},
		{"ListPrefixSorted", listPrefixSorted},
		{"Delete", deleteKeys},
		{"HostileKeysRefused", hostileKeysRefused},
		{"CancelledContext", cancelledContext},
	} {
		t.Run(c.name, func(t *testing.T) { c.test(t, newStorage(t)) })
	}
}

// absentIsNotFound checks that an absent key is ErrNotFound to Stat and Get,
// and no error to Delete; an empty store lists nothing.
func absentIsNotFound(t *testing.T, s backends.Storage) {
	ctx := t.Context()
	if _, err := s.Stat(ctx, "wal/00000001/none"); !errors.Is(err, backends.ErrNotFound) {
		t.Fatalf("Stat absent: %v, want ErrNotFound", err)
	}
	if _, _, err := s.Get(ctx, "wal/00000001/none"); !errors.Is(err, backends.ErrNotFound) {
		t.Fatalf("Get absent: %v, want ErrNotFound", err)
	}
	if err := s.Delete(ctx, "wal/00000001/none"); err != nil {
		t.Fatalf("Delete absent: %v", err)
	}
	n := 0
	if err := s.List(ctx, "wal/", func(backends.ObjectInfo) error { n++; return nil }); err != nil || n != 0 {
		t.Fatalf("List of empty store: %d objects, %v", n, err)
	}
}

// putGetStat checks that what PutIfAbsent stored, Get returns and Stat
// describes.
func putGetStat(t *testing.T, s backends.Storage) {
	ctx := t.Context()
	data := []byte("sealed segment bytes")
	if err := s.PutIfAbsent(ctx, "a/b/c", bytes.NewReader(data), int64(len(data))); err != nil {
		t.Fatal(err)
	}
	got := mustGet(ctx, t, s, "a/b/c")
	if !bytes.Equal(got, data) {
		t.Fatalf("Get = %q", got)
	}
	info, err := s.Stat(ctx, "a/b/c")
	if err != nil || info.Size != int64(len(data)) || info.Key != "a/b/c" {
		t.Fatalf("Stat = %+v, %v", info, err)
	}
	if info.Modified.IsZero() {
		t.Fatal("Stat: zero modification time")
	}
}

// putIfAbsentRefusesExisting checks that a second PutIfAbsent of a key is
// ErrExists and changes nothing.
func putIfAbsentRefusesExisting(t *testing.T, s backends.Storage) {
	ctx := t.Context()
	first, second := []byte("first"), []byte("second, longer")
	if err := s.PutIfAbsent(ctx, "k", bytes.NewReader(first), int64(len(first))); err != nil {
		t.Fatal(err)
	}
	err := s.PutIfAbsent(ctx, "k", bytes.NewReader(second), int64(len(second)))
	if !errors.Is(err, backends.ErrExists) {
		t.Fatalf("second PutIfAbsent: %v, want ErrExists", err)
	}
	if got := mustGet(ctx, t, s, "k"); !bytes.Equal(got, first) {
		t.Fatalf("object changed to %q", got)
	}
}

// putReplaces checks that Put overwrites.
func putReplaces(t *testing.T, s backends.Storage) {
	ctx := t.Context()
	for _, v := range []string{"one", "two"} {
		if err := s.Put(ctx, "head", bytes.NewReader([]byte(v)), int64(len(v))); err != nil {
			t.Fatal(err)
		}
		if got := mustGet(ctx, t, s, "head"); string(got) != v {
			t.Fatalf("Get = %q, want %q", got, v)
		}
	}
}

// concurrentPutIfAbsentHasOneWinner checks that of concurrent PutIfAbsents
// of one key, exactly one wins.
func concurrentPutIfAbsentHasOneWinner(t *testing.T, s backends.Storage) {
	ctx := t.Context()
	var wins, exists atomic.Int32
	var wg sync.WaitGroup
	for i := range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			v := []byte(fmt.Sprintf("writer %d", i))
			err := s.PutIfAbsent(ctx, "race", bytes.NewReader(v), int64(len(v)))
			switch {
			case err == nil:
				wins.Add(1)
			case errors.Is(err, backends.ErrExists):
				exists.Add(1)
			default:
				t.Errorf("writer %d: %v", i, err)
			}
		}()
	}
	wg.Wait()
	if wins.Load() != 1 || exists.Load() != 5 {
		t.Fatalf("%d winners, %d ErrExists; want 1 and 5", wins.Load(), exists.Load())
	}
}

// shortBodyLeavesNothing checks that a body shorter than its declared size
// fails the put and leaves no object.
func shortBodyLeavesNothing(t *testing.T, s backends.Storage) {
	ctx := t.Context()
	err := s.PutIfAbsent(ctx, "short", bytes.NewReader([]byte("abc")), 10)
	if err == nil {
		t.Fatal("PutIfAbsent with a short body succeeded")
	}
	if _, err := s.Stat(ctx, "short"); !errors.Is(err, backends.ErrNotFound) {
		t.Fatalf("after failed put: Stat = %v, want ErrNotFound", err)
	}
	assertKeys(ctx, t, s, "", nil)
}

// failingBodyLeavesNothing checks that a body that fails mid-way fails the
// put and leaves no object.
func failingBodyLeavesNothing(t *testing.T, s backends.Storage) {
	ctx := t.Context()
	body := &failingReader{data: make([]byte, 1<<20), failAt: 1 << 19}
	if err := s.PutIfAbsent(ctx, "broken", body, 1<<20); err == nil {
		t.Fatal("PutIfAbsent with a failing body succeeded")
	}
	assertKeys(ctx, t, s, "", nil)
}

// largeObject checks that an object of size bytes (S3: multipart)
// round-trips and is refused a second time.
func largeObject(t *testing.T, s backends.Storage, size int) {
	ctx := t.Context()
	data := make([]byte, size)
	_, _ = rand.Read(data)
	if err := s.PutIfAbsent(ctx, "big", bytes.NewReader(data), int64(len(data))); err != nil {
		t.Fatal(err)
	}
	if got := mustGet(ctx, t, s, "big"); !bytes.Equal(got, data) {
		t.Fatal("large object differs after round trip")
	}
	if err := s.PutIfAbsent(ctx, "big", bytes.NewReader(data), int64(len(data))); !errors.Is(err, backends.ErrExists) {
		t.Fatalf("second large PutIfAbsent: %v, want ErrExists", err)
	}
}

// listPrefixSorted checks that List walks the keys under a prefix in order,
// with their sizes, and stops at the callback's error.
func listPrefixSorted(t *testing.T, s backends.Storage) {
	ctx := t.Context()
	keys := []string{"wal/00000002/b", "wal/00000001/c", "wal/00000001/a", "history/00000002.history", "walx", "identity"}
	for _, k := range keys {
		put(ctx, t, s, k, k)
	}
	assertKeys(ctx, t, s, "wal/", []string{"wal/00000001/a", "wal/00000001/c", "wal/00000002/b"})
	assertKeys(ctx, t, s, "wal/00000001/", []string{"wal/00000001/a", "wal/00000001/c"})
	assertKeys(ctx, t, s, "wal", []string{"wal/00000001/a", "wal/00000001/c", "wal/00000002/b", "walx"})
	assertKeys(ctx, t, s, "nothing/", nil)
	var sizes int64
	_ = s.List(ctx, "wal/00000001/", func(o backends.ObjectInfo) error { sizes += o.Size; return nil })
	if sizes != int64(len("wal/00000001/a")+len("wal/00000001/c")) {
		t.Fatalf("listed sizes sum to %d", sizes)
	}
	stop := errors.New("stop")
	n := 0
	err := s.List(ctx, "", func(backends.ObjectInfo) error { n++; return stop })
	if !errors.Is(err, stop) || n != 1 {
		t.Fatalf("callback error: List returned %v after %d calls", err, n)
	}
}

// deleteKeys checks that Delete removes the keys named and ignores absent
// ones.
func deleteKeys(t *testing.T, s backends.Storage) {
	ctx := t.Context()
	put(ctx, t, s, "x/1", "1")
	put(ctx, t, s, "x/2", "2")
	put(ctx, t, s, "x/3", "3")
	if err := s.Delete(ctx, "x/1", "x/3", "x/absent"); err != nil {
		t.Fatal(err)
	}
	assertKeys(ctx, t, s, "x/", []string{"x/2"})
}

// hostileKeysRefused checks that keys that could escape the store or alias
// another are refused, not reported absent.
func hostileKeysRefused(t *testing.T, s backends.Storage) {
	ctx := t.Context()
	for _, k := range []string{"", "/etc/passwd", "../x", "a/../../b", "a//b", "./a", "a/", "a\\b", "a\x00b"} {
		if err := s.PutIfAbsent(ctx, k, bytes.NewReader([]byte("x")), 1); err == nil {
			t.Errorf("PutIfAbsent(%q) accepted", k)
		}
		if _, _, err := s.Get(ctx, k); err == nil || errors.Is(err, backends.ErrNotFound) {
			t.Errorf("Get(%q) = %v, want a key error (not ErrNotFound)", k, err)
		}
	}
}

// cancelledContext checks that a cancelled context fails every call and
// leaves nothing behind.
func cancelledContext(t *testing.T, s backends.Storage) {
	ctx := t.Context()
	put(ctx, t, s, "c/1", "1")
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, _, err := s.Get(cctx, "c/1"); err == nil || errors.Is(err, backends.ErrNotFound) {
		t.Errorf("Get with cancelled context: %v", err)
	}
	if err := s.PutIfAbsent(cctx, "c/2", bytes.NewReader([]byte("2")), 1); err == nil {
		t.Error("PutIfAbsent with cancelled context succeeded")
	}
	if err := s.List(cctx, "c/", func(backends.ObjectInfo) error { return nil }); err == nil {
		t.Error("List with cancelled context succeeded")
	}
	if _, err := s.Stat(ctx, "c/2"); !errors.Is(err, backends.ErrNotFound) {
		t.Errorf("cancelled put left an object: %v", err)
	}
}

func put(ctx context.Context, t *testing.T, s backends.Storage, key, v string) {
	t.Helper()
	if err := s.PutIfAbsent(ctx, key, bytes.NewReader([]byte(v)), int64(len(v))); err != nil {
		t.Fatalf("put %q: %v", key, err)
	}
}

func mustGet(ctx context.Context, t *testing.T, s backends.Storage, key string) []byte {
	t.Helper()
	rc, _, err := s.Get(ctx, key)
	if err != nil {
		t.Fatalf("Get %q: %v", key, err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatalf("read %q: %v", key, err)
	}
	return b
}

func assertKeys(ctx context.Context, t *testing.T, s backends.Storage, prefix string, want []string) {
	t.Helper()
	var got []string
	if err := s.List(ctx, prefix, func(o backends.ObjectInfo) error {
		got = append(got, o.Key)
		return nil
	}); err != nil {
		t.Fatalf("List %q: %v", prefix, err)
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("List %q = %v, want %v", prefix, got, want)
	}
}

// failingReader returns an error after failAt bytes.
type failingReader struct {
	data   []byte
	off    int
	failAt int
}

func (f *failingReader) Read(p []byte) (int, error) {
	if f.off >= f.failAt {
		return 0, errors.New("disk read error")
	}
	n := copy(p, f.data[f.off:min(len(f.data), f.failAt)])
	f.off += n
	return n, nil
}

func (f *failingReader) Seek(off int64, whence int) (int64, error) {
	if whence != io.SeekStart {
		return 0, errors.New("only SeekStart")
	}
	f.off = int(off)
	return off, nil
}
