// Package fs stores an archive in a directory, local or an NFS mount.
//
// Every write goes to a temporary file, is fsynced, and only then appears
// under its final name: by link(2) for PutIfAbsent (which fails atomically if
// the name exists, also on NFS) and by rename(2) for Put; the destination
// directory is fsynced after. Temporary files are written in one directory,
// .tmp-inflight under the root (beside the destination instead when that
// directory cannot be used, or is on another file system), and are named
// .tmp-<tag>.<pid>.<random>.<host>, the tag a digest of the boot id and pid
// namespace. Names starting with ".tmp-" are never listed, served or
// accepted as keys. A writer killed mid-way leaves its temporary file; the
// next write of any walship process (at most one sweep a minute each)
// removes those whose writer is surely gone: a dead pid with this machine's
// tag, or, whoever wrote it, a file unmodified for TempMaxAge (an hour) on
// the file server's clock. Deletes (backup delete, retention apply) sweep by
// the pid rule too. Leftovers beside a destination (the fallback, or
// walship before this scheme) are not swept: remove .tmp-* files older than
// an hour by hand.
package fs

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/walship/walship/backends"
)

const (
	// Archive files are readable by the owner and the group (a backup
	// group, say), never by others.
	fileMode  = 0o640
	dirMode   = 0o750
	tmpPrefix = ".tmp-"
)

// Storage is a directory-backed store.
type Storage struct {
	root string
	// localTemp is set once a write found the temporary directory on
	// another file system than its destination.
	localTemp atomic.Bool
	sweep     sweeper
}

// New opens the archive rooted at dir, which must be an absolute path to an
// existing directory. walship never creates the root itself: if an NFS mount
// is missing, writing into the empty mount point on the local disk, or
// answering "not archived" from it, would both be lies.
func New(dir string) (*Storage, error) {
	if !filepath.IsAbs(dir) {
		return nil, backends.Permanent(fmt.Errorf("fs archive %q: path must be absolute", dir))
	}
	dir = filepath.Clean(dir)
	st, err := os.Stat(dir)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, backends.Permanent(fmt.Errorf("fs archive %q does not exist (create it, or mount it)", dir))
		}
		return nil, classify(fmt.Errorf("fs archive %q: %w", dir, err))
	}
	if !st.IsDir() {
		return nil, backends.Permanent(fmt.Errorf("fs archive %q is not a directory", dir))
	}
	return &Storage{root: dir}, nil
}

func (s *Storage) String() string { return "file://" + s.root }

func (s *Storage) path(key string) (string, error) {
	if err := backends.ValidKey(key); err != nil {
		return "", backends.Permanent(err)
	}
	for _, part := range strings.Split(key, "/") {
		if strings.HasPrefix(part, tmpPrefix) {
			return "", backends.Permanent(fmt.Errorf("%w: %q uses the temporary prefix", backends.ErrBadKey, key))
		}
	}
	return filepath.Join(s.root, filepath.FromSlash(key)), nil
}

// PutIfAbsent implements backends.Storage.
func (s *Storage) PutIfAbsent(ctx context.Context, key string, body io.ReadSeeker, size int64) error {
	return s.put(ctx, key, body, size, true)
}

// Put implements backends.Storage.
func (s *Storage) Put(ctx context.Context, key string, body io.ReadSeeker, size int64) error {
	return s.put(ctx, key, body, size, false)
}

func (s *Storage) put(ctx context.Context, key string, body io.ReadSeeker, size int64, exclusive bool) (err error) {
	if err := ctx.Err(); err != nil {
		return err
	}
	dst, err := s.path(key)
	if err != nil {
		return err
	}
	dir := filepath.Dir(dst)
	var serverNow time.Time
	defer func() {
		// After a write, or finding the object there: a run that never
		// writes (a re-push after a kill) still clears up after the kill.
		if (err == nil || errors.Is(err, backends.ErrExists)) && s.sweep.due() {
			_, _ = s.sweepTemps(serverNow) // best effort: the put itself is done
		}
	}()
	if exclusive {
		// Cheap early answer for the common re-archive case; the link
		// below is what actually decides.
		if _, err := os.Lstat(dst); err == nil {
			return fmt.Errorf("fs put %q: %w", key, backends.ErrExists)
		}
	}
	if err := os.MkdirAll(dir, dirMode); err != nil {
		return classify(fmt.Errorf("fs put %q: %w", key, err))
	}
	s.ownDirs(dir)
	serverNow, err = s.write(ctx, key, dst, body, size, exclusive, !s.localTemp.Load())
	if errors.Is(err, errCrossDevice) {
		// The temporary directory is on another file system than dst (a
		// mount inside the archive): write beside dst from now on.
		s.localTemp.Store(true)
		serverNow, err = s.write(ctx, key, dst, body, size, exclusive, false)
	}
	if err != nil {
		return err
	}
	if err := syncDir(dir); err != nil {
		return classify(fmt.Errorf("fs put %q: fsync directory: %w", key, err))
	}
	return nil
}

