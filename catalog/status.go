package catalog

import (
	"fmt"
	"time"

	"github.com/walship/walship/archive"
	"github.com/walship/walship/manifest"
	"github.com/walship/walship/segment"
)

// SlotState is a slot as slot list and status show it.
type SlotState struct {
	archive.Slot
	Expired bool `json:"expired"`
	// LagSegments counts from the replayed (else the position) segment to
	// its timeline's head; nil when either is unknown.
	LagSegments *uint64 `json:"lag_segments,omitempty"`
}

// SlotStates are the slots at now, with their lag behind the heads. It
// needs the catalog's Slots and Heads.
func (c *Catalog) SlotStates(now time.Time) []SlotState {
	heads := map[uint32]string{}
	for _, h := range c.Heads {
		heads[h.Timeline] = h.Segment
	}
	out := make([]SlotState, 0, len(c.Slots))
	for _, s := range c.Slots {
		st := SlotState{Slot: s, Expired: s.Expired(now)}
		at := s.Replayed
		if at == "" {
			at = s.Position
		}
		if n, err := segment.ParseName(at, c.SegSize); err == nil {
			if hn, err := segment.ParseName(heads[n.TLI], c.SegSize); err == nil {
				lag := uint64(0)
				if hn.SegNo > n.SegNo {
					lag = hn.SegNo - n.SegNo
				}
				st.LagSegments = &lag
			}
		}
		out = append(out, st)
	}
	return out
}

// Status is the archive at a glance.
type Status struct {
	Archive   string             `json:"archive"`
	Identity  archive.Identity   `json:"identity"`
	Heads     []archive.Head     `json:"heads"`
	Timelines []TimelineRange    `json:"timelines"`
	Objects   int                `json:"objects"`
	Bytes     int64              `json:"bytes"`
	Backups   int                `json:"backups"`
	Newest    *manifest.Manifest `json:"newest_backup,omitempty"`
	Slots     []SlotState        `json:"slots"`
	Gaps      []archive.Gap      `json:"gaps"`
	Problems  []string           `json:"problems"`
	CheckedAt time.Time          `json:"checked_at"`
}

// Status reports the archive named name at now, with its problems: open
// gaps, missing history files, expired slots and slots reporting a
// problem. It needs every part of the catalog (All).
func (c *Catalog) Status(name string, now time.Time) Status {
	s := Status{Archive: name, Identity: c.Identity, Heads: c.Heads, Timelines: c.Timelines(), Objects: len(c.Objects),
		Bytes: c.Bytes, Backups: len(c.Backups), Slots: c.SlotStates(now), Gaps: c.Gaps, Problems: []string{}, CheckedAt: now.UTC()}
	if n := len(c.Backups); n > 0 {
		s.Newest = c.Backups[n-1]
	}
	for _, g := range c.Gaps {
		s.Problems = append(s.Problems, fmt.Sprintf("gap on timeline %d: %s to %s were never archived (found when %s was pushed at %s)",
			g.Timeline, g.From, g.To, g.Before, g.Detected.Format(time.RFC3339)))
	}
	for _, p := range c.MissingHistories() {
		s.Problems = append(s.Problems, p.Detail)
	}
	for _, sl := range s.Slots {
		if sl.Expired {
			s.Problems = append(s.Problems, fmt.Sprintf("slot %s expired (last heartbeat %s): it no longer protects WAL",
				sl.Name, sl.Heartbeat.Format(time.RFC3339)))
		}
		if sl.Problem != "" {
			s.Problems = append(s.Problems, "slot "+sl.Name+": "+sl.Problem)
		}
	}
	return s
}
