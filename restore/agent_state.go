package restore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/walship/walship/archive"
	"github.com/walship/walship/segment"
)

// The agent's files in the spool. Both start with a dot, so neither is ever
// taken for WAL.
const (
	agentStateFile = ".walship-agent.json"
	// agentLockFile is held with flock(LOCK_EX) by the running agent for
	// as long as it runs; the kernel drops the lock when the process dies,
	// however it dies. fetch tests it without blocking to know whether the
	// poll published in agentStateFile has a live agent behind it.
	agentLockFile = ".walship-agent.lock"
)

// trustPolls is how many poll intervals a published poll is trusted for:
// the next poll is due after one interval, and a second one of slack covers
// a slow poll. An agent that has not polled for two intervals is hung or
// stuck (SIGSTOP, a storage call that never returns), and its answer is
// not used.
const trustPolls = 2

// ErrSpoolOwner: the spool is not the agent's own: another user owns it, or
// others may write into it.
var ErrSpoolOwner = errors.New("spool refused")

// agentState is published in the spool: where to resume, the archive's
// identity (which fetch checks spool files against), and what the last poll
// saw, which fetch uses to answer a standby's "is the next segment there
// yet?" without asking the archive.
//
// The poll (Head, NoHistory, Polled, Interval) is trusted only while the
// agent that wrote it is alive (it holds agentLockFile) and the poll is
// younger than trustPolls intervals. A clean stop withdraws it.
type agentState struct {
	Timeline    uint32    `json:"timeline"`
	Next        string    `json:"next"`
	SegmentSize uint64    `json:"segment_size,omitempty"`
	SystemID    uint64    `json:"system_identifier,omitempty"`
	Head        string    `json:"head,omitempty"`       // newest segment archived on Timeline
	NoHistory   uint32    `json:"no_history,omitempty"` // this timeline's history file was absent
	Polled      time.Time `json:"polled"`               // when Head and NoHistory were true
	Interval    Duration  `json:"interval,omitempty"`   // the wait until the poll after that one
	// Archive names the archive a prefetcher (prefetch.go) downloads
	// from; fetch takes from a prefetcher's spool only for that archive.
	// The agent leaves it empty.
	Archive string `json:"archive,omitempty"`
}

// readState reads the state the agent published in spool.
func readState(spool string) (agentState, error) {
	var st agentState
	b, err := os.ReadFile(filepath.Join(spool, agentStateFile))
	if err != nil {
		return st, err
	}
	if err := json.Unmarshal(b, &st); err != nil {
		return st, fmt.Errorf("%s: %w", agentStateFile, err)
	}
	return st, nil
}

// trusted reports whether the published poll may answer at now.
func (st agentState) trusted(now time.Time) bool {
	if st.Head == "" || st.Interval <= 0 || now.Before(st.Polled) {
		return false
	}
	return now.Sub(st.Polled) < trustPolls*time.Duration(st.Interval)
}

// CheckSpool makes sure dir can be the agent's spool: an absolute
// directory (created 0700 if missing), owned by the user the agent runs as,
// and writable by nobody else. Files the agent writes are then its owner's,
// the standby's user, which is what PostgreSQL must be able to open; and no
// one but that user (or root, which PostgreSQL never is) can put a file into
// the spool or rename one out of it. Errors wrap ErrSpoolOwner or
// archive.ErrLocal.
func CheckSpool(dir string) error {
	if !filepath.IsAbs(dir) {
		return fmt.Errorf("%w: %q: want an absolute directory", ErrSpoolOwner, dir)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("%w: spool: %w", archive.ErrLocal, err)
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("%w: spool: %w", archive.ErrLocal, err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("%w: spool %s is not a directory", archive.ErrLocal, dir)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return nil // not a Unix file system: nothing to compare
	}
	if euid := os.Geteuid(); st.Uid != uint32(euid) {
		return fmt.Errorf("%w: %s is owned by %s and this agent runs as %s: run walship agent as the spool's owner, the user the standby runs as (PostgreSQL cannot open files another user wrote 0600)",
			ErrSpoolOwner, dir, userName(st.Uid), userName(uint32(euid)))
	}
	if fi.Mode().Perm()&0o022 != 0 {
		return fmt.Errorf("%w: %s is writable by group or others (mode %04o): chmod go-w it; only the agent may write into the spool", ErrSpoolOwner, dir, fi.Mode().Perm())
	}
	return nil
}

func userName(uid uint32) string {
	id := strconv.FormatUint(uint64(uid), 10)
	if u, err := user.LookupId(id); err == nil {
		return u.Username + " (uid " + id + ")"
	}
	return "uid " + id
}

// lockSpool takes the agent's lock on the spool. A fetch testing whether
// the agent lives holds a shared lock for a moment; that is waited out.
// Another agent holding it is an error.
func lockSpool(ctx context.Context, dir string) (*os.File, error) {
	f, err := os.OpenFile(filepath.Join(dir, agentLockFile), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("%w: spool lock: %w", archive.ErrLocal, err)
	}
	for tries := 0; ; tries++ {
		err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return f, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) || tries >= 20 {
			break
		}
		select {
		case <-ctx.Done():
			err = ctx.Err()
		case <-time.After(50 * time.Millisecond):
			continue
		}
		break
	}
	f.Close()
	if errors.Is(err, syscall.EWOULDBLOCK) {
		return nil, fmt.Errorf("%w: another walship agent is running on the spool %s", archive.ErrLocal, dir)
	}
	return nil, fmt.Errorf("%w: spool lock: %w", archive.ErrLocal, err)
}

