package archive

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/walship/walship/backends"
	"github.com/walship/walship/segment"
)

// PushResult says what a push did.
type PushResult struct {
	File            segment.File
	Key             string
	Size            int64 // original bytes
	Stored          int64 // sealed bytes
	AlreadyArchived bool  // an identical copy was there already
	Elapsed         time.Duration
}

// maxSmallFile bounds .history and .backup files, which are a few hundred
// bytes; anything huge under such a name is not what it claims to be.
const maxSmallFile = 1 << 20

// Push archives the file at path (relative to the working directory, as
// archive_command's %p is). It returns without error only once the archive
// holds the file durably: either this call stored it, or an identical copy
// was already there (PostgreSQL re-archives after a crash). A different file
// under the same name is ErrConflict and the archive is left untouched.
func (a *Archive) Push(ctx context.Context, path string, comp segment.Compression) (PushResult, error) {
	start := time.Now()
	f, err := segment.ParseFile(filepath.Base(path))
	if err != nil {
		return PushResult{}, err
	}
	res := PushResult{File: f, Key: Key(f)}
	var segSize uint64
	raw, err := readLocal(path, f)
	if err != nil {
		return res, err
	}
	res.Size = int64(len(raw))
	tRead := time.Since(start)

	switch f.Kind {
	case segment.KindSegment, segment.KindPartial:
		h, err := segment.ParseHeader(raw)
		if err != nil {
			return res, fmt.Errorf("%s: %w", path, err)
		}
		segSize = uint64(h.SegSize)
		// Check what the file says of itself first, so that a bad file
		// cannot become an archive's identity.
		if err := segment.CheckHeader(h, f, int64(len(raw)), 0); err != nil {
			return res, fmt.Errorf("%s: %w", path, err)
		}
		id, err := a.claimIdentity(ctx, h)
		if err != nil {
			return res, err
		}
		if err := checkIdentity(id, h); err != nil {
			return res, fmt.Errorf("%s: %w", path, err)
		}
	case segment.KindHistory:
		if _, err := segment.ParseHistory(f.TLI, raw); err != nil {
			return res, fmt.Errorf("%s: %w: %v", path, segment.ErrBadHeader, err)
		}
		if err := a.requireIdentityIfAny(ctx); err != nil {
			return res, err
		}
	case segment.KindBackupLabel:
		if !bytes.Contains(raw, []byte("START WAL LOCATION:")) {
			return res, fmt.Errorf("%s: %w: not a backup history file", path, segment.ErrBadHeader)
		}
		if err := a.requireIdentityIfAny(ctx); err != nil {
			return res, err
		}
	}

	tCheck := time.Since(start)
	// While the segment compresses: the head, and whether the segment
	// before this one is in the archive (gap detection).
	type headResult struct {
		h       Head
		err     error
		prevErr error
	}
	headc := make(chan headResult, 1)
	if f.Kind == segment.KindSegment {
		go func() {
			var r headResult
			r.h, r.err = a.ReadHead(ctx, f.TLI)
			r.prevErr = backends.ErrExists // unknown: no gap
			if n, err := f.SegNo(segSize); err == nil && n > 0 && r.err == nil {
				prev := segment.Name{TLI: f.TLI, SegNo: n - 1}
				_, r.prevErr = a.store.Stat(ctx, SegmentKey(prev, segSize))
			}
			headc <- r
		}()
	} else {
		headc <- headResult{err: backends.ErrNotFound}
	}
	sealed, err := segment.Seal(raw, comp)
	if err != nil {
		return res, err
	}
	tSeal := time.Since(start)
	raw = nil // the segment is in the sealed object now; let it go
	res.Stored = sealed.Size()
	err = a.store.PutIfAbsent(ctx, res.Key, sealed.Reader(), sealed.Size())
	if errors.Is(err, backends.ErrExists) {
		if err := a.compareExisting(ctx, res.Key, sealed.Header); err != nil {
			return res, err
		}
		res.AlreadyArchived = true
		err = nil
	}
	if err != nil {
		return res, fmt.Errorf("store %s: %w", res.Key, err)
	}
	if f.Kind == segment.KindSegment {
		if hr := <-headc; hr.err == nil && !res.AlreadyArchived && errors.Is(hr.prevErr, backends.ErrNotFound) {
			a.noteGap(ctx, f, hr.h, segSize)
		}
		// Failing here fails the push: PostgreSQL retries, the segment is
		// then already archived, and the head gets its second chance.
		if err := a.advanceHead(ctx, f, !res.AlreadyArchived); err != nil {
			return res, err
		}
	}
	res.Elapsed = time.Since(start)
	a.log.Debug("push phases", "read", tRead, "checked", tCheck, "sealed", tSeal, "stored", res.Elapsed)
	return res, nil
}

