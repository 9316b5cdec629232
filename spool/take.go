package spool

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/walship/walship/archive"

	"github.com/walship/walship/segment"
)

// Take hands a segment the agent prefetched to PostgreSQL: a
// rename into dest (a copy when the spool is on another file system). It
// takes only a segment that is a regular file it can read, of the archive's
// segment size (from the state the agent publishes), whose page header
// agrees with the name and the archive's cluster. It reports false, and
// leaves dest alone, when the spool does not hold name; false and an error
// saying why when what the spool holds is not taken (the caller fetches
// from the archive instead).
func Take(spool, name, dest string) (bool, error) {
	f, err := segment.ParseFile(name)
	if err != nil {
		return false, err
	}
	if f.Kind != segment.KindSegment {
		return false, nil // the agent places only segments
	}
	src := filepath.Join(spool, name)
	lfi, err := os.Lstat(src)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err == nil && !lfi.Mode().IsRegular() {
		return false, fmt.Errorf("spool file %s not taken: %s", src, archive.NotRegular(lfi.Mode()))
	}
	st, err := ReadState(spool)
	if err == nil && (st.SegmentSize == 0 || st.SystemID == 0) {
		err = errors.New("it names no archive identity")
	}
	if err != nil {
		return false, fmt.Errorf("spool %s holds %s but the agent's state cannot be read to check it: %w", spool, name, err)
	}
	in, err := OpenFile(src)
	if err != nil {
		return false, fmt.Errorf("spool file %s not taken: %w", src, err)
	}
	defer in.Close()
	fi, err := CheckOpenFile(in, name, st.SegmentSize, st.SystemID)
	if err != nil {
		return false, fmt.Errorf("spool file %s not taken: %w", src, err)
	}
	err = os.Rename(src, dest)
	switch {
	case err == nil:
		// Renamed by name: make sure it is the file that was checked.
		if now, err := os.Lstat(dest); err != nil || !os.SameFile(fi, now) {
			_ = os.Remove(dest)
			return false, fmt.Errorf("spool file %s changed while it was taken", src)
		}
		return true, nil
	case errors.Is(err, fs.ErrNotExist):
		return false, nil // taken by someone else meanwhile
	case errors.Is(err, syscall.EXDEV):
		if err := copyInto(in, dest); err != nil {
			return false, err
		}
		_ = os.Remove(src)
		return true, nil
	}
	return false, fmt.Errorf("%w: take %s from the spool: %w", archive.ErrLocal, name, err)
}

// copyInto copies in to dest under a temporary name, then renames it.
func copyInto(in *os.File, dest string) error {
	tmp, err := CreateTemp(filepath.Dir(dest), filepath.Base(dest))
	if err != nil {
		return fmt.Errorf("%w: %w", archive.ErrLocal, err)
	}
	if _, err := io.Copy(tmp, io.NewSectionReader(in, 0, 1<<62)); err != nil {
		tmp.Close()
		os.Remove(tmp.Name())
		return fmt.Errorf("%w: %w", archive.ErrLocal, err)
	}
	if err := tmp.Close(); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("%w: %w", archive.ErrLocal, err)
	}
	if err := os.Rename(tmp.Name(), dest); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("%w: %w", archive.ErrLocal, err)
	}
	return nil
}

// CreateTemp makes the temporary file next to dest, so the final rename is
// atomic, and named so that PostgreSQL never mistakes it for WAL.
func CreateTemp(dir, base string) (*os.File, error) {
	var b [6]byte
	_, _ = rand.Read(b[:])
	name := filepath.Join(dir, "."+base+".walship-"+hex.EncodeToString(b[:]))
	return os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
}

// ScanEvery is how often a downloader with a full spool looks at it for
// files replay took.
const ScanEvery = 20 * time.Millisecond

// File is a segment waiting in the spool.
type File struct {
	Name segment.Name
	Size int64
}

// Scan lists the segments in the spool. Temporary files (dot files)
// are skipped; removeTemps deletes them.
func Scan(dir string, segSize uint64, removeTemps bool) ([]File, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("%w: read spool: %w", archive.ErrLocal, err)
	}
	var out []File
	for _, e := range ents {
		if e.Name()[0] == '.' {
			if removeTemps && !keptDotFile(e.Name()) {
				_ = os.Remove(filepath.Join(dir, e.Name()))
			}
			continue
		}
		n, err := segment.ParseName(e.Name(), segSize)
		if err != nil {
			continue
		}
		info, err := e.Info()
		if err != nil {
			continue // consumed while we looked
		}
		out = append(out, File{Name: n, Size: info.Size()})
	}
	return out, nil
}

// keptDotFile: the spool's own files, which Scan never removes as
// temporary: the agent's (or prefetcher's) state and lock, fetch's note to
// a prefetcher and the prefetcher's log.
func keptDotFile(name string) bool {
	switch name {
	case StateFile, LockFile, NoteFile, LogFile:
		return true
	}
	return false
}

// KnownAbsent answers, from the agent's last poll, whether name is surely
// not in the archive yet: a segment after the head of the timeline the
// agent follows, or the history file it just found absent. A standby asks
// for the next segment every few seconds while it waits; this answer costs
// it no archive request.
//
// The poll is trusted only while the agent that published it runs (it
// holds the spool's lock: a stopped or killed agent's poll is never used)
// and for trustPolls of its poll intervals (a hung agent's poll goes stale).
func KnownAbsent(spool, name string, now time.Time) bool {
	st, err := ReadState(spool)
	if err != nil || !st.Trusted(now) || !Alive(spool) {
		return false
	}
	f, err := segment.ParseFile(name)
	if err != nil {
		return false
	}
	switch f.Kind {
	case segment.KindHistory:
		return st.NoHistory != 0 && f.TLI == st.NoHistory
	case segment.KindSegment:
		// Only the timeline the agent follows, and only with no newer
		// timeline known to exist: then nothing past the head is there.
		// Names on one timeline sort as their positions.
		h, err := segment.ParseFile(st.Head)
		return err == nil && f.TLI == h.TLI && name > st.Head && st.NoHistory == h.TLI+1
	}
	return false
}