// publish gives the written file its final name: link(2) fails if the name
// exists (atomically, also on NFS); rename(2) replaces it.
func publish(tmp, dst string, exclusive bool) error {
	if exclusive {
		return os.Link(tmp, dst)
	}
	return os.Rename(tmp, dst)
}

var errCrossDevice = errors.New("temporary file on another file system")

// write stores body in a temporary file, fsyncs it and publishes it as
// dst. It returns the file's modification time, the file server's idea of
// now.
func (s *Storage) write(ctx context.Context, key, dst string, body io.ReadSeeker, size int64, exclusive, shared bool) (_ time.Time, err error) {
	tmp, local, err := s.createTemp(filepath.Dir(dst), shared)
	if err != nil {
		return time.Time{}, classify(fmt.Errorf("fs put %q: %w", key, err))
	}
	tmpName := tmp.Name()
	s.own(tmpName)
	defer func() {
		if tmp != nil {
			_ = tmp.Close()
		}
		if err != nil || exclusive {
			_ = os.Remove(tmpName)
		}
	}()
	if _, err := body.Seek(0, io.SeekStart); err != nil {
		return time.Time{}, fmt.Errorf("fs put %q: rewind body: %w", key, err)
	}
	n, err := io.Copy(tmp, backends.ContextReader(ctx, io.LimitReader(body, size+1)))
	if err != nil {
		return time.Time{}, classify(fmt.Errorf("fs put %q: %w", key, err))
	}
	if n != size {
		return time.Time{}, backends.Permanent(fmt.Errorf("fs put %q: body has %d bytes, expected %d", key, n, size))
	}
	if err := tmp.Sync(); err != nil {
		return time.Time{}, classify(fmt.Errorf("fs put %q: fsync: %w", key, err))
	}
	now := time.Now()
	if st, err := tmp.Stat(); err == nil {
		now = st.ModTime()
	}
	if err := tmp.Close(); err != nil {
		tmp = nil
		return time.Time{}, classify(fmt.Errorf("fs put %q: close: %w", key, err))
	}
	tmp = nil
	err = publish(tmpName, dst, exclusive)
	if errors.Is(err, fs.ErrNotExist) && !local {
		// A Delete emptied and removed dst's directory in between.
		if err = os.MkdirAll(filepath.Dir(dst), dirMode); err == nil {
			err = publish(tmpName, dst, exclusive)
		}
	}
	if errors.Is(err, fs.ErrExist) && exclusive {
		return time.Time{}, fmt.Errorf("fs put %q: %w", key, backends.ErrExists)
	}
	if errors.Is(err, syscall.EXDEV) && !local {
		return time.Time{}, errCrossDevice
	}
	if errors.Is(err, fs.ErrNotExist) {
		// Not "object not found": a put never answers that.
		return time.Time{}, fmt.Errorf("fs put %q: publish: %v", key, err) //nolint:errorlint // not wrapped, so not fs.ErrNotExist to callers

	}
	if err != nil {
		return time.Time{}, classify(fmt.Errorf("fs put %q: publish: %w", key, err))
	}
	return now, nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// Get implements backends.Storage.
func (s *Storage) Get(ctx context.Context, key string) (io.ReadCloser, backends.ObjectInfo, error) {
	if err := ctx.Err(); err != nil {
		return nil, backends.ObjectInfo{}, err
	}
	p, err := s.path(key)
	if err != nil {
		return nil, backends.ObjectInfo{}, err
	}
	// O_NONBLOCK: a FIFO under an object's name must be refused, not
	// waited on forever (it means nothing for a regular file).
	f, err := os.OpenFile(p, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, backends.ObjectInfo{}, classify(fmt.Errorf("fs get %q: %w", key, err))
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, backends.ObjectInfo{}, classify(fmt.Errorf("fs get %q: %w", key, err))
	}
	if !st.Mode().IsRegular() {
		f.Close()
		return nil, backends.ObjectInfo{}, backends.Permanent(fmt.Errorf("fs get %q: not a regular file", key))
	}
	return f, backends.ObjectInfo{Key: key, Size: st.Size(), Modified: st.ModTime()}, nil
}

// Stat implements backends.Storage.
func (s *Storage) Stat(ctx context.Context, key string) (backends.ObjectInfo, error) {
	if err := ctx.Err(); err != nil {
		return backends.ObjectInfo{}, err
	}
	p, err := s.path(key)
	if err != nil {
		return backends.ObjectInfo{}, err
	}
	st, err := os.Stat(p)
	if err != nil {
		return backends.ObjectInfo{}, classify(fmt.Errorf("fs stat %q: %w", key, err))
	}
	if !st.Mode().IsRegular() {
		return backends.ObjectInfo{}, fmt.Errorf("fs stat %q: %w", key, backends.ErrNotFound)
	}
	return backends.ObjectInfo{Key: key, Size: st.Size(), Modified: st.ModTime()}, nil
}

// List implements backends.Storage. It walks only the directory that holds
// the prefix, so listing one timeline does not read the others.
func (s *Storage) List(ctx context.Context, prefix string, fn func(backends.ObjectInfo) error) error {
	start := s.root
	if i := strings.LastIndex(prefix, "/"); i >= 0 {
		if err := backends.ValidKey(prefix[:i]); err != nil {
			return backends.Permanent(err)
		}
		start = filepath.Join(s.root, filepath.FromSlash(prefix[:i]))
	}
	var infos []backends.ObjectInfo
	err := filepath.WalkDir(start, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if p == start && errors.Is(err, fs.ErrNotExist) {
				return filepath.SkipAll // nothing stored under this prefix yet
			}
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if strings.HasPrefix(d.Name(), tmpPrefix) {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		if d.IsDir() {
			return nil
		}
		rel, err := filepath.Rel(s.root, p)
		if err != nil {
			return err
		}
		key := filepath.ToSlash(rel)
		if !strings.HasPrefix(key, prefix) || !d.Type().IsRegular() {
			return nil
		}
		st, err := d.Info()
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil // deleted while listing
			}
			return err
		}
		infos = append(infos, backends.ObjectInfo{Key: key, Size: st.Size(), Modified: st.ModTime()})
		return nil
	})
	if err != nil {
		return classify(fmt.Errorf("fs list %q: %w", prefix, err))
	}
	sort.Slice(infos, func(i, j int) bool { return infos[i].Key < infos[j].Key })
	for _, info := range infos {
		if err := fn(info); err != nil {
			return err
		}
	}
	return nil
}