// agentAlive reports whether an agent holds the spool's lock, without
// blocking: a shared lock that can be taken means no agent holds it.
func agentAlive(spool string) bool {
	f, err := os.OpenFile(filepath.Join(spool, agentLockFile), os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return false
	}
	defer f.Close() // closing drops a lock we took
	err = syscall.Flock(int(f.Fd()), syscall.LOCK_SH|syscall.LOCK_NB)
	return errors.Is(err, syscall.EWOULDBLOCK)
}

// openSpool checks the spool is the agent's own, locks it, withdraws a dead
// agent's poll and removes what is not a verified segment.
func (g *Agent) openSpool(ctx context.Context) error {
	if err := CheckSpool(g.o.Spool); err != nil {
		return err
	}
	var err error
	if g.lock, err = lockSpool(ctx, g.o.Spool); err != nil {
		return err
	}
	withdrawStale(g.o.Spool)
	files, err := scanSpool(g.o.Spool, g.segSize, true)
	if err != nil {
		g.lock.Close()
		return err
	}
	for _, f := range files {
		g.checkSpoolFile(f.name.String(g.segSize))
	}
	return nil
}

// withdrawStale removes the poll published by an agent that died (kill -9
// leaves it): it is not this agent's, which publishes its own once it has
// polled. The rest of the state, where to resume, stays.
func withdrawStale(spool string) {
	st, err := readState(spool)
	if err != nil || st.Head == "" {
		return
	}
	st.Head, st.NoHistory, st.Polled, st.Interval = "", 0, time.Time{}, 0
	b, _ := json.Marshal(st)
	tmp := filepath.Join(spool, agentStateFile+".tmp")
	if os.WriteFile(tmp, b, 0o600) != nil || os.Rename(tmp, filepath.Join(spool, agentStateFile)) != nil {
		_ = os.Remove(tmp)
		_ = os.Remove(filepath.Join(spool, agentStateFile))
	}
}

// relock takes the lock again in a spool that was removed and made anew.
func (g *Agent) relock() {
	f, err := lockSpool(context.Background(), g.o.Spool)
	if err != nil {
		g.o.Log.Warn("cannot lock the spool made anew", "error", err)
		return
	}
	g.lock.Close()
	g.lock = f
	g.lastState = agentState{} // write the state into the new spool
}

// saveState publishes the agent's state; with publish false, without the
// poll (a clean stop withdraws it).
func (g *Agent) saveState(publish bool) {
	// Resume at the oldest download still in flight: after a kill -9 it
	// never landed, and starting past it would skip it for good.
	next := g.next
	for n := range g.inflight {
		next = min(next, n)
	}
	st := agentState{Timeline: g.tli, Next: g.name(next), SegmentSize: g.segSize, SystemID: g.sysID}
	if publish && g.headOK && !g.polled.IsZero() {
		st.Head = g.name(g.head)
		st.NoHistory, st.Polled, st.Interval = g.noHistory, g.polled, Duration(g.pollEvery)
	}
	if st == g.lastState {
		return
	}
	if writeState(g.o.Spool, st) == nil {
		g.lastState = st
		return
	}
	if !publish {
		// The poll could not be withdrawn: remove the state, so that
		// nothing trusts it (the next start begins from the slot).
		_ = os.Remove(filepath.Join(g.o.Spool, agentStateFile))
	}
}

