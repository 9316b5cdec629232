package archive

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
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
	rc, _, err := a.store.Get(ctx, HeadKey(tli))
	if err != nil {
		return Head{}, fmt.Errorf("read head of timeline %d: %w", tli, err)
	}
	defer rc.Close()
	b, err := io.ReadAll(io.LimitReader(rc, 4096))
	if err != nil {
		return Head{}, fmt.Errorf("read head of timeline %d: %w", tli, err)
	}
	var h Head
	if err := json.Unmarshal(b, &h); err != nil {
		return Head{}, fmt.Errorf("head of timeline %d is damaged: %w", tli, err)
	}
	if f, err := segment.ParseFile(h.Segment); err != nil || f.Kind != segment.KindSegment || f.TLI != tli {
		return Head{}, fmt.Errorf("head of timeline %d names %q", tli, h.Segment)
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
