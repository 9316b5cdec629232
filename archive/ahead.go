package archive

import (
	"context"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/walship/walship/sealed"
	"github.com/walship/walship/segment"
)

// AheadOptions says how a push takes the next ready segments along.
type AheadOptions struct {
	Compression sealed.Compression
	// Parallel is how many segments are in flight at once, each read,
	// sealed and stored by its own worker; 1 or less pushes only the file
	// asked for, as Push does.
	Parallel int
	// Window is the most segments one call pushes, the one asked for
	// included; 0 means WindowPerWorker × Parallel.
	Window int
	// Location names the archive as it is configured (URL, endpoint). It
	// is recorded in every proof, and a proof made for another location
	// is never trusted. Empty: nothing is pushed ahead.
	Location string
}

// WindowPerWorker sets the default window: a call pushes at most this many
// segments per worker, so a call lasts about as long as sealing 8 segments
// on one core (a quarter of a second for 16 MiB segments), whatever the
// parallelism. More would delay PostgreSQL's knowledge that the first one
// is archived for little gain; fewer would pay the fixed cost of a call
// (the process, the identity, the head) for too few segments
// (docs/PUSH.md has the measurements).
const WindowPerWorker = 8

// MaxParallel bounds Parallel.
const MaxParallel = 64

// PushAhead archives the file at path like Push and, when it is a segment
// and Parallel > 1, in the same call the segments after it on its
// timeline that PostgreSQL has already marked ready
// (archive_status/<name>.ready, consecutive, in WAL order), up to the
// window, Parallel at a time. The error and result are those of path's
// file alone: a segment that could not go ahead is left to PostgreSQL's
// own call for it. For each segment that went ahead a proof is written
// (proof.go) once the call is about to succeed, so that the call for it
// returns at once (TakeProof). History, partial and backup history files
// never go ahead and never take others along.
func (a *Archive) PushAhead(ctx context.Context, path string, o AheadOptions) (PushResult, error) {
	start := time.Now()
	f, err := segment.ParseFile(filepath.Base(path))
	if err != nil {
		return PushResult{}, err
	}
	if f.Kind != segment.KindSegment || o.Parallel <= 1 || o.Location == "" {
		return a.Push(ctx, path, o.Compression)
	}
	first, err := a.prepare(ctx, path, f)
	if err != nil {
		return PushResult{File: f, Key: Key(f)}, err
	}
	dir := filepath.Dir(path)
	items := a.readyAhead(dir, first, o)
	if len(items) == 1 {
		// Nothing ready beyond it (the archiver keeps up): one segment,
		// its frames compressed in parallel.
		defer first.release()
		return a.pushPrepared(ctx, start, first, o.Compression)
	}
	return a.pushBatch(ctx, start, dir, items, o)
}

// aheadItem is one segment of a batch and what became of it.
type aheadItem struct {
	file   segment.File
	path   string
	p      *pending // read and checked (the first one before the batch)
	proven bool     // an earlier call's proof vouches for it: nothing to do
	// outcome
	err     error
	already bool // an identical copy was archived already
	hdr     sealed.Header
	stored  int64
	stamp   fileStamp
	stamped bool
}

// readyAhead lists the batch: first, then the segments after it that have
// a .ready file, consecutive, up to the window. Proofs no longer of use are
// swept first; a segment an earlier call's proof still vouches for is in
// the batch as proven, so the head covers it, but is not pushed again.
func (a *Archive) readyAhead(dir string, first *pending, o AheadOptions) []*aheadItem {
	items := []*aheadItem{{file: first.file, path: first.path, p: first}}
	if !first.stamped {
		return items // no file stamp on this platform: no proofs
	}
	window := o.Window
	if window <= 0 {
		window = WindowPerWorker * o.Parallel
	}
	valid := sweepProofs(dir, o.Location, a.now())
	n, err := first.file.SegNo(first.segSize)
	if err != nil {
		return items
	}
	for k := uint64(1); k < uint64(window); k++ {
		name := segment.Name{TLI: first.file.TLI, SegNo: n + k}.String(first.segSize)
		if !exists(readyPath(dir, name)) {
			break
		}
		f, err := segment.ParseFile(name)
		if err != nil {
			break
		}
		_, proven := valid[name]
		items = append(items, &aheadItem{file: f, path: filepath.Join(dir, name), proven: proven})
	}
	if len(items) > 1 {
		if err := os.MkdirAll(proofDir(dir), 0o700); err != nil {
			a.log.Warn("cannot keep proofs of segments pushed ahead; pushing one segment per call", "error", err)
			return items[:1]
		}
	}
	return items
}

