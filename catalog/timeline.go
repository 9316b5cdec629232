package catalog

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"time"

	"github.com/walship/walship/manifest"
	"github.com/walship/walship/segment"
)

// Recovery target timelines, as recovery_target_timeline spells them.
const (
	TimelineLatest  = "latest"
	TimelineCurrent = "current"
)

// span is a stretch of a timeline's WAL on the way to a target timeline.
type span struct {
	TLI        uint32
	Begin, End segment.LSN // End is exclusive; MaxUint64 for the target
}

// Path is the way recovery reads WAL from a backup's timeline to a target
// timeline: which timeline it reads each segment from.
type Path struct {
	c     *Catalog
	spans []span
}

// Path is the list of timelines recovery follows from timeline from (a
// backup's start) to reach tli. A history file is needed only to cross
// onto a newer timeline: a backup on tli recovering along tli reads none
// (PostgreSQL takes a missing history file as "no parents"), which is how
// an archive started by a copy promoted with archiving off begins. It
// needs the catalog's History.
func (c *Catalog) Path(from, tli uint32) (*Path, error) {
	h, ok := c.History[tli]
	switch {
	case tli == 1:
		return &Path{c, []span{{TLI: 1, End: math.MaxUint64}}}, nil
	case !ok && from == tli:
		return &Path{c, []span{{TLI: tli, End: math.MaxUint64}}}, nil
	case !ok:
		return nil, fmt.Errorf("timeline %d has no history file in the archive, and recovery from timeline %d must cross onto it", tli, from)
	}
	var out []span
	var begin segment.LSN
	for _, e := range h {
		out = append(out, span{TLI: e.TLI, Begin: begin, End: e.SwitchLSN})
		begin = e.SwitchLSN
	}
	return &Path{c, append(out, span{TLI: tli, Begin: begin, End: math.MaxUint64})}, nil
}

