package restore

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/walship/walship/catalog"
	"github.com/walship/walship/manifest"
	"github.com/walship/walship/segment"
)

const mib16 = 16 << 20

var t0 = time.Date(2026, 11, 26, 10, 0, 0, 0, time.UTC)

func lsn(s string) segment.LSN {
	l, err := segment.ParseLSN(s)
	if err != nil {
		panic(err)
	}
	return l
}

func mkBackup(id string, tli uint32, start, stop string, stopTime time.Time, nextXID uint64) *manifest.Manifest {
	return &manifest.Manifest{
		ID: id, Timeline: tli, StopTimeline: tli, StartLSN: lsn(start), StopLSN: lsn(stop),
		StartTime: stopTime.Add(-time.Minute), StopTime: stopTime, NextXID: nextXID, SegmentSize: mib16,
		WALRanges: []manifest.WALRange{{Timeline: tli, Start: lsn(start), End: lsn(stop)}},
	}
}

// inventory: timeline 1 has segments 2..8 (the old primary went on past
// the switch), timeline 2 branched at 0/7000000 and has segments 7..10.
// Segment n of timeline 1 was archived at t0+n minutes, of timeline 2 at
// t0+n+10 minutes.
func inventory() *catalog.Catalog {
	inv := &catalog.Catalog{
		SegSize: mib16,
		History: map[uint32][]segment.HistoryEntry{2: {{TLI: 1, SwitchLSN: lsn("0/7000000")}}},
		WAL:     map[uint32]map[uint64]time.Time{1: {}, 2: {}},
		Backups: []*manifest.Manifest{
			mkBackup("B1", 1, "0/2000028", "0/2000100", t0.Add(2*time.Minute), 700),
			mkBackup("B2", 1, "0/5000028", "0/5000100", t0.Add(5*time.Minute), 900),
			mkBackup("B4", 1, "0/8000028", "0/8000100", t0.Add(8*time.Minute), 1100), // after the branch, on timeline 1
			mkBackup("B3", 2, "0/9000028", "0/9000100", t0.Add(19*time.Minute), 1300),
		},
	}
	for n := uint64(2); n <= 8; n++ {
		inv.WAL[1][n] = t0.Add(time.Duration(n)*time.Minute + 30*time.Second)
	}
	for n := uint64(7); n <= 10; n++ {
		inv.WAL[2][n] = t0.Add(time.Duration(n+10)*time.Minute + 30*time.Second)
	}
	return inv
}

