package archive

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"github.com/walship/walship/backends"
	"github.com/walship/walship/sealed"
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
	// Ahead: how many of the segments after this one are in the archive
	// through this call (PushAhead), pushed now or by an earlier call.
	Ahead int
}

// maxSmallFile bounds .history and .backup files, which are a few hundred
// bytes; anything huge under such a name is not what it claims to be.
const maxSmallFile = 1 << 20

// Push archives the file at path (relative to the working directory, as
// archive_command's %p is). It returns without error only once the archive
// holds the file durably: either this call stored it, or an identical copy
// was already there (PostgreSQL re-archives after a crash). A different file
// under the same name is ErrConflict and the archive is left untouched.
func (a *Archive) Push(ctx context.Context, path string, comp sealed.Compression) (PushResult, error) {
	start := time.Now()
	f, err := segment.ParseFile(filepath.Base(path))
	if err != nil {
		return PushResult{}, err
	}
	p, err := a.prepare(ctx, path, f)
	if err != nil {
		return PushResult{File: f, Key: Key(f)}, err
	}
	defer p.release()
	return a.pushPrepared(ctx, start, p, comp)
}

// pending is a file read and checked, ready to be sealed and stored.
type pending struct {
	localFile
	path    string
	file    segment.File
	key     string
	segSize uint64 // segments and partial files
	tRead   time.Duration
}

// prepare reads the file at path and checks it: a segment's header against
// its name and the archive's identity (claiming the identity for a new
// archive), a history file's syntax, a backup history file's label.
func (a *Archive) prepare(ctx context.Context, path string, f segment.File) (*pending, error) {
	start := time.Now()
	lf, err := readLocal(path, f)
	if err != nil {
		return nil, err
	}
	p := &pending{localFile: lf, path: path, file: f, key: Key(f), tRead: time.Since(start)}
	if err := a.check(ctx, p); err != nil {
		p.release()
		return nil, err
	}
	return p, nil
}

func (a *Archive) check(ctx context.Context, p *pending) error {
	path, f, raw := p.path, p.file, p.raw
	switch f.Kind {
	case segment.KindSegment, segment.KindPartial:
		h, err := segment.ParseHeader(raw)
		if err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		p.segSize = uint64(h.SegSize)
		// Check what the file says of itself first, so that a bad file
		// cannot become an archive's identity.
		if err := segment.CheckHeader(h, f, int64(len(raw)), 0); err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		id, err := a.claimIdentity(ctx, h)
		if err != nil {
			return err
		}
		if err := checkIdentity(id, h); err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
	case segment.KindHistory:
		if _, err := segment.ParseHistory(f.TLI, raw); err != nil {
			return fmt.Errorf("%s: %w: %w", path, segment.ErrBadHeader, err)
		}
		return a.requireIdentityIfAny(ctx)
	case segment.KindBackupLabel:
		if !bytes.Contains(raw, []byte("START WAL LOCATION:")) {
			return fmt.Errorf("%s: %w: not a backup history file", path, segment.ErrBadHeader)
		}
		return a.requireIdentityIfAny(ctx)
	}
	return nil
}

// pushPrepared seals and stores p, one file in this call, the frames of
// its object compressed in parallel; then, for a segment, records a gap
// before it and advances the head.
func (a *Archive) pushPrepared(ctx context.Context, start time.Time, p *pending, comp sealed.Compression) (PushResult, error) {
	f := p.file
	res := PushResult{File: f, Key: p.key, Size: int64(len(p.raw))}
	tCheck := time.Since(start)
	headc := a.lookBehind(ctx, f, p.segSize)
	sealed, err := sealed.Seal(p.raw, comp)
	if err != nil {
		return res, err
	}
	tSeal := time.Since(start)
	res.Stored = sealed.Size()
	res.AlreadyArchived, err = a.storeSealed(ctx, p.key, sealed)
	if err != nil {
		return res, err
	}
	if f.Kind == segment.KindSegment {
		if err := a.finishSegments(ctx, f, f, p.segSize, headc, res.AlreadyArchived, !res.AlreadyArchived); err != nil {
			return res, err
		}
	}
	res.Elapsed = time.Since(start)
	a.log.Debug("push phases", "read", p.tRead, "checked", tCheck, "sealed", tSeal, "stored", res.Elapsed)
	return res, nil
}

// storeSealed stores a sealed object unless the archive has it. already:
// an identical copy was there; a different one is ErrConflict.
func (a *Archive) storeSealed(ctx context.Context, key string, sealed *sealed.Object) (already bool, err error) {
	err = a.store.PutIfAbsent(ctx, key, sealed.Reader(), sealed.Size())
	if errors.Is(err, backends.ErrExists) {
		if err := a.compareExisting(ctx, key, sealed.Header); err != nil {
			return false, err
		}
		return true, nil
	}
	if err != nil {
		return false, fmt.Errorf("store %s: %w", key, err)
	}
	return false, nil
}

// behind is what lookBehind learns: the head, and whether the segment
// before the first one pushed is in the archive (gap detection).
type behind struct {
	h       Head
	err     error
	prevErr error
}

// lookBehind reads, while the segment compresses, the timeline's head and
// whether the segment before f is archived.
func (a *Archive) lookBehind(ctx context.Context, f segment.File, segSize uint64) <-chan behind {
	c := make(chan behind, 1)
	if f.Kind != segment.KindSegment {
		c <- behind{err: backends.ErrNotFound}
		return c
	}
	go func() {
		var r behind
		r.h, r.err = a.ReadHead(ctx, f.TLI)
		r.prevErr = backends.ErrExists // unknown: no gap
		if n, err := f.SegNo(segSize); err == nil && n > 0 && r.err == nil {
			prev := segment.Name{TLI: f.TLI, SegNo: n - 1}
			_, r.prevErr = a.store.Stat(ctx, SegmentKey(prev, segSize))
		}
		c <- r
	}()
	return c
}

// finishSegments notes a gap before first (when first was new to the
// archive and the segment before it is not there) and records last as the
// head. first..last were pushed in order in this call; lastFresh says this
// call stored last (so the head cannot already be at or past it).
func (a *Archive) finishSegments(ctx context.Context, first, last segment.File, segSize uint64, headc <-chan behind, firstAlready, lastFresh bool) error {
	if hr := <-headc; hr.err == nil && !firstAlready && errors.Is(hr.prevErr, backends.ErrNotFound) {
		a.noteGap(ctx, first, hr.h, segSize)
	}
	// Failing here fails the push: PostgreSQL retries, the segment is
	// then already archived, and the head gets its second chance.
	return a.advanceHead(ctx, last, lastFresh)
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
func (a *Archive) compareExisting(ctx context.Context, key string, want sealed.Header) error {
	have, unreadable, err := a.readArchivedHeader(ctx, key)
	if unreadable != nil {
		return fmt.Errorf("%w: archived %s is unreadable (%w); refusing to overwrite it", ErrConflict, key, unreadable)
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