// TargetTimeline resolves "latest", "current" or a number for backup b.
// "latest" is found as PostgreSQL finds it: the highest timeline reached
// by probing history files one after another from the backup's timeline.
func (c *Catalog) TargetTimeline(b *manifest.Manifest, spec string) (uint32, error) {
	switch spec {
	case TimelineCurrent:
		return b.StopTimeline, nil
	case TimelineLatest, "":
		t := b.StopTimeline
		for {
			if _, ok := c.History[t+1]; !ok {
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

// Holds reports whether the backup's WAL lies on the path: its timelines
// are on it and the stop position comes before its timeline ends there.
func (p *Path) Holds(b *manifest.Manifest) bool {
	for _, r := range b.WALRanges {
		found := false
		for _, s := range p.spans {
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

// At names segment n on the timeline recovery reads it from: the newest
// timeline on the path that began at or before the segment.
func (p *Path) At(n uint64) segment.Name {
	tli := p.spans[0].TLI
	for _, s := range p.spans {
		if s.Begin.SegNo(p.c.SegSize) <= n {
			tli = s.TLI
		}
	}
	return segment.Name{TLI: tli, SegNo: n}
}

// Archived reports whether segment n is archived, and when.
func (c *Catalog) Archived(n segment.Name) (time.Time, bool) {
	t, ok := c.WAL[n.TLI][n.SegNo]
	return t, ok
}

// FirstMissing finds the first segment from..to (inclusive) on the path
// that is not archived.
func (p *Path) FirstMissing(from, to uint64) (segment.Name, bool) {
	for n := from; n <= to; n++ {
		if _, ok := p.c.Archived(p.At(n)); !ok {
			return p.At(n), true
		}
	}
	return segment.Name{}, false
}

// Head is the newest archived segment on the path.
func (p *Path) Head() (uint64, bool) {
	var best uint64
	found := false
	for i, s := range p.spans {
		lo := s.Begin.SegNo(p.c.SegSize)
		hi := uint64(math.MaxUint64)
		if i+1 < len(p.spans) {
			hi = p.spans[i+1].Begin.SegNo(p.c.SegSize) - 1
		}
		for n := range p.c.WAL[s.TLI] {
			if n >= lo && n <= hi && (!found || n > best) {
				best, found = n, true
			}
		}
	}
	return best, found
}

// FirstArchivedAfter walks the path from segment from while segments are
// archived, and returns the first archived after t. Recovery stops at t
// only on seeing a commit made after t, which no segment archived before t
// can hold: without such a segment the archive cannot reach t yet. (The
// commit may still lie further on; PostgreSQL then fails with "recovery
// ended before configured recovery target was reached" instead of
// promoting early.) Stores keep modification times to the second (S3's
// Last-Modified): a segment stamped in the target's second may have been
// archived after it, so times are compared with one second of slack.
func (p *Path) FirstArchivedAfter(from uint64, t time.Time) (uint64, bool) {
	for n := from; ; n++ {
		at, ok := p.c.Archived(p.At(n))
		if !ok {
			return 0, false
		}
		if at.Add(time.Second).After(t) {
			return n, true
		}
	}
}

// MissingWAL checks that the archived WAL covers backup b from its start
// to the newest segment on the latest timeline reachable from it, through
// the history chain. It returns the first missing segment, if any, and
// the last segment checked.
func (c *Catalog) MissingWAL(b *manifest.Manifest) (missing segment.Name, gap bool, last segment.Name, err error) {
	tli, err := c.TargetTimeline(b, TimelineLatest)
	if err != nil {
		return missing, false, last, err
	}
	p, err := c.Path(b.Timeline, tli)
	if err != nil {
		return missing, false, last, err
	}
	start := b.StartLSN.SegNo(c.SegSize)
	stop := start
	if b.StopLSN > b.StartLSN {
		stop = uint64(b.StopLSN-1) / c.SegSize
	}
	head, ok := p.Head()
	if !ok || head < stop {
		head = stop
	}
	missing, gap = p.FirstMissing(start, head)
	return missing, gap, p.At(head), nil
}

// Serving is the newest complete backup from which the archived WAL runs
// without a gap to the head of the latest timeline: the one a standby that
// lost its place can be rebuilt from. Nil when none can.
func (c *Catalog) Serving() *manifest.Manifest {
	for i := len(c.Backups) - 1; i >= 0; i-- {
		if _, gap, _, err := c.MissingWAL(c.Backups[i]); err == nil && !gap {
			return c.Backups[i]
		}
	}
	return nil
}

// ErrBrokenChain is wrapped when an incremental backup's chain of parents
// does not reach a full backup among the archive's complete backups.
var ErrBrokenChain = errors.New("incremental backup chain broken")

// Chain is what restoring b takes, oldest first: the full backup its
// chain starts from, each incremental after it, and b last (just b for a
// full backup). It needs the catalog's Backups.
func (c *Catalog) Chain(b *manifest.Manifest) ([]*manifest.Manifest, error) {
	byID := make(map[string]*manifest.Manifest, len(c.Backups))
	for _, m := range c.Backups {
		byID[m.ID] = m
	}
	chain := []*manifest.Manifest{b}
	for m := b; m.Incremental(); {
		p, ok := byID[m.Parent]
		switch {
		case !ok:
			return nil, fmt.Errorf("%w: backup %s needs %s, which is not a complete backup in the archive", ErrBrokenChain, m.ID, m.Parent)
		case len(chain) > len(c.Backups):
			return nil, fmt.Errorf("%w: backup %s's parents form a loop", ErrBrokenChain, b.ID)
		case p.SystemIdentifier != b.SystemIdentifier || p.StartTime.After(m.StartTime):
			// Start times come from backup_label, to the second: a parent
			// and its child can share one, so only a newer parent breaks.
			return nil, fmt.Errorf("%w: backup %s names %s as its parent, which is another cluster's or newer", ErrBrokenChain, m.ID, p.ID)
		}
		chain = append(chain, p)
		m = p
	}
	slices.Reverse(chain)
	return chain, nil
}

// Dependants are the complete backups whose chain passes through id
// (id's own incrementals, theirs, and so on), oldest first. It needs the
// catalog's Backups.
func (c *Catalog) Dependants(id string) []*manifest.Manifest {
	needs := map[string]bool{id: true}
	for grown := true; grown; {
		grown = false
		for _, m := range c.Backups {
			if m.Incremental() && needs[m.Parent] && !needs[m.ID] {
				needs[m.ID], grown = true, true
			}
		}
	}
	var out []*manifest.Manifest
	for _, m := range c.Backups {
		if m.ID != id && needs[m.ID] {
			out = append(out, m)
		}
	}
	return out
}
