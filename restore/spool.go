package restore

import (
	"encoding/json"
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

// TakeFromSpool hands a file the agent prefetched to PostgreSQL: a rename
// into dest (a copy when the spool is on another file system). It reports
// false, and does nothing, when the spool does not hold name.
func TakeFromSpool(spool, name, dest string) (bool, error) {
	if _, err := segment.ParseFile(name); err != nil {
		return false, err
	}
	src := filepath.Join(spool, name)
	err := os.Rename(src, dest)
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, fs.ErrNotExist):
		return false, nil
	case errors.Is(err, syscall.EXDEV):
		if err := copyInto(src, dest); err != nil {
			return false, err
		}
		_ = os.Remove(src)
		return true, nil
	}
	return false, fmt.Errorf("%w: take %s from the spool: %w", archive.ErrLocal, name, err)
}

// copyInto copies src to dest under a temporary name, then renames it.
func copyInto(src, dest string) error {
	in, err := os.Open(src)
	if errors.Is(err, fs.ErrNotExist) {
		return err
	}
	if err != nil {
		return fmt.Errorf("%w: %w", archive.ErrLocal, err)
	}
	defer in.Close()
	tmp, err := createTemp(filepath.Dir(dest), filepath.Base(dest))
	if err != nil {
		return fmt.Errorf("%w: %w", archive.ErrLocal, err)
	}
	if _, err := io.Copy(tmp, in); err != nil {
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

// spoolFile is a segment waiting in the spool.
type spoolFile struct {
	name segment.Name
	size int64
}

// scanSpool lists the segments in the spool. Temporary files (dot files)
// are skipped; removeTemps deletes them.
func scanSpool(dir string, segSize uint64, removeTemps bool) ([]spoolFile, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("%w: read spool: %w", archive.ErrLocal, err)
	}
	var out []spoolFile
	for _, e := range ents {
		if e.Name()[0] == '.' {
			if removeTemps && e.Name() != agentStateFile {
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
		out = append(out, spoolFile{name: n, size: info.Size()})
	}
	return out, nil
}

// KnownAbsent answers, from the agent's last poll, whether name is surely
// not in the archive yet: a segment after the head of the timeline the
// agent follows, or the history file it just found absent. Only a fresh
// poll counts. A standby asks for the next segment every few seconds while
// it waits; this answer costs it no archive request.
func KnownAbsent(spool, name string, now time.Time) bool {
	b, err := os.ReadFile(filepath.Join(spool, agentStateFile))
	if err != nil {
		return false
	}
	var st agentState
	if json.Unmarshal(b, &st) != nil || st.Head == "" || now.Sub(st.Polled) > time.Duration(st.Fresh) || now.Before(st.Polled) {
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
