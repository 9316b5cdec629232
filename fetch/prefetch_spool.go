package fetch

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/walship/walship/spool"

	"github.com/walship/walship/archive"
	"github.com/walship/walship/segment"
)

// PrefetchSpool is fetch's side of a prefetcher's spool: take a segment
// the prefetcher placed, tell it what PostgreSQL asked for, and know
// whether one runs. Nothing here ever answers "absent": what the spool
// does not hand over, fetch asks the archive for.
type PrefetchSpool struct {
	Dir string
	// Archive names the archive this fetch reads; a spool a prefetcher
	// of another archive fills is not taken from.
	Archive string
}

// Prepare makes the spool directory (0700) and checks it is this user's
// own and not writable by others (spool.Check), before a prefetcher starts
// in it.
func (s PrefetchSpool) Prepare() error { return spool.Check(s.Dir) }

// Running reports whether a prefetcher holds the spool's lock.
func (s PrefetchSpool) Running() bool { return spool.Alive(s.Dir) }

// Take hands segment name over to dest when the prefetcher placed it,
// through spool.Take's checks (a regular file of the segment size whose
// page header agrees with the name and the archive's cluster). When the
// prefetcher is downloading it right now, Take waits for that download,
// at most PrefetchWait. It reports false, and leaves dest alone, when the
// spool does not hand it over; with an error when what the spool holds
// was refused. Either way the caller fetches from the archive.
func (s PrefetchSpool) Take(name, dest string) (bool, error) {
	return s.take(name, dest, PrefetchWait)
}

func (s PrefetchSpool) take(name, dest string, wait time.Duration) (bool, error) {
	f, err := segment.ParseFile(name)
	if err != nil || f.Kind != segment.KindSegment {
		return false, nil //nolint:nilerr // only segments are prefetched: the caller fetches anything else
	}
	st, err := spool.ReadState(s.Dir)
	if err != nil || st.Archive != s.Archive {
		return false, nil //nolint:nilerr // no prefetcher of this archive published its state: the caller fetches
	}
	if err := ownSpool(s.Dir); err != nil {
		return false, err
	}
	marker := filepath.Join(s.Dir, "."+name+inflightSuffix)
	deadline := time.Now().Add(wait)
	for {
		took, err := spool.Take(s.Dir, name, dest)
		if took || err != nil {
			return took, err
		}
		if _, err := os.Lstat(marker); err != nil {
			// Not (or no longer) downloading it. The download may have
			// ended between the take and this look: look once more.
			return spool.Take(s.Dir, name, dest)
		}
		if !time.Now().Before(deadline) || !spool.Alive(s.Dir) {
			return false, nil
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Note tells the prefetcher that PostgreSQL asked for name, and whether it
// got it. A prefetcher moves its window after each segment delivered, and
// stops when no note has come for its idle time. Nothing is written when
// the spool does not exist (no prefetcher was ever started there).
func (s PrefetchSpool) Note(name string, delivered bool) error {
	if _, err := os.Lstat(s.Dir); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	b, _ := json.Marshal(prefetchNote{Archive: s.Archive, Name: name, Delivered: delivered, At: time.Now().UnixNano()})
	tmp, err := os.CreateTemp(s.Dir, ".note-*")
	if err != nil {
		return fmt.Errorf("%w: prefetch note: %w", archive.ErrLocal, err)
	}
	_, err = tmp.Write(b)
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), filepath.Join(s.Dir, spool.NoteFile))
	}
	if err != nil {
		_ = os.Remove(tmp.Name())
		return fmt.Errorf("%w: prefetch note: %w", archive.ErrLocal, err)
	}
	return nil
}

// ownSpool checks, as the prefetcher's spool.Check did, that dir is a
// directory of this user that nobody else may write into: then only this
// user's prefetcher put files there.
func ownSpool(dir string) error {
	fi, err := os.Lstat(dir)
	if err != nil {
		return fmt.Errorf("prefetch spool: %w", err)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	switch {
	case !fi.IsDir():
		return fmt.Errorf("%w: prefetch spool %s is not a directory", spool.ErrOwner, dir)
	case ok && st.Uid != uint32(os.Geteuid()):
		return fmt.Errorf("%w: prefetch spool %s is owned by %s", spool.ErrOwner, dir, spool.UserName(st.Uid))
	case fi.Mode().Perm()&0o022 != 0:
		return fmt.Errorf("%w: prefetch spool %s is writable by group or others (mode %04o)", spool.ErrOwner, dir, fi.Mode().Perm())
	}
	return nil
}
