package fs_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/walship/walship/backends"
	"github.com/walship/walship/backends/fs"
	"github.com/walship/walship/backends/storagetest"
)

func TestConformance(t *testing.T) {
	storagetest.Run(t, func(t *testing.T) backends.Storage {
		s, err := fs.New(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		return s
	}, storagetest.Options{})
}

func TestRootMustExist(t *testing.T) {
	if _, err := fs.New(filepath.Join(t.TempDir(), "not-mounted")); err == nil || !backends.IsPermanent(err) {
		t.Fatalf("New on a missing directory: %v, want a permanent error", err)
	}
	if _, err := fs.New("relative/dir"); err == nil {
		t.Fatal("relative path accepted")
	}
}

func TestFilesAreNotWorldReadableAndNoTempLeft(t *testing.T) {
	dir := t.TempDir()
	s, _ := fs.New(dir)
	ctx := context.Background()
	if err := s.PutIfAbsent(ctx, "wal/00000001/x", bytes.NewReader([]byte("x")), 1); err != nil {
		t.Fatal(err)
	}
	if err := s.Put(ctx, "head", bytes.NewReader([]byte("h")), 1); err != nil {
		t.Fatal(err)
	}
	_ = s.PutIfAbsent(ctx, "wal/00000001/y", bytes.NewReader([]byte("short")), 99)
	err := filepath.Walk(dir, func(p string, info os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		if p != dir && info.Mode().Perm()&0o007 != 0 {
			t.Errorf("%s is accessible by others: %v", p, info.Mode())
		}
		if strings.HasPrefix(info.Name(), ".tmp-") && !(info.IsDir() && p == filepath.Join(dir, ".tmp-inflight")) {
			t.Errorf("temporary file left behind: %s", p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// A temporary file left by a killed process is never listed or served.
func TestStaleTempIsInvisible(t *testing.T) {
	dir := t.TempDir()
	s, _ := fs.New(dir)
	if err := os.MkdirAll(filepath.Join(dir, "wal"), 0o750); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "wal", ".tmp-deadbeef"), []byte("half"), 0o600); err != nil {
		t.Fatal(err)
	}
	n := 0
	_ = s.List(context.Background(), "", func(backends.ObjectInfo) error { n++; return nil })
	if n != 0 {
		t.Fatalf("listed %d objects, want 0", n)
	}
	if _, _, err := s.Get(context.Background(), "wal/.tmp-deadbeef"); err == nil {
		t.Fatal("temporary file served")
	}
}

func TestDeleteRemovesEmptiedDirectories(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	s, err := fs.New(root)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"backups/a/x.1", "backups/a/x.2", "backups/b/y", "top"} {
		if err := s.PutIfAbsent(ctx, k, bytes.NewReader([]byte("v")), 1); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Delete(ctx, "backups/a/x.1", "backups/a/x.2"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "backups", "a")); !os.IsNotExist(err) {
		t.Errorf("emptied directory backups/a remains (%v)", err)
	}
	if _, err := os.Stat(filepath.Join(root, "backups", "b", "y")); err != nil {
		t.Errorf("unrelated object gone: %v", err)
	}
	if err := s.Delete(ctx, "backups/b/y", "top"); err != nil {
		t.Fatal(err)
	}
	if ents, _ := os.ReadDir(root); len(ents) != 1 || ents[0].Name() != ".tmp-inflight" {
		t.Errorf("root should hold only the temporary directory, has %v", ents)
	}
	if _, err := os.Stat(root); err != nil {
		t.Errorf("the root itself must stay: %v", err)
	}
	// A put into a directory a delete just removed still works.
	if err := s.PutIfAbsent(ctx, "backups/a/x.3", bytes.NewReader([]byte("v")), 1); err != nil {
		t.Fatal(err)
	}
}

// Run as root against an archive someone else owns (PostgreSQL's), what
// walship writes is that owner's: a root slot advance must not leave a
// file the postgres user's agent cannot read or replace.
func TestRootWritesAreTheArchiveOwners(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (CI runs as root)")
	}
	root := t.TempDir()
	const uid, gid = 4242, 4243
	if err := os.Chown(root, uid, gid); err != nil {
		t.Fatal(err)
	}
	s, err := fs.New(root)
	if err != nil {
		t.Fatal(err)
	}
	body := []byte(`{"name":"dr1"}`)
	if err := s.Put(context.Background(), "slots/deep/dr1.json", bytes.NewReader(body), int64(len(body))); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"slots", "slots/deep", "slots/deep/dr1.json"} {
		st, err := os.Lstat(filepath.Join(root, p))
		if err != nil {
			t.Fatal(err)
		}
		if sys := st.Sys().(*syscall.Stat_t); sys.Uid != uid || sys.Gid != gid {
			t.Errorf("%s owned by %d:%d, want the archive's owner %d:%d", p, sys.Uid, sys.Gid, uid, gid)
		}
	}
}
