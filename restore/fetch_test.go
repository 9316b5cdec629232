package restore_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/walship/walship/archive"
	"github.com/walship/walship/backends"
	"github.com/walship/walship/backends/memory"
	"github.com/walship/walship/internal/testenv"
	"github.com/walship/walship/restore"
	"github.com/walship/walship/sealed"
	"github.com/walship/walship/segment"
)

const sysID = 7300000000000000001

var (
	zstd  = sealed.Compression{Codec: sealed.CodecZstd}
	quick = restore.FetchOptions{Attempts: 3}
)

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

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
	res, err := restore.Fetch(context.Background(), a, "000000010000000000000004", dest, quick)
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
		_, err := restore.Fetch(context.Background(), a, name, filepath.Join(out, "x"), quick)
		if !errors.Is(err, backends.ErrNotFound) {
			t.Fatalf("%s: %v, want ErrNotFound", name, err)
		}
	}
	assertEmptyDir(t, out)
}

func TestFetchFromNonArchiveIsNotAbsent(t *testing.T) {
	a := archive.New(memory.New(), quiet())
	out := t.TempDir()
	_, err := restore.Fetch(context.Background(), a, "000000010000000000000005", filepath.Join(out, "x"), quick)
	if !errors.Is(err, archive.ErrNoIdentity) || errors.Is(err, backends.ErrNotFound) {
		t.Fatalf("fetch from an empty place: %v, want ErrNoIdentity and not ErrNotFound", err)
	}
}

func TestFetchCorruptedObject(t *testing.T) {
	store := memory.New()
	a, _ := pushed(t, store, "000000010000000000000004")
	store.Corrupt("wal/00000001/000000010000000000000004", 2000)
	out := t.TempDir()
	res, err := restore.Fetch(context.Background(), a, "000000010000000000000004", filepath.Join(out, "RECOVERYXLOG"), quick)
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
	_, err := restore.Fetch(context.Background(), a, "000000010000000000000005", filepath.Join(out, "x"), quick)
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
	a, _ := pushed(t, store.Storage, "000000010000000000000004")
	a = archive.New(store, quiet())
	out := t.TempDir()
	_, err := restore.Fetch(context.Background(), a, "000000010000000000000004", filepath.Join(out, "x"), quick)
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
		if _, err := restore.Fetch(context.Background(), a, name, filepath.Join(out, "x"), quick); !errors.Is(err, segment.ErrBadName) {
			t.Errorf("Fetch(%q): %v, want ErrBadName", name, err)
		}
	}
	assertEmptyDir(t, out)
}

func TestFetchUnwritableDest(t *testing.T) {
	a, _ := pushed(t, memory.New(), "000000010000000000000004")
	_, err := restore.Fetch(context.Background(), a, "000000010000000000000004", filepath.Join(t.TempDir(), "no", "such", "dir"), quick)
	if !errors.Is(err, archive.ErrLocal) {
		t.Fatalf("unwritable dest: %v, want ErrLocal", err)
	}
}

// stoppedAgentSpool returns a spool an agent filled with 3 and 4 (ahead 2)
// from an archive holding 2 to 9, and the archive.
func stoppedAgentSpool(t *testing.T) (*archive.Archive, string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	a := archive.New(memory.New(), quiet())
	slotAt3(t, a)
	spool := t.TempDir()
	ag := restore.NewAgent(a, restore.AgentOptions{Spool: spool, Slot: "dr", Ahead: 2,
		PollMin: 5 * time.Millisecond, PollMax: 20 * time.Millisecond})
	done := make(chan error, 1)
	go func() { done <- ag.Run(ctx) }()
	testenv.WaitFor(t, "two segments in the spool", 10*time.Second, func() bool { return ag.Stats().Downloads.Load() >= 2 })
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	return a, spool
}

// TestTakeFromSpoolChecksTheFile: fetch --spool takes only a regular file
// of the segment size whose header agrees with its name; anything else
// under a segment's name is left alone, and the archive serves the right
// bytes.
func TestTakeFromSpoolChecksTheFile(t *testing.T) {
	a, spool := stoppedAgentSpool(t)
	orig := t.TempDir()
	want := func(n uint64) []byte {
		b, err := os.ReadFile(testenv.WriteSegment(t, orig, seg(n), sys, nil))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	put := func(name string, b []byte) {
		if err := os.WriteFile(filepath.Join(spool, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	// 5: a directory; 6: a FIFO (a reader would block); 7: a short file;
	// 8: segment 9's content (wrong header); 9: a symbolic link to a good
	// copy elsewhere; 2: another cluster's segment.
	if err := os.Mkdir(filepath.Join(spool, seg(5)), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mkfifo(filepath.Join(spool, seg(6)), 0o600); err != nil {
		t.Fatal(err)
	}
	put(seg(7), want(7)[:64<<10])
	put(seg(8), want(9))
	if err := os.Symlink(filepath.Join(orig, seg(9)), filepath.Join(spool, seg(9))); err != nil {
		t.Fatal(err)
	}
	foreign, _ := os.ReadFile(testenv.WriteSegment(t, t.TempDir(), seg(2), sys+1, nil))
	put(seg(2), foreign)

	out := t.TempDir()
	dest := filepath.Join(out, "RECOVERYXLOG")
	for _, n := range []uint64{2, 5, 6, 7, 8, 9} {
		took, err := restore.TakeFromSpool(spool, seg(n), dest)
		if took || err == nil {
			t.Errorf("%s: took %v, error %v; want refused with a reason", seg(n), took, err)
		}
		t.Logf("%s refused: %v", seg(n), err)
		if _, err := os.Lstat(dest); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("%s: something was put at dest: %v", seg(n), err)
		}
		if _, err := os.Lstat(filepath.Join(spool, seg(n))); err != nil {
			t.Errorf("%s: a refused file left the spool: %v", seg(n), err)
		}
		// What fetch does next: the archive, with the right bytes.
		if _, err := restore.Fetch(context.Background(), a, seg(n), dest, quick); err != nil {
			t.Fatalf("%s from the archive: %v", seg(n), err)
		}
		if got, _ := os.ReadFile(dest); !bytes.Equal(got, want(n)) {
			t.Fatalf("%s: fetched bytes differ from the archived segment", seg(n))
		}
		if err := os.Remove(dest); err != nil {
			t.Fatal(err)
		}
	}
	// What the agent placed is taken, by rename.
	for _, n := range []uint64{3, 4} {
		if took, err := restore.TakeFromSpool(spool, seg(n), dest); !took || err != nil {
			t.Fatalf("%s placed by the agent: took %v, %v", seg(n), took, err)
		}
		if got, _ := os.ReadFile(dest); !bytes.Equal(got, want(n)) {
			t.Fatalf("%s: handed-over bytes differ", seg(n))
		}
		if _, err := os.Lstat(filepath.Join(spool, seg(n))); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("%s still in the spool after the hand-over", seg(n))
		}
	}
	// Not there: not taken, no error.
	if took, err := restore.TakeFromSpool(spool, seg(20), dest); took || err != nil {
		t.Fatalf("absent from the spool: %v %v", took, err)
	}
	// Without the agent's state there is nothing to check a file against.
	if err := os.Remove(filepath.Join(spool, ".walship-agent.json")); err != nil {
		t.Fatal(err)
	}
	put(seg(4), want(4))
	if took, err := restore.TakeFromSpool(spool, seg(4), filepath.Join(out, "x")); took || err == nil {
		t.Fatalf("a spool file with no agent state was taken: %v %v", took, err)
	}
}
