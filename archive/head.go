package archive

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/walship/walship/segment"
)

// Head is the newest segment pushed on a timeline. Push rewrites it after
// each new segment so that a follower learns of new WAL with one small GET
// instead of a LIST.
type Head struct {
	Timeline uint32    `json:"timeline"`
	Segment  string    `json:"segment"`
	Pushed   time.Time `json:"pushed"`
}

// HeadKey is where a timeline's head is stored.
func HeadKey(tli uint32) string { return fmt.Sprintf("heads/%08X.json", tli) }

// ReadHead reads a timeline's head; backends.ErrNotFound if nothing was
// pushed on it yet (or only by a walship that predates heads).
func (a *Archive) ReadHead(ctx context.Context, tli uint32) (Head, error) {
	var h Head
	err := readRecord(ctx, a.store, HeadKey(tli), 4096, &h, func() error {
		if f, err := segment.ParseFile(h.Segment); err != nil || f.Kind != segment.KindSegment || f.TLI != tli {
			return fmt.Errorf("%w: head of timeline %d names %q", ErrDamaged, tli, h.Segment)
		}
		return nil
	})
	if err != nil {
		return Head{}, fmt.Errorf("read head of timeline %d: %w", tli, err)
	}
	return h, nil
}

// advanceHead records f as its timeline's head unless the head is already
// at or past it. PostgreSQL archives in order, so the read is only there
// for re-pushes of older files after a crash.
func (a *Archive) advanceHead(ctx context.Context, f segment.File, fresh bool) error {
	if !fresh {
		if h, err := a.ReadHead(ctx, f.TLI); err == nil && h.Segment >= f.String() {
			return nil
		}
	}
	b, _ := json.Marshal(Head{Timeline: f.TLI, Segment: f.String(), Pushed: a.now().UTC()})
	if err := a.store.Put(ctx, HeadKey(f.TLI), bytes.NewReader(b), int64(len(b))); err != nil {
		return fmt.Errorf("update head of timeline %d: %w", f.TLI, err)
	}
	return nil
}

// Gap is a run of segments missing before a pushed one: recorded by push
// (gaps/<TLI>/<first missing>.json) so that status and verify show it long
// before anyone needs to restore across it.
type Gap struct {
	Timeline uint32    `json:"timeline"`
	From     string    `json:"from"` // first missing segment
	To       string    `json:"to"`   // last missing segment
	Before   string    `json:"before"`
	Detected time.Time `json:"detected"`
}

// GapKey is where a gap starting at segment from is recorded.
func GapKey(tli uint32, from string) string { return fmt.Sprintf("gaps/%08X/%s.json", tli, from) }

// noteGap warns and records that the segment before f is not in the
// archive although the timeline has a head (so f is not its first): never
// pushed, pushed out of order, or deleted. It is a warning, not an error:
// a late push may still close it. When f is beyond the head, everything
// between them is missing.
func (a *Archive) noteGap(ctx context.Context, f segment.File, head Head, segSize uint64) {
	n, err := f.SegNo(segSize)
	if err != nil || n == 0 {
		return
	}
	from := n - 1
	if h, err := segment.ParseFile(head.Segment); err == nil && h.TLI == f.TLI {
		if hn, err := h.SegNo(segSize); err == nil && hn+1 < from {
			from = hn + 1
		}
	}
	name := func(x uint64) string { return segment.Name{TLI: f.TLI, SegNo: x}.String(segSize) }
	g := Gap{Timeline: f.TLI, From: name(from), To: name(n - 1), Before: f.String(), Detected: a.now().UTC()}
	a.log.Warn("gap in the archive: segments before this one were never pushed (they may still arrive)",
		"file", f.String(), "missing_from", g.From, "missing_to", g.To)
	b, _ := json.Marshal(g)
	if err := a.store.Put(ctx, GapKey(f.TLI, g.From), bytes.NewReader(b), int64(len(b))); err != nil {
		a.log.Warn("could not record the gap", "error", err)
	}
}

// ReadGap reads a gap record push wrote at key; ErrDamaged if it cannot be
// parsed.
func (a *Archive) ReadGap(ctx context.Context, key string) (Gap, error) {
	var g Gap
	if err := readRecord(ctx, a.store, key, 4096, &g, nil); err != nil {
		return Gap{}, fmt.Errorf("read %s: %w", key, err)
	}
	return g, nil
}