// pushBatch pushes items with Parallel workers, each sealing one segment
// at a time with its own reused encoder and buffer, in WAL order. If the
// first fails the rest is cancelled. Then the head is advanced over the
// run of segments from the first that are all in the archive, and the
// proofs are written.
func (a *Archive) pushBatch(ctx context.Context, start time.Time, dir string, items []*aheadItem, o AheadOptions) (PushResult, error) {
	first := items[0]
	f, segSize := first.file, first.p.segSize
	res := PushResult{File: f, Key: first.p.key, Size: int64(len(first.p.raw))}
	headc := a.lookBehind(ctx, f, segSize)
	work, cancel := context.WithCancel(ctx)
	defer cancel()
	next := make(chan *aheadItem, len(items))
	for _, it := range items {
		if !it.proven {
			next <- it
		}
	}
	close(next)
	firstDone := make(chan struct{})
	go a.limitAhead(work, cancel, firstDone)
	var wg sync.WaitGroup
	for range min(o.Parallel, len(next)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sealer, err := sealed.NewSealer(o.Compression)
			for it := range next {
				if err != nil {
					it.err = err
				} else {
					a.pushItem(work, sealer, it)
				}
				if it.p != nil {
					it.p.release()
					it.p = nil
				}
				if it == first {
					if it.err != nil {
						cancel()
					}
					close(firstDone)
				}
			}
		}()
	}
	wg.Wait()
	if first.err != nil {
		return res, first.err
	}
	res.Stored, res.AlreadyArchived = first.stored, first.already
	last := 0
	for i := 1; i < len(items) && (items[i].proven || items[i].err == nil); i++ {
		last = i
	}
	lastFresh := !items[last].proven && !items[last].already
	if err := a.finishSegments(ctx, f, items[last].file, segSize, headc, first.already, lastFresh); err != nil {
		return res, err
	}
	res.Ahead = a.recordAhead(ctx, dir, items[1:], o.Location)
	res.Elapsed = time.Since(start)
	a.log.Debug("push ahead", "window", len(items), "workers", min(o.Parallel, len(items)), "ahead", res.Ahead,
		"head", items[last].file.String(), "ms", res.Elapsed.Milliseconds())
	return res, nil
}

// aheadBudget bounds the look-ahead once %p itself is stored: segments
// still in flight then are cancelled (their own calls push them), so a
// slow or stalled PUT of a later segment never costs %p its status 0.
const aheadBudget = 60 * time.Second

// limitAhead cancels the batch's work aheadBudget after %p is done, or
// sooner when the command's deadline is near: half the time left then,
// so that the head update and the proofs still fit.
func (a *Archive) limitAhead(work context.Context, cancel context.CancelFunc, firstDone <-chan struct{}) {
	select {
	case <-firstDone:
	case <-work.Done():
		return
	}
	budget := aheadBudget
	if dl, ok := work.Deadline(); ok {
		budget = min(budget, time.Until(dl)/2)
	}
	t := time.NewTimer(budget)
	defer t.Stop()
	select {
	case <-t.C:
		cancel()
	case <-work.Done():
	}
}

// pushItem reads (unless read already), checks, seals and stores one
// segment of a batch.
func (a *Archive) pushItem(ctx context.Context, sealer *sealed.Sealer, it *aheadItem) {
	if it.p == nil {
		if it.err = ctx.Err(); it.err != nil {
			return
		}
		if it.p, it.err = a.prepare(ctx, it.path, it.file); it.err != nil {
			return
		}
	}
	sealed, err := sealer.Seal(it.p.raw)
	if err != nil {
		it.err = err
		return
	}
	it.hdr, it.stored, it.stamp, it.stamped = sealed.Header, sealed.Size(), it.p.stamp, it.p.stamped
	it.already, it.err = a.storeSealed(ctx, it.p.key, sealed)
}

// recordAhead writes a proof for every segment that went ahead and is
// durable in the archive, then fsyncs the proof directory once. It returns
// how many segments went ahead. A proof that cannot be written costs only
// time: the segment is pushed again by its own call.
func (a *Archive) recordAhead(ctx context.Context, dir string, items []*aheadItem, location string) int {
	id, err := a.Identity(ctx) // known by now: no request
	if err != nil {
		return 0
	}
	now := a.now().UTC()
	n, written := 0, 0
	for _, it := range items {
		switch {
		case it.proven:
			n++
			continue
		case it.err != nil:
			if !errors.Is(it.err, context.Canceled) {
				a.log.Info("not pushed ahead; PostgreSQL's own call for it will push it",
					"file", it.file.String(), "error", oneLine(it.err))
			}
			continue
		case !it.stamped:
			continue
		}
		n++
		p := proof{
			Format: proofFormat, Name: it.file.String(), File: it.stamp, Archive: location,
			SystemID: id.SystemIdentifier, ArchiveCreated: id.Created, Key: Key(it.file),
			SHA256: hex.EncodeToString(it.hdr.SHA256[:]), Stored: it.stored, Written: now,
		}
		if err := writeProof(dir, p); err != nil {
			a.log.Info("could not record a segment pushed ahead; its own call will push it again",
				"file", p.Name, "error", err)
			continue
		}
		written++
	}
	if written > 0 {
		if err := syncDir(proofDir(dir)); err != nil {
			a.log.Info("could not fsync the proof directory", "error", err)
		}
	}
	return n
}

func oneLine(err error) string {
	s := err.Error()
	for i := range len(s) {
		if s[i] == '\n' {
			return s[:i]
		}
	}
	return s
}
