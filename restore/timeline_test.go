package restore

import (
	"strings"
	"testing"
	"time"

	"github.com/walship/walship/catalog"
	"github.com/walship/walship/manifest"
	"github.com/walship/walship/segment"
)

// freshTimeline2: a copy promoted with archiving off started the archive
// on timeline 2; 00000002.history never reached it.
func freshTimeline2() *catalog.Catalog {
	inv := &catalog.Catalog{
		SegSize: mib16,
		History: map[uint32][]segment.HistoryEntry{},
		WAL:     map[uint32]map[uint64]time.Time{2: {}},
		Backups: []*manifest.Manifest{mkBackup("B", 2, "0/9000028", "0/9000100", t0.Add(9*time.Minute), 1300)},
	}
	for n := uint64(9); n <= 12; n++ {
		inv.WAL[2][n] = t0.Add(time.Duration(n)*time.Minute + 30*time.Second)
	}
	return inv
}

// History files are needed only to cross onto a newer timeline.
func TestTimelineWithoutHistory(t *testing.T) {
	for _, tc := range []struct {
		name   string
		target Target
	}{
		{"latest", Target{}},
		{"current", Target{Timeline: "current"}},
		{"timeline 2 by number", Target{Timeline: "2"}},
		{"immediate", Target{Kind: TargetImmediate}},
		{"an LSN on timeline 2", Target{Kind: TargetLSN, LSN: lsn("0/B000000")}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := Choose(freshTimeline2(), tc.target, "")
			if err != nil {
				t.Fatal(err)
			}
			if p.Timeline != 2 || p.FirstWAL.String(mib16) != "000000020000000000000009" {
				t.Errorf("plan on timeline %d from %s", p.Timeline, p.FirstWAL.String(mib16))
			}
		})
	}
	inv := freshTimeline2()
	if _, gap, last, err := inv.MissingWAL(inv.Backups[0]); err != nil || gap || last.String(mib16) != "00000002000000000000000C" {
		t.Errorf("MissingWAL: gap %v last %s err %v", gap, last.String(mib16), err)
	}

	// Crossing is another matter: a backup that started on timeline 1 and
	// stopped on 2, or one on 1 asked to reach 2, needs 2's history.
	inv = freshTimeline2()
	b := inv.Backups[0]
	b.Timeline = 1
	b.WALRanges = []manifest.WALRange{{Timeline: 1, Start: b.StartLSN, End: b.StartLSN + 0x10}, {Timeline: 2, Start: b.StartLSN + 0x10, End: b.StopLSN}}
	inv.WAL[1] = map[uint64]time.Time{9: t0}
	if _, err := Choose(inv, Target{Timeline: "current"}, ""); err == nil || !strings.Contains(err.Error(), "timeline 2 has no history file") {
		t.Errorf("crossing without history: %v", err)
	}
}
