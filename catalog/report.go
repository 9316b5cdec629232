package catalog

import (
	"fmt"
	"sort"

	"github.com/walship/walship/archive"
	"github.com/walship/walship/segment"
)

// TimelineRange is a timeline's first and last archived segment.
type TimelineRange struct {
	Timeline uint32 `json:"timeline"`
	First    string `json:"first"`
	Last     string `json:"last"`
	Segments int    `json:"segments"`
}

// Timelines lists each timeline's archived segments, oldest timeline first.
func (c *Catalog) Timelines() []TimelineRange {
	out := []TimelineRange{}
	for tli, segs := range c.WAL {
		if len(segs) == 0 {
			continue
		}
		first, last := uint64(0), uint64(0)
		seen := false
		for n := range segs {
			if !seen || n < first {
				first = n
			}
			if !seen || n > last {
				last = n
			}
			seen = true
		}
		out = append(out, TimelineRange{Timeline: tli, Segments: len(segs),
			First: segment.Name{TLI: tli, SegNo: first}.String(c.SegSize), Last: segment.Name{TLI: tli, SegNo: last}.String(c.SegSize)})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Timeline < out[j].Timeline })
	return out
}

// MissingHistory is a history file recovery needs and the archive lacks.
type MissingHistory struct {
	Timeline uint32
	Key      string // where it belongs
	Detail   string // what it breaks and how to mend it
}

// MissingHistories reports the history files a restore or a follower
// starting on a backup's or a slot's timeline needs to reach every newer
// timeline the archive knows of (by WAL, backups, slots or history files),
// and the archive lacks. PostgreSQL probes history files one after another
// from its own timeline up, so each one from the lowest starting timeline
// upward is needed. An archive whose only starting points are on its
// newest timeline needs none (a copy promoted with archiving off starts
// such an archive, perhaps with a stray segment of its old timeline). It
// needs the catalog's Backups and Slots.
func (c *Catalog) MissingHistories() []MissingHistory {
	starts, have := map[uint32]bool{}, map[uint32]bool{}
	for tli, segs := range c.WAL {
		if len(segs) > 0 {
			have[tli] = true
		}
	}
	for _, b := range c.Backups {
		starts[b.Timeline], have[b.StopTimeline] = true, true
	}
	for _, s := range c.Slots {
		if n, err := segment.ParseName(s.Position, c.SegSize); err == nil {
			starts[n.TLI] = true
		}
	}
	return missingHistories(starts, have, c.HistoryFiles)
}

func missingHistories(starts, have, history map[uint32]bool) []MissingHistory {
	low, high := uint32(0), uint32(0)
	for tli := range starts {
		if low == 0 || tli < low {
			low = tli
		}
	}
	if low == 0 {
		return nil
	}
	for _, set := range []map[uint32]bool{starts, have, history} {
		for tli := range set {
			high = max(high, tli)
		}
	}
	var out []MissingHistory
	for tli := low + 1; tli <= high && tli-low <= 1<<16; tli++ {
		if history[tli] {
			continue
		}
		f := segment.File{Kind: segment.KindHistory, TLI: tli}
		var detail string
		if have[tli] || starts[tli] {
			detail = fmt.Sprintf("timeline %d has WAL or backups in the archive but no history file %s: a restore or follower starting on timeline %d (a backup or slot is there) "+
				"cannot reach it and silently stays on an older timeline; push it from the server's pg_wal (walship push pg_wal/%s)", tli, f, low, f)
		} else {
			detail = fmt.Sprintf("timeline %d has no history file %s: PostgreSQL looking for the latest timeline from timeline %d stops there and never reaches timeline %d; "+
				"push it from the server's pg_wal (walship push pg_wal/%s)", tli, f, low, high, f)
		}
		out = append(out, MissingHistory{Timeline: tli, Key: archive.Key(f), Detail: detail})
	}
	return out
}
