// Package fetch is the restore_command's side of walship: Run, which looks
// for a file in walship agent's spool, then the prefetcher's, then the
// archive, and answers "absent" only on the archive's word (or a live
// agent's fresh poll); Fetch, one file out of the archive into the place
// PostgreSQL names, verified end to end before it is renamed into place,
// with the one retry policy; and the prefetcher the first fetch of a
// recovery starts, which downloads the next segments into a spool (package
// spool) that the restore_command's mv and later fetches take from.
package fetch

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/walship/walship/spool"

	"github.com/walship/walship/archive"
	"github.com/walship/walship/backends"
	"github.com/walship/walship/backends/retry"
	"github.com/walship/walship/sealed"
	"github.com/walship/walship/segment"
)

// Options bound the work of one fetch.
type Options struct {
	// Attempts caps the tries of a archive.Retryable failure (a dropped
	// connection, a stalled body, a body that fails its checksum in
	// transit) below the storage's retry policy; 0 means the policy's.
	Attempts int
	// Sync flushes the file to disk before it is renamed into place. The
	// agent sets it: PostgreSQL fsyncs every file it restores, and a file
	// already clean on disk makes that fsync, which stalls replay, cheap.
	Sync bool
}

// Result says what a fetch did.
type Result struct {
	File     segment.File
	Size     int64
	Stored   int64
	Attempts int
	Elapsed  time.Duration
	Modified time.Time // when the archive stored it
}

// Fetch restores the archived file name to dest. It returns nil only after
// the whole file, decompressed and checked against its SHA-256 (and, for a
// segment, its page header and the archive's cluster), has been renamed into
// place at dest. An error wrapping backends.ErrNotFound means the archive,
// which has a valid identity, confirmed the file is absent; every other error
// means something failed and nothing was written at dest.
//
// The file is not fsynced: PostgreSQL fsyncs a restored file itself when it
// keeps it (durable_rename in KeepFileRestoredFromArchive), and a restored
// file lost in a crash is simply fetched again.
func Fetch(ctx context.Context, a *archive.Archive, name, dest string, opts Options) (Result, error) {
	start := time.Now()
	f, err := segment.ParseFile(name)
	if err != nil {
		return Result{}, err
	}
	res := Result{File: f}
	// The whole fetch (GET, read, verify, write) is one retried operation
	// under the storage's policy: at most its Attempts GETs of the file.
	res.Attempts, err = retry.Do(ctx, a.Storage(), opts.Attempts, archive.Retryable, func(ctx context.Context) error {
		return fetchOnce(ctx, a, f, dest, opts.Sync, &res)
	})
	res.Elapsed = time.Since(start)
	return res, err
}

// fetchOnce is one try of Fetch: one GET, read, verify and rename.
func fetchOnce(ctx context.Context, a *archive.Archive, f segment.File, dest string, sync bool, res *Result) error {
	key := archive.Key(f)
	rc, id, err := getWithIdentity(ctx, a, key, res)
	if err != nil {
		return err
	}
	defer rc.Close()
	sr, err := sealed.NewReader(backends.ContextReader(ctx, rc))
	if err != nil {
		return fmt.Errorf("%s: %w", key, err)
	}
	defer sr.Close()
	res.Size = sr.Header().Size
	return writeVerified(sr, f, key, dest, id.SystemIdentifier, sync, res)
}

// getWithIdentity opens the object at key and reads the archive's
// identity alongside: it is needed to check a segment's cluster, and to
// tell a real "absent" from an empty or wrong archive path.
func getWithIdentity(ctx context.Context, a *archive.Archive, key string, res *Result) (io.ReadCloser, archive.Identity, error) {
	type idResult struct {
		id  archive.Identity
		err error
	}
	idc := make(chan idResult, 1)
	go func() {
		id, err := a.Identity(ctx)
		idc <- idResult{id, err}
	}()
	rc, info, err := a.Storage().Get(ctx, key)
	idr := <-idc
	res.Modified = info.Modified
	if err != nil {
		if errors.Is(err, backends.ErrNotFound) && idr.err != nil {
			// Never say "absent" for a place that is not an archive: a
			// wrong path or an unmounted NFS directory would end a
			// recovery early.
			return nil, idr.id, idr.err
		}
		return nil, idr.id, err
	}
	if idr.err != nil {
		rc.Close()
		return nil, idr.id, idr.err
	}
	return rc, idr.id, nil
}

// writeVerified writes the decompressed object into a temporary file
// beside dest, checks a segment's page header against its name, size and
// the archive's cluster, and renames the file into place. On any failure
// nothing is left at dest or beside it.
func writeVerified(sr *sealed.Reader, f segment.File, key, dest string, sysID uint64, sync bool, res *Result) error {
	tmp, err := spool.CreateTemp(filepath.Dir(dest), filepath.Base(dest))
	if err != nil {
		return fmt.Errorf("%w: %w", archive.ErrLocal, err)
	}
	tmpName := tmp.Name()
	ok := false
	defer func() {
		if !ok {
			_ = tmp.Close()
			_ = os.Remove(tmpName)
		}
	}()
	head := &headCapture{}
	n, err := sr.WriteTo(io.MultiWriter(tmp, head))
	if err != nil {
		var pe *os.PathError
		if errors.As(err, &pe) && pe.Path == tmpName {
			return fmt.Errorf("%w: write %s: %w", archive.ErrLocal, dest, err)
		}
		if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
			return err
		}
		return fmt.Errorf("%s: %w", key, err)
	}
	res.Stored = n
	if f.Kind == segment.KindSegment || f.Kind == segment.KindPartial {
		if err := checkSegment(head.b[:], f, key, n, sysID); err != nil {
			return err
		}
	}
	if sync {
		if err := tmp.Sync(); err != nil {
			return fmt.Errorf("%w: fsync %s: %w", archive.ErrLocal, dest, err)
		}
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("%w: write %s: %w", archive.ErrLocal, dest, err)
	}
	if err := os.Rename(tmpName, dest); err != nil {
		return fmt.Errorf("%w: rename into %s: %w", archive.ErrLocal, dest, err)
	}
	ok = true
	return nil
}

// checkSegment checks a restored segment's page header against its name,
// its size n and the archive's cluster.
func checkSegment(head []byte, f segment.File, key string, n int64, sysID uint64) error {
	h, err := segment.ParseHeader(head)
	if err != nil {
		return fmt.Errorf("%s: %w", key, err)
	}
	if err := segment.CheckHeader(h, f, n, sysID); err != nil {
		if h.SysID != sysID {
			return fmt.Errorf("%s: %w: %v", key, archive.ErrWrongCluster, err) //nolint:errorlint // err may wrap segment.ErrBadName (exit 2); this must stay exit 4
		}
		return fmt.Errorf("%s: %w", key, err)
	}
	return nil
}

// headCapture keeps the first bytes written through it: the page header.
type headCapture struct {
	b [segment.LongHeaderSize]byte
	n int
}

func (h *headCapture) Write(p []byte) (int, error) {
	if h.n < len(h.b) {
		h.n += copy(h.b[h.n:], p)
	}
	return len(p), nil
}