// requireIdentityIfAny lets history and backup files through to an archive
// with no identity yet, but still fails if the identity cannot be read.
func (a *Archive) requireIdentityIfAny(ctx context.Context) error {
	if _, err := a.Identity(ctx); err != nil && !errors.Is(err, ErrNoIdentity) {
		return err
	}
	return nil
}

// compareExisting decides a re-push: identical (same size and SHA-256) is
// success, anything else is a conflict. Only the stored header is read.
func (a *Archive) compareExisting(ctx context.Context, key string, want segment.SealedHeader) error {
	have, unreadable, err := a.readArchivedHeader(ctx, key)
	if unreadable != nil {
		return fmt.Errorf("%w: archived %s is unreadable (%v); refusing to overwrite it", ErrConflict, key, unreadable)
	}
	if err != nil {
		return fmt.Errorf("read archived %s to compare: %w", key, err)
	}
	if have.Size != want.Size || have.SHA256 != want.SHA256 {
		return fmt.Errorf("%w: %s (archived: %d bytes, sha256 %x...; local: %d bytes, sha256 %x...)",
			ErrConflict, key, have.Size, have.SHA256[:6], want.Size, want.SHA256[:6])
	}
	return nil
}

// readLocal reads the file to push. Segments must be a valid segment size
// (the header check compares it with what the header says); small files are
// bounded. Only a regular file is opened: opening a FIFO for reading blocks
// until a writer comes, where no signal gets push out. The open is
// non-blocking in case path changes kind after the stat, and the open file
// is checked again.
func readLocal(path string, f segment.File) ([]byte, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrLocal, err)
	}
	if !st.Mode().IsRegular() {
		return nil, notRegular(path, st.Mode())
	}
	fh, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrLocal, err)
	}
	defer fh.Close()
	st, err = fh.Stat()
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrLocal, err)
	}
	if !st.Mode().IsRegular() {
		return nil, notRegular(path, st.Mode())
	}
	size := st.Size()
	switch f.Kind {
	case segment.KindSegment, segment.KindPartial:
		if size < segment.LongHeaderSize || size > segment.MaxSegmentSize {
			return nil, fmt.Errorf("%s: %w: %d bytes is no WAL segment size (truncated?)", path, segment.ErrBadHeader, size)
		}
	default:
		if size > maxSmallFile {
			return nil, fmt.Errorf("%s: %w: %d bytes is too large for a %s", path, segment.ErrBadHeader, size, f.Kind)
		}
	}
	buf := make([]byte, size)
	n, err := readFull(fh, buf)
	if err != nil {
		return nil, fmt.Errorf("%w: read %s: %v", ErrLocal, path, err)
	}
	if int64(n) != size {
		return nil, fmt.Errorf("%w: %s changed size while being read", ErrLocal, path)
	}
	return buf, nil
}

func notRegular(path string, m os.FileMode) error {
	kind := "not a regular file"
	switch {
	case m&os.ModeNamedPipe != 0:
		kind = "a named pipe (FIFO)"
	case m.IsDir():
		kind = "a directory"
	case m&os.ModeSocket != 0:
		kind = "a socket"
	case m&os.ModeCharDevice != 0:
		kind = "a character device"
	case m&os.ModeDevice != 0:
		kind = "a block device"
	}
	return fmt.Errorf("%w: %s is %s, not a regular file; refusing to read it", ErrLocal, path, kind)
}

func readFull(f *os.File, buf []byte) (int, error) {
	n := 0
	for n < len(buf) {
		m, err := f.Read(buf[n:])
		n += m
		if err != nil {
			if n == len(buf) {
				return n, nil
			}
			return n, err
		}
		if m == 0 {
			break
		}
	}
	return n, nil
}