// writeState publishes st in spool under a temporary name, then renames it.
func writeState(spool string, st agentState) error {
	b, _ := json.Marshal(st)
	tmp := filepath.Join(spool, agentStateFile+".tmp")
	err := os.WriteFile(tmp, b, 0o600)
	if err == nil {
		err = os.Rename(tmp, filepath.Join(spool, agentStateFile))
	}
	if err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("%w: spool state: %w", archive.ErrLocal, err)
	}
	return nil
}

// checkSpoolFile looks at what the spool holds under a segment's name
// before the agent counts it as placed (at start, and when it reaches that
// segment): a regular file of the segment size owned by the agent's user,
// with a page header that agrees with the name and the archive's cluster.
// Anything else is removed, so that no restore_command, not even a plain
// mv, can hand it to PostgreSQL. It reports whether a good file is there.
func (g *Agent) checkSpoolFile(name string) bool {
	p := filepath.Join(g.o.Spool, name)
	fi, err := os.Lstat(p)
	if errors.Is(err, fs.ErrNotExist) {
		return false
	}
	why := ""
	switch {
	case err != nil:
		why = err.Error()
	case !fi.Mode().IsRegular():
		why = notRegular(fi.Mode())
	case uint64(fi.Size()) != g.segSize:
		why = fmt.Sprintf("%d bytes, segments are %d", fi.Size(), g.segSize)
	case !ownedByMe(fi):
		why = "owned by another user"
	default:
		if err := verifySpoolFile(p, name, g.segSize, g.sysID); err != nil {
			why = err.Error()
		}
	}
	if why == "" {
		return true
	}
	if err := os.RemoveAll(p); err != nil {
		g.o.Log.Warn("cannot remove a file from the spool that is not a segment the agent placed", "file", name, "why", why, "error", err)
		return false
	}
	g.o.Log.Warn("removed a file from the spool that is not a segment the agent placed", "file", name, "why", why)
	return false
}

func ownedByMe(fi fs.FileInfo) bool {
	st, ok := fi.Sys().(*syscall.Stat_t)
	return !ok || st.Uid == uint32(os.Geteuid())
}

// verifySpoolFile opens a spool file as fetch would and checks its size and
// page header.
func verifySpoolFile(path, name string, segSize, sysID uint64) error {
	f, err := openSpoolFile(path)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = checkOpenSpoolFile(f, name, segSize, sysID)
	return err
}

// openSpoolFile opens without following a symbolic link and without
// blocking on a FIFO.
func openSpoolFile(path string) (*os.File, error) {
	return os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
}

// checkOpenSpoolFile checks that f is a regular file of segSize bytes whose
// page header agrees with name and the cluster sysID.
func checkOpenSpoolFile(f *os.File, name string, segSize, sysID uint64) (fs.FileInfo, error) {
	file, err := segment.ParseFile(name)
	if err != nil {
		return nil, err
	}
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, errors.New(notRegular(fi.Mode()))
	}
	if uint64(fi.Size()) != segSize {
		return nil, fmt.Errorf("%d bytes, segments are %d", fi.Size(), segSize)
	}
	var b [segment.LongHeaderSize]byte
	if _, err := io.ReadFull(io.NewSectionReader(f, 0, int64(len(b))), b[:]); err != nil {
		return nil, fmt.Errorf("read page header: %w", err)
	}
	h, err := segment.ParseHeader(b[:])
	if err == nil {
		err = segment.CheckHeader(h, file, fi.Size(), sysID)
	}
	return fi, err
}

// notRegular says what a file that is not a regular file is.
func notRegular(m fs.FileMode) string {
	kind := "special file"
	switch {
	case m.IsDir():
		kind = "directory"
	case m&fs.ModeSymlink != 0:
		kind = "symbolic link"
	case m&fs.ModeNamedPipe != 0:
		kind = "FIFO"
	case m&fs.ModeSocket != 0:
		kind = "socket"
	case m&fs.ModeDevice != 0:
		kind = "device"
	}
	return "a " + kind + ", not a regular file"
}
