package agent

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/walship/walship/archive"
	"github.com/walship/walship/spool"
)

// openSpool checks the spool is the agent's own, locks it, withdraws a dead
// agent's poll and removes what is not a verified segment.
func (g *Agent) openSpool(ctx context.Context) error {
	if err := spool.Check(g.o.Spool); err != nil {
		return err
	}
	var err error
	if g.lock, err = spool.Lock(ctx, g.o.Spool); err != nil {
		return err
	}
	spool.WithdrawStale(g.o.Spool)
	files, err := spool.Scan(g.o.Spool, g.segSize, true)
	if err != nil {
		g.lock.Close()
		return err
	}
	for _, f := range files {
		g.checkSpoolFile(f.Name.String(g.segSize))
	}
	return nil
}

// relock takes the lock again in a spool that was removed and made anew.
func (g *Agent) relock(ctx context.Context) {
	f, err := spool.Lock(ctx, g.o.Spool)
	if err != nil {
		g.o.Log.Warn("cannot lock the spool made anew", "error", err)
		return
	}
	g.lock.Close()
	g.lock = f
	g.lastState = spool.State{} // write the state into the new spool
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
	st := spool.State{Timeline: g.tli, Next: g.name(next), SegmentSize: g.segSize, SystemID: g.sysID}
	if publish && g.headOK && !g.polled.IsZero() {
		st.Head = g.name(g.head)
		st.NoHistory, st.Polled, st.Interval = g.noHistory, g.polled, archive.Duration(g.pollEvery)
	}
	if st == g.lastState {
		return
	}
	if spool.WriteState(g.o.Spool, st) == nil {
		g.lastState = st
		return
	}
	if !publish {
		// The poll could not be withdrawn: remove the state, so that
		// nothing trusts it (the next start begins from the slot).
		_ = os.Remove(filepath.Join(g.o.Spool, spool.StateFile))
	}
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
		why = archive.NotRegular(fi.Mode())
	case uint64(fi.Size()) != g.segSize:
		why = fmt.Sprintf("%d bytes, segments are %d", fi.Size(), g.segSize)
	case !spool.OwnedByMe(fi):
		why = "owned by another user"
	default:
		if err := spool.VerifyFile(p, name, g.segSize, g.sysID); err != nil {
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
