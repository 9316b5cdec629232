package archive_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/walship/walship/archive"
	"github.com/walship/walship/backends"
	"github.com/walship/walship/backends/memory"
	"github.com/walship/walship/internal/testenv"
	"github.com/walship/walship/sealed"
	"github.com/walship/walship/segment"
)

const sysID = 7300000000000000001

var zstd = sealed.Compression{Codec: sealed.CodecZstd}

func makeSegment(t *testing.T, dir, name string, sys uint64, mutate func([]byte)) string {
	return testenv.WriteSegment(t, dir, name, sys, mutate)
}

func quiet() *slog.Logger { return slog.New(slog.DiscardHandler) }

func TestPushIdempotentAndConflict(t *testing.T) {
	ctx := context.Background()
	store := memory.New()
	a := archive.New(store, quiet())
	dir := t.TempDir()
	p := makeSegment(t, dir, "000000010000000000000003", sysID, nil)

	res, err := a.Push(ctx, p, zstd)
	if err != nil || res.AlreadyArchived || res.Key != "wal/00000001/000000010000000000000003" {
		t.Fatalf("first push: %+v, %v", res, err)
	}
	id, err := a.Identity(ctx)
	if err != nil || id.SystemIdentifier != sysID || id.PGVersion != "15" || id.SegmentSize != 1<<20 {
		t.Fatalf("identity %+v, %v", id, err)
	}
	// PostgreSQL re-archives after a crash: identical content succeeds.
	res, err = a.Push(ctx, p, sealed.Compression{Codec: sealed.CodecGzip})
	if err != nil || !res.AlreadyArchived {
		t.Fatalf("identical re-push: %+v, %v", res, err)
	}
	before := get(t, store, res.Key)
	// Different content under the same name: refused, archive untouched.
	makeSegment(t, dir, "000000010000000000000003", sysID, func(b []byte) { b[5000] ^= 1 })
	if _, err := a.Push(ctx, p, zstd); !errors.Is(err, archive.ErrConflict) {
		t.Fatalf("different content: %v, want ErrConflict", err)
	}
	if !bytes.Equal(before, get(t, store, res.Key)) {
		t.Fatal("archive changed by a refused push")
	}
}

func TestPushRefusals(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	newArchive := func() *archive.Archive {
		a := archive.New(memory.New(), quiet())
		if _, err := a.Push(ctx, makeSegment(t, t.TempDir(), "000000010000000000000001", sysID, nil), zstd); err != nil {
			t.Fatal(err)
		}
		return a
	}
	cases := []struct {
		what string
		path func() string
		want error
	}{
		{"foreign cluster", func() string { return makeSegment(t, dir, "000000010000000000000002", sysID+1, nil) }, archive.ErrWrongCluster},
		{"other PostgreSQL version", func() string {
			return makeSegment(t, dir, "000000010000000000000002", sysID, func(b []byte) { binary.LittleEndian.PutUint16(b, 0xD113) })
		}, archive.ErrWrongCluster},
		{"truncated", func() string {
			p := makeSegment(t, dir, "000000010000000000000002", sysID, nil)
			if err := os.Truncate(p, 1<<19); err != nil {
				t.Fatal(err)
			}
			return p
		}, segment.ErrBadHeader},
		{"misnamed", func() string {
			p := makeSegment(t, dir, "000000010000000000000002", sysID, nil)
			q := filepath.Join(dir, "000000010000000000000007")
			if err := os.Rename(p, q); err != nil {
				t.Fatal(err)
			}
			return q
		}, segment.ErrBadHeader},
		{"wrong timeline", func() string {
			return makeSegment(t, dir, "000000010000000000000002", sysID, func(b []byte) { binary.LittleEndian.PutUint32(b[4:], 9) })
		}, segment.ErrBadHeader},
		{"not WAL at all", func() string {
			p := filepath.Join(dir, "000000010000000000000005")
			if err := os.WriteFile(p, make([]byte, 1<<20), 0o600); err != nil {
				t.Fatal(err)
			}
			return p
		}, segment.ErrBadHeader},
		{"hostile name", func() string { return filepath.Join(dir, "..") }, segment.ErrBadName},
		{"arbitrary name", func() string { return "/etc/passwd" }, segment.ErrBadName},
		{"missing file", func() string { return filepath.Join(dir, "000000010000000000000009") }, archive.ErrLocal},
		{"bad history", func() string {
			p := filepath.Join(dir, "00000002.history")
			if err := os.WriteFile(p, []byte("garbage\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			return p
		}, segment.ErrBadHeader},
	}
	for _, c := range cases {
		a := newArchive()
		_, err := a.Push(ctx, c.path(), zstd)
		if !errors.Is(err, c.want) {
			t.Errorf("%s: err = %v, want %v", c.what, err, c.want)
		}
		n := 0
		_ = a.Storage().List(ctx, "wal/", func(backends.ObjectInfo) error { n++; return nil })
		if n != 1 {
			t.Errorf("%s: archive holds %d segments after a refused push, want 1", c.what, n)
		}
	}
}

func TestHistoryNeverOverwritten(t *testing.T) {
	ctx := context.Background()
	a := archive.New(memory.New(), quiet())
	dir := t.TempDir()
	p := filepath.Join(dir, "00000002.history")
	write := func(s string) {
		if err := os.WriteFile(p, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("1\t0/3000158\tno recovery target specified\n")
	if _, err := a.Push(ctx, p, zstd); err != nil {
		t.Fatal(err)
	}
	if res, err := a.Push(ctx, p, zstd); err != nil || !res.AlreadyArchived {
		t.Fatalf("identical history re-push: %+v %v", res, err)
	}
	write("1\t0/4000000\tanother promotion\n")
	if _, err := a.Push(ctx, p, zstd); !errors.Is(err, archive.ErrConflict) {
		t.Fatalf("history overwrite: %v, want ErrConflict", err)
	}
}

func get(t *testing.T, s backends.Storage, key string) []byte {
	t.Helper()
	rc, _, err := s.Get(context.Background(), key)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	b, _ := io.ReadAll(rc)
	return b
}

// A FIFO (or any file that is not a regular one) named like WAL is refused
// at once: opening a FIFO for reading would block until a writer came.
func TestPushRefusesWhatIsNotARegularFile(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "000000010000000000000011")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	sub := filepath.Join(dir, "000000010000000000000012")
	if err := os.Mkdir(sub, 0o700); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "000000010000000000000013")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	// A symbolic link to a FIFO is the FIFO.
	link := filepath.Join(dir, "00000002.history")
	if err := os.Symlink(fifo, link); err != nil {
		t.Fatal(err)
	}
	for path, kind := range map[string]string{fifo: "named pipe", sub: "directory", sock: "socket", link: "named pipe"} {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		done := make(chan error, 1)
		go func() { _, err := archive.New(memory.New(), quiet()).Push(ctx, path, zstd); done <- err }()
		select {
		case err := <-done:
			if !errors.Is(err, archive.ErrLocal) || !strings.Contains(err.Error(), kind) {
				t.Errorf("push %s: %v, want a local error naming a %s", filepath.Base(path), err, kind)
			}
		case <-time.After(5 * time.Second):
			t.Errorf("push %s (a %s) still blocked after 5s", filepath.Base(path), kind)
		}
		cancel()
	}
}