// Delete implements backends.Storage.
func (s *Storage) Delete(ctx context.Context, keys ...string) error {
	dirs := map[string]bool{}
	for _, key := range keys {
		if err := ctx.Err(); err != nil {
			return err
		}
		p, err := s.path(key)
		if err != nil {
			return err
		}
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return classify(fmt.Errorf("fs delete %q: %w", key, err))
		}
		dirs[filepath.Dir(p)] = true
	}
	// Directories left empty go too (a deleted backup leaves none behind);
	// rmdir fails harmlessly on one that is not empty. Never the root.
	for d := range dirs {
		for ; d != s.root && strings.HasPrefix(d, s.root+string(filepath.Separator)); d = filepath.Dir(d) {
			if os.Remove(d) != nil {
				break
			}
		}
	}
	// Clean-up commands (backup delete, retention apply) clear a killed
	// writer's leftovers too; with no server time at hand, by pid only.
	if len(keys) > 0 && s.sweep.due() {
		_, _ = s.sweepTemps(time.Time{})
	}
	return nil
}

// classify maps "no such file" to ErrNotFound and marks errors retrying
// cannot fix.
func classify(err error) error {
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("%w (%v)", backends.ErrNotFound, err) //nolint:errorlint // one classification: ErrNotFound, not also the fs error
	case errors.Is(err, fs.ErrPermission), errors.Is(err, syscall.EROFS), errors.Is(err, syscall.ENOSPC),
		errors.Is(err, syscall.EDQUOT), errors.Is(err, syscall.ENOTDIR):
		return backends.Permanent(err)
	}
	return err
}