func TestChoose(t *testing.T) {
	cases := []struct {
		name     string
		target   Target
		backupID string
		mutate   func(*catalog.Catalog)
		want     string // backup id, or "!" + a piece of the error
		wantTLI  uint32
		first    string
		last     string
	}{
		{name: "lsn on timeline 1 before the branch", target: Target{Kind: TargetLSN, LSN: lsn("0/4000010")},
			want: "B1", wantTLI: 2, first: "000000010000000000000002", last: "000000010000000000000004"},
		{name: "lsn after B2", target: Target{Kind: TargetLSN, LSN: lsn("0/6000000")}, want: "B2", wantTLI: 2},
		{name: "lsn on timeline 2 skips B4, which is off the path", target: Target{Kind: TargetLSN, LSN: lsn("0/8800000")},
			want: "B2", wantTLI: 2, first: "000000010000000000000005", last: "000000020000000000000008"},
		{name: "lsn on timeline 2 after B3", target: Target{Kind: TargetLSN, LSN: lsn("0/A000000")}, want: "B3", wantTLI: 2},
		{name: "timeline 1 follows the old primary", target: Target{Kind: TargetLSN, LSN: lsn("0/8800000"), Timeline: "1"},
			want: "B4", wantTLI: 1, last: "000000010000000000000008"},
		{name: "current timeline of B3", target: Target{Kind: TargetLSN, LSN: lsn("0/A000000"), Timeline: "current"}, want: "B3", wantTLI: 2},
		{name: "lsn before every backup", target: Target{Kind: TargetLSN, LSN: lsn("0/1000000")}, want: "!before every backup"},
		{name: "lsn beyond the archive", target: Target{Kind: TargetLSN, LSN: lsn("0/F000000")}, want: "!00000002000000000000000B is not in the archive"},
		{name: "timeline 1 does not reach timeline 2's positions", target: Target{Kind: TargetLSN, LSN: lsn("0/9800000"), Timeline: "1"},
			want: "!000000010000000000000009 is not in the archive"},
		{name: "gap before the target", target: Target{Kind: TargetLSN, LSN: lsn("0/4000010")},
			mutate: func(inv *catalog.Catalog) { delete(inv.WAL[1], 3) }, want: "!000000010000000000000003 is not in the archive"},
		{name: "gap before B2 does not matter to it", target: Target{Kind: TargetLSN, LSN: lsn("0/6000000")},
			mutate: func(inv *catalog.Catalog) { delete(inv.WAL[1], 3) }, want: "B2"},
		{name: "time between B1 and B2", target: Target{Kind: TargetTime, Time: t0.Add(4 * time.Minute)}, want: "B1"},
		{name: "time before every backup", target: Target{Kind: TargetTime, Time: t0}, want: "!before every backup"},
		{name: "time after everything archived", target: Target{Kind: TargetTime, Time: t0.Add(time.Hour)}, want: "!no WAL archived after"},
		{name: "xid assigned before B2 started", target: Target{Kind: TargetXID, XID: 800}, want: "B1"},
		{name: "xid after B3", target: Target{Kind: TargetXID, XID: 5000}, want: "B3"},
		{name: "xid before every backup", target: Target{Kind: TargetXID, XID: 600}, want: "!before every backup"},
		{name: "xid wraps modulo 2^32", target: Target{Kind: TargetXID, XID: 100},
			mutate: func(inv *catalog.Catalog) {
				for _, b := range inv.Backups {
					b.NextXID = 1<<32 + (1<<32 - 1000) // epoch 1, close to wrapping
				}
			}, want: "B3"},
		{name: "restore point uses the newest", target: Target{Kind: TargetName, Name: "x"}, want: "B3"},
		{name: "immediate", target: Target{Kind: TargetImmediate}, want: "B3", first: "000000020000000000000009", last: "000000020000000000000009"},
		{name: "end of archive", target: Target{}, want: "B3", last: "00000002000000000000000A"},
		{name: "end of archive with a gap refuses", target: Target{}, mutate: func(inv *catalog.Catalog) { delete(inv.WAL[2], 9) },
			want: "!000000020000000000000009 is not in the archive"},
		{name: "named backup", target: Target{Kind: TargetLSN, LSN: lsn("0/6000000")}, backupID: "B1", want: "B1"},
		{name: "named backup after the target", target: Target{Kind: TargetLSN, LSN: lsn("0/4000000")}, backupID: "B2", want: "!before every backup"},
		{name: "unknown backup", target: Target{}, backupID: "B9", want: "!B9 is not in the archive"},
		{name: "latest cannot serve", target: Target{Kind: TargetLSN, LSN: lsn("0/6000000")}, backupID: "latest", want: "!latest backup B3 cannot serve"},
		{name: "no history for the timeline asked", target: Target{Timeline: "3"}, want: "!timeline 3 has no history file"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			inv := inventory()
			if tc.mutate != nil {
				tc.mutate(inv)
			}
			p, err := Choose(inv, tc.target, tc.backupID)
			if want, ok := strings.CutPrefix(tc.want, "!"); ok {
				if err == nil {
					t.Fatalf("chose %s, want error with %q", p.Backup.ID, want)
				}
				if !errors.Is(err, ErrUnreachable) || !strings.Contains(err.Error(), want) {
					t.Fatalf("error %q, want ErrUnreachable with %q", err, want)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if p.Backup.ID != tc.want {
				t.Fatalf("chose %s (%s), want %s", p.Backup.ID, p.Why, tc.want)
			}
			if tc.wantTLI != 0 && p.Timeline != tc.wantTLI {
				t.Errorf("timeline %d, want %d", p.Timeline, tc.wantTLI)
			}
			if tc.first != "" && p.FirstWAL.String(mib16) != tc.first {
				t.Errorf("first WAL %s, want %s", p.FirstWAL.String(mib16), tc.first)
			}
			if tc.last != "" && p.LastWAL.String(mib16) != tc.last {
				t.Errorf("last WAL %s, want %s", p.LastWAL.String(mib16), tc.last)
			}
		})
	}
}

func TestParseTime(t *testing.T) {
	for _, s := range []string{"2026-11-26 10:00:00+00", "2026-11-26T10:00:00Z", "2026-11-26 10:00:00.123456+01:00", "2026-11-26 10:00:00 UTC"} {
		if _, err := ParseTime(s); err != nil {
			t.Errorf("%q: %v", s, err)
		}
	}
	for _, s := range []string{"2026-11-26 10:00:00", "yesterday", "2026-11-26 10:00:00 CET", ""} {
		if _, err := ParseTime(s); !errors.Is(err, ErrUsage) {
			t.Errorf("%q: %v, want ErrUsage", s, err)
		}
	}
	got, _ := ParseTime("2026-11-26 11:00:00+01")
	if !got.Equal(t0) {
		t.Errorf("offset ignored: %v", got)
	}
}

func TestTargetCheck(t *testing.T) {
	for _, tg := range []Target{{Timeline: "x"}, {Timeline: "0"}, {Action: "explode"}, {Kind: TargetName}, {Kind: TargetName, Name: strings.Repeat("n", 64)}} {
		if err := tg.Check(); !errors.Is(err, ErrUsage) {
			t.Errorf("%+v: %v, want ErrUsage", tg, err)
		}
	}
}

// An incremental backup is chosen like a full one, with its chain; WAL is
// needed from its own start. A broken chain is a refusal with its reason.
func TestChooseChain(t *testing.T) {
	chained := func() *catalog.Catalog {
		inv := inventory()
		b := inv.Backups
		b[1].Type, b[1].Parent = manifest.TypeIncremental, "B1" // B2 from B1
		b[3].Type, b[3].Parent = manifest.TypeIncremental, "B2" // B3 from B2
		return inv
	}
	ids := func(ms []*manifest.Manifest) string {
		var s []string
		for _, m := range ms {
			s = append(s, m.ID)
		}
		return strings.Join(s, " ")
	}
	p, err := Choose(chained(), Target{}, "")
	if err != nil || p.Backup.ID != "B3" || ids(p.Chain) != "B1 B2 B3" || p.FirstWAL.String(mib16) != "000000020000000000000009" {
		t.Fatalf("end of archive: %+v, %v", p, err)
	}
	p, err = Choose(chained(), Target{Kind: TargetLSN, LSN: lsn("0/6000000")}, "")
	if err != nil || p.Backup.ID != "B2" || ids(p.Chain) != "B1 B2" {
		t.Fatalf("lsn after B2: %+v, %v", p, err)
	}
	if p, err := Choose(inventory(), Target{}, ""); err != nil || ids(p.Chain) != "B3" {
		t.Fatalf("a full backup's chain is itself: %+v, %v", p, err)
	}

	// B2 gone: B3 cannot be restored; asked for, it is refused with the
	// reason; otherwise the planner passes over it, and says so.
	broken := chained()
	broken.Backups = append(broken.Backups[:1:1], broken.Backups[2:]...)
	if _, err := Choose(broken, Target{}, "B3"); !errors.Is(err, ErrUnreachable) || !strings.Contains(err.Error(), "chain broken") ||
		!strings.Contains(err.Error(), "B2") {
		t.Fatalf("broken chain asked for: %v", err)
	}
	if _, err := Choose(broken, Target{}, "latest"); !errors.Is(err, ErrUnreachable) {
		t.Fatalf("broken latest: %v", err)
	}
	p, err = Choose(broken, Target{}, "")
	if err != nil || p.Backup.ID != "B1" || len(p.Notes) != 1 || !strings.Contains(p.Notes[0], "B3 was passed over") {
		t.Fatalf("broken chain passed over: %+v, %v", p, err)
	}

	// A chain across server versions is refused.
	mixed := chained()
	mixed.Backups[0].PGVersionNum, mixed.Backups[3].PGVersionNum = 160004, 170002
	if _, err := Choose(mixed, Target{}, "B3"); !errors.Is(err, ErrUnreachable) || !strings.Contains(err.Error(), "another server version") {
		t.Fatalf("mixed versions: %v", err)
	}
}
