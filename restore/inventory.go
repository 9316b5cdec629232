package restore

import (
	"context"
	"fmt"
	"math"
	"strings"
	"time"

	"github.com/walship/walship/archive"
	"github.com/walship/walship/backends"
	"github.com/walship/walship/manifest"
	"github.com/walship/walship/segment"
)

// Inventory is what a restore plan is made from: the complete backups, the
// timeline histories and which segments are archived when. Loading it
// lists the archive; it reads no WAL and no backup data.
type Inventory struct {
	SegSize uint64
	Backups []*manifest.Manifest // oldest first
	// History holds each timeline's parsed history file (timeline 1 has
	// none).
	History map[uint32][]segment.HistoryEntry
	// WAL maps timeline to segment number to the time it was archived.
	WAL map[uint32]map[uint64]time.Time
}

// LoadInventory lists the archive. Any listing or read failure fails it.
func LoadInventory(ctx context.Context, a *archive.Archive) (*Inventory, error) {
	id, err := a.Identity(ctx)
	if err != nil {
		return nil, err
	}
	inv := &Inventory{SegSize: id.SegmentSize, History: map[uint32][]segment.HistoryEntry{}, WAL: map[uint32]map[uint64]time.Time{}}
	store := a.Storage()
	l, err := manifest.List(ctx, store)
	if err != nil {
		return nil, err
	}
	inv.Backups = l.Backups
	err = store.List(ctx, "wal/", func(o backends.ObjectInfo) error {
		f, err := segment.ParseFile(o.Key[strings.LastIndexByte(o.Key, '/')+1:])
		if err != nil || f.Kind != segment.KindSegment {
			return nil
		}
		n, err := f.SegNo(inv.SegSize)
		if err != nil {
			return nil
		}
		if inv.WAL[f.TLI] == nil {
			inv.WAL[f.TLI] = map[uint64]time.Time{}
		}
		inv.WAL[f.TLI][n] = o.Modified
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list archived WAL: %w", err)
	}
	var hist []segment.File
	err = store.List(ctx, "history/", func(o backends.ObjectInfo) error {
		f, err := segment.ParseFile(strings.TrimPrefix(o.Key, "history/"))
		if err == nil && f.Kind == segment.KindHistory {
			hist = append(hist, f)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list timeline histories: %w", err)
	}
	for _, f := range hist {
		data, err := archive.ReadSealed(ctx, store, archive.Key(f))
		if err != nil {
			return nil, err
		}
		h, err := segment.ParseHistory(f.TLI, data)
		if err != nil {
			// Sealed and intact, but not a history file: damaged, status 4.
			return nil, fmt.Errorf("%s: %w: %w", f, err, ErrDamaged)
		}
		inv.History[f.TLI] = h
	}
	return inv, nil
}

// span is a stretch of a timeline's WAL on the way to a target timeline.
type span struct {
	TLI        uint32
	Begin, End segment.LSN // End is exclusive; MaxUint64 for the target
}

// path is the list of timelines recovery follows from timeline from (a
// backup's start) to reach tli. A history file is needed only to cross
// onto a newer timeline: a backup on tli recovering along tli reads none
// (PostgreSQL takes a missing history file as "no parents"), which is how
// an archive started by a copy promoted with archiving off begins.
func (inv *Inventory) path(from, tli uint32) ([]span, error) {
	h, ok := inv.History[tli]
	switch {
	case tli == 1:
		return []span{{TLI: 1, End: math.MaxUint64}}, nil
	case !ok && from == tli:
		return []span{{TLI: tli, End: math.MaxUint64}}, nil
	case !ok:
		return nil, fmt.Errorf("timeline %d has no history file in the archive, and recovery from timeline %d must cross onto it", tli, from)
	}
	var out []span
	var begin segment.LSN
	for _, e := range h {
		out = append(out, span{TLI: e.TLI, Begin: begin, End: e.SwitchLSN})
		begin = e.SwitchLSN
	}
	return append(out, span{TLI: tli, Begin: begin, End: math.MaxUint64}), nil
}

// targetTimeline resolves "latest", "current" or a number for backup b.
// "latest" is found as PostgreSQL finds it: the highest timeline reached
// by probing history files one after another from the backup's timeline.
func (inv *Inventory) targetTimeline(b *manifest.Manifest, spec string) (uint32, error) {
	switch spec {
	case TimelineCurrent:
		return b.StopTimeline, nil
	case TimelineLatest, "":
		t := b.StopTimeline
		for {
			if _, ok := inv.History[t+1]; !ok {
				return t, nil
			}
			t++
		}
	}
	var n uint32
	if _, err := fmt.Sscanf(spec, "%d", &n); err != nil || n == 0 {
		return 0, fmt.Errorf("bad timeline %q", spec)
	}
	return n, nil
}

// onPath reports whether the backup's WAL lies on the path: its timelines
// are on it and the stop position comes before its timeline ends there.
func onPath(b *manifest.Manifest, spans []span) bool {
	for _, r := range b.WALRanges {
		found := false
		for _, s := range spans {
			if s.TLI == r.Timeline && r.End <= s.End {
				found = true
			}
		}
		if !found {
			return false
		}
	}
	return len(b.WALRanges) > 0
}

// at names segment n on the timeline recovery reads it from: the newest
// timeline on the path that began at or before the segment.
func (inv *Inventory) at(spans []span, n uint64) segment.Name {
	tli := spans[0].TLI
	for _, s := range spans {
		if s.Begin.SegNo(inv.SegSize) <= n {
			tli = s.TLI
		}
	}
	return segment.Name{TLI: tli, SegNo: n}
}

func (inv *Inventory) archived(n segment.Name) (time.Time, bool) {
	t, ok := inv.WAL[n.TLI][n.SegNo]
	return t, ok
}

// firstMissing finds the first segment from..to (inclusive) on the path
// that is not archived.
func (inv *Inventory) firstMissing(spans []span, from, to uint64) (segment.Name, bool) {
	for n := from; n <= to; n++ {
		if _, ok := inv.archived(inv.at(spans, n)); !ok {
			return inv.at(spans, n), true
		}
	}
	return segment.Name{}, false
}

// head is the newest archived segment on the path.
func (inv *Inventory) head(spans []span) (uint64, bool) {
	var best uint64
	found := false
	for i, s := range spans {
		lo := s.Begin.SegNo(inv.SegSize)
		hi := uint64(math.MaxUint64)
		if i+1 < len(spans) {
			hi = spans[i+1].Begin.SegNo(inv.SegSize) - 1
		}
		for n := range inv.WAL[s.TLI] {
			if n >= lo && n <= hi && (!found || n > best) {
				best, found = n, true
			}
		}
	}
	return best, found
}

// firstArchivedAfter walks the path from segment from while segments are
// archived, and returns the first archived after t. Recovery stops at t
// only on seeing a commit made after t, which no segment archived before t
// can hold: without such a segment the archive cannot reach t yet. (The
// commit may still lie further on; PostgreSQL then fails with "recovery
// ended before configured recovery target was reached" instead of
// promoting early.) Times are compared with one second of slack, the
// resolution of S3 modification times.
func (inv *Inventory) firstArchivedAfter(spans []span, from uint64, t time.Time) (uint64, bool) {
	for n := from; ; n++ {
		at, ok := inv.archived(inv.at(spans, n))
		if !ok {
			return 0, false
		}
		// Stores keep modification times to the second (S3's
		// Last-Modified): a segment stamped in the target's second may
		// have been archived after it.
		if at.Add(time.Second).After(t) {
			return n, true
		}
	}
}

// MissingWAL checks that the archived WAL covers backup b from its start
// to the newest segment on the latest timeline reachable from it, through
// the history chain. It returns the first missing segment, if any, and
// the last segment checked.
func (inv *Inventory) MissingWAL(b *manifest.Manifest) (missing segment.Name, gap bool, last segment.Name, err error) {
	tli, err := inv.targetTimeline(b, TimelineLatest)
	if err != nil {
		return missing, false, last, err
	}
	spans, err := inv.path(b.Timeline, tli)
	if err != nil {
		return missing, false, last, err
	}
	start := b.StartLSN.SegNo(inv.SegSize)
	stop := start
	if b.StopLSN > b.StartLSN {
		stop = uint64(b.StopLSN-1) / inv.SegSize
	}
	head, ok := inv.head(spans)
	if !ok || head < stop {
		head = stop
	}
	missing, gap = inv.firstMissing(spans, start, head)
	return missing, gap, inv.at(spans, head), nil
}
