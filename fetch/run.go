package fetch

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/walship/walship/archive"
	"github.com/walship/walship/backends"
	"github.com/walship/walship/segment"
	"github.com/walship/walship/spool"
)

// Plan says where one restore_command fetch looks for its file before the
// archive, and what it does after a download from the archive.
type Plan struct {
	// Spool is walship agent's spool, taken from first; "" for none.
	Spool string
	// ArchiveRecovery: the server runs a point-in-time recovery, where
	// "absent" ends recovery, so the agent's last poll never answers it.
	ArchiveRecovery bool
	// Prefetch is the prefetcher's spool, nil for none: taken from after
	// the agent's, told what each fetch got and, after a segment came
	// from the archive, started on when no prefetcher runs.
	Prefetch *PrefetchSpool
	// Spawn starts a detached prefetcher on the spool, which Run has
	// prepared and told where to start. The caller's: it is a process.
	Spawn func(PrefetchSpool) error
	Log   *slog.Logger
}

// Source is where a fetched file came from.
type Source int

// The places a file comes from.
const (
	FromArchive Source = iota
	FromAgentSpool
	FromPrefetchSpool
)

// Status is how a fetch ended.
type Status int

const (
	// Delivered means the complete, verified file is at dest.
	Delivered Status = iota
	// Absent means the archive, or a live agent's last poll, confirmed
	// that the file is not archived.
	Absent
	// Failed is anything else; Run's error says what.
	Failed
)

// Outcome is what Run did.
type Outcome struct {
	Status Status
	Source Source
	// Result is the archive fetch's, when the file came from the archive.
	Result Result
}

// Run is walship fetch: the file name at dest from walship agent's spool,
// else from the prefetcher's, else from the archive, which open opens only
// when it is needed (a file taken from a spool costs no storage client).
// Only the archive's own not-found, or the last poll of an agent that
// still runs outside a point-in-time recovery, makes it answer Absent.
// Anything wrong with a spool falls back to the archive. Run logs what it
// delivered; a failure it returns, with Status Failed.
func Run(ctx context.Context, open func(context.Context) (*archive.Archive, error), name, dest string, p Plan) (Outcome, error) {
	if p.Log == nil {
		p.Log = slog.New(slog.DiscardHandler)
	}
	if p.Spool != "" {
		if out, done := p.fromAgentSpool(name, dest); done {
			return out, nil
		}
	}
	if pf := p.Prefetch; pf != nil {
		start := time.Now()
		took, err := pf.Take(name, dest)
		if took {
			p.note(name, true)
			p.Log.Info("fetched from the prefetch spool", "file", name, "ms", time.Since(start).Milliseconds())
			return Outcome{Status: Delivered, Source: FromPrefetchSpool}, nil
		}
		if err != nil {
			p.Log.Warn("prefetch spool file not taken; fetching from the archive", "error", err)
		}
	}
	return p.fromArchive(ctx, open, name, dest)
}

// fromAgentSpool takes name from walship agent's spool. It reports done
// when Run has its answer: the file, or absent per a live agent's poll.
func (p Plan) fromAgentSpool(name, dest string) (Outcome, bool) {
	// The agent verified the file when it placed it, and spool.Take
	// checks it again (a regular file of the segment size with a page
	// header for this name): a rename hands it over.
	start := time.Now()
	took, err := spool.Take(p.Spool, name, dest)
	if took {
		p.Log.Info("fetched from spool", "file", name, "ms", time.Since(start).Milliseconds())
		return Outcome{Status: Delivered, Source: FromAgentSpool}, true
	}
	if err != nil {
		p.Log.Warn("spool unusable; fetching from the archive", "error", err)
	}
	// A waiting standby asks for the next file every few seconds; the
	// agent's last poll answers without a request.
	if !p.ArchiveRecovery && spool.KnownAbsent(p.Spool, name, time.Now()) {
		p.Log.Debug("not in archive (per the agent's last poll)", "file", name)
		return Outcome{Status: Absent, Source: FromAgentSpool}, true
	}
	return Outcome{}, false
}

// fromArchive fetches name from the archive itself: the only place whose
// not-found makes Run answer Absent. With a prefetch spool, it tells the
// prefetcher what happened and, after a segment, starts one if none runs.
func (p Plan) fromArchive(ctx context.Context, open func(context.Context) (*archive.Archive, error), name, dest string) (Outcome, error) {
	a, err := open(ctx)
	if err != nil {
		return Outcome{Status: Failed}, err
	}
	res, err := Fetch(ctx, a, name, dest, Options{})
	if pf := p.Prefetch; pf != nil {
		p.note(name, err == nil)
		if err == nil && res.File.Kind == segment.KindSegment && !pf.Running() {
			p.startPrefetcher(name)
		}
	}
	out := Outcome{Status: Delivered, Source: FromArchive, Result: res}
	switch {
	case err == nil:
		p.Log.Info("fetched", "file", name, "bytes", res.Size, "attempts", res.Attempts, "ms", res.Elapsed.Milliseconds())
		return out, nil
	case IsAbsent(err):
		p.Log.Info("not in archive", "file", name)
		out.Status = Absent
		return out, nil
	}
	out.Status = Failed
	return out, fmt.Errorf("fetch %s: %w", name, err)
}

// IsAbsent reports whether an error of Fetch means the archive, which has
// a valid identity, confirmed the file is not there.
func IsAbsent(err error) bool {
	return errors.Is(err, backends.ErrNotFound) && !errors.Is(err, archive.ErrNoIdentity)
}

func (p Plan) note(name string, delivered bool) {
	if err := p.Prefetch.Note(name, delivered); err != nil {
		p.Log.Warn("cannot tell the prefetcher", "error", err)
	}
}

// startPrefetcher prepares the prefetch spool, tells it to start after
// the segment just fetched and spawns a prefetcher on it. A failure is
// logged: the fetch itself has succeeded.
func (p Plan) startPrefetcher(after string) {
	err := p.Prefetch.Prepare()
	if err == nil {
		p.note(after, true) // the spool exists now: where to start
		if p.Spawn == nil {
			err = errors.New("no way to start one")
		} else {
			err = p.Spawn(*p.Prefetch)
		}
	}
	if err != nil {
		p.Log.Warn("prefetcher not started; fetching each file from the archive", "error", err)
		return
	}
	p.Log.Debug("prefetcher started", "spool", p.Prefetch.Dir, "after", after)
}
