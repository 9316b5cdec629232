package retention

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/walship/walship/archive"
	"github.com/walship/walship/catalog"
	"github.com/walship/walship/manifest"
	"github.com/walship/walship/segment"
)

var update = flag.Bool("update", false, "rewrite the golden files")

const segSize = 16 << 20

var now = time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)

func name(tli uint32, n uint64) string { return segment.Name{TLI: tli, SegNo: n}.String(segSize) }

func mkBackup(id string, tli uint32, startSeg uint64, stop time.Time) *manifest.Manifest {
	start := segment.LSN(startSeg*segSize + 0x28)
	return &manifest.Manifest{ID: id, Timeline: tli, StopTimeline: tli, SegmentSize: segSize, StartLSN: start, StopLSN: start + 0x100,
		StartTime: stop.Add(-time.Minute), StopTime: stop}
}

// inventory: timeline 1 has segments 1..0x14 except 5 (a gap), a .backup
// file and the .partial of the switch; timeline 2 branched at 0/10000000
// and has 0x10..0x18. Backups B1 and B2 on timeline 1, B3 on timeline 2.
// An old incomplete backup is debris; a young one may be running; one
// that started hours ago holds a live lease; one whose lease expired a day
// ago is debris.
func inventory() *catalog.Catalog {
	inv := &catalog.Catalog{SegSize: segSize, Leases: map[string]catalog.Lease{}}
	add := func(key string, size int64, mod time.Time) {
		inv.Objects = append(inv.Objects, catalog.Object{Key: key, Size: size, Modified: mod})
	}
	for n := uint64(1); n <= 0x14; n++ {
		if n == 5 {
			continue
		}
		add("wal/00000001/"+name(1, n), 4<<20, now.Add(-120*time.Hour+time.Duration(n)*time.Hour))
	}
	add("wal/00000001/"+name(1, 8)+".00000028.backup", 300, now.Add(-48*time.Hour))
	add("wal/00000001/"+name(1, 0x10)+".partial", 4<<20, now.Add(-30*time.Hour))
	for n := uint64(0x10); n <= 0x18; n++ {
		add("wal/00000002/"+name(2, n), 4<<20, now.Add(-30*time.Hour+time.Duration(n-0x10)*3*time.Hour))
	}
	add("wal/00000002/"+name(2, 0x19), 4<<20, now.Add(-time.Minute)) // just pushed
	add("history/00000002.history", 40, now.Add(-30*time.Hour))
	inv.Backups = []*manifest.Manifest{
		mkBackup("20261122T120000Z", 1, 2, now.Add(-96*time.Hour)),
		mkBackup("20261124T120000Z", 1, 8, now.Add(-48*time.Hour)),
		mkBackup("20261126T110000Z", 2, 0x17, now.Add(-time.Hour)),
	}
	for _, b := range inv.Backups {
		add(manifest.Prefix+b.ID+"/base.tar.00000", 10<<20, b.StopTime)
		add(manifest.Prefix+b.ID+"/manifest.json", 2000, b.StopTime)
	}
	add(manifest.Prefix+"20261120T000000Z/base.tar.00000", 10<<20, now.Add(-150*time.Hour))
	add(manifest.Prefix+"20261126T115800Z/base.tar.00000", 10<<20, now.Add(-2*time.Minute))
	running, dead := "20261126T090000Z", "20261125T000000Z"
	add(manifest.Prefix+running+"/base.tar.00000", 10<<20, now.Add(-3*time.Hour))
	add(manifest.Prefix+running+"/base.tar.00001", 10<<20, now.Add(-2*time.Hour))
	add(manifest.Prefix+running+"/lease.json", 200, now.Add(-40*time.Second))
	inv.Leases[running] = lease(now.Add(-40*time.Second), now.Add(-40*time.Second))
	add(manifest.Prefix+dead+"/base.tar.00000", 10<<20, now.Add(-36*time.Hour))
	add(manifest.Prefix+dead+"/lease.json", 200, now.Add(-35*time.Hour))
	inv.Leases[dead] = lease(now.Add(-35*time.Hour), now.Add(-35*time.Hour))
	return inv
}

func lease(renewed, modified time.Time) catalog.Lease {
	return catalog.Lease{Modified: modified, Lease: archive.Lease{Kind: "backup push", Holder: "db1:4242", Token: "t",
		TTL: archive.Duration(archive.DefaultLeaseTTL), Acquired: renewed.Add(-3 * time.Hour), Renewed: renewed}}
}

func slot(name, pos string, heartbeat time.Time) archive.Slot {
	return archive.Slot{Name: name, Position: pos, TTL: archive.Duration(time.Hour), Heartbeat: heartbeat}
}

func render(p *Plan) string {
	var b strings.Builder
	fmt.Fprintf(&b, "kept backups: %s\ndeleted backups: %s\n", strings.Join(p.KeptBackups, " "), strings.Join(p.DeletedBackups, " "))
	for _, n := range p.Notes {
		fmt.Fprintf(&b, "note: %s\n", n)
	}
	fmt.Fprintf(&b, "delete %d objects (%d bytes), keep %d (%d bytes)\n\n", p.DeleteCount, p.DeleteBytes, p.KeepCount, p.KeepBytes)
	for _, it := range p.Items {
		act := "keep  "
		if it.Delete {
			act = "DELETE"
		}
		fmt.Fprintf(&b, "%s %-62s %s\n", act, it.Key, it.Reason)
	}
	return b.String()
}

func TestPlanGolden(t *testing.T) {
	live := now.Add(-10 * time.Minute)
	dead := now.Add(-2 * time.Hour)
	cases := []struct {
		name   string
		policy Policy
		slots  []archive.Slot
		inv    func(*catalog.Catalog)
	}{
		{"keep-last-1", Policy{KeepLast: 1, Grace: DefaultGrace}, nil, nil},
		{"keep-last-1-live-slot", Policy{KeepLast: 1, Grace: DefaultGrace}, []archive.Slot{slot("dr1", name(1, 6), live)}, nil},
		{"keep-last-1-expired-slot", Policy{KeepLast: 1, Grace: DefaultGrace}, []archive.Slot{slot("dr1", name(1, 3), dead)}, nil},
		{"keep-last-2", Policy{KeepLast: 2, Grace: DefaultGrace}, nil, nil},
		{"keep-within-36h", Policy{KeepWithin: 36 * time.Hour, Grace: DefaultGrace}, nil, nil},
		{"keep-within-edge-48h", Policy{KeepWithin: 48 * time.Hour, Grace: DefaultGrace}, nil, nil},
		{"keep-within-5d", Policy{KeepWithin: 120 * time.Hour, Grace: DefaultGrace}, nil, nil},
		{"slot-without-position", Policy{KeepLast: 1, Grace: DefaultGrace}, []archive.Slot{slot("new", "", live)}, nil},
		{"no-backups", Policy{KeepLast: 1, Grace: DefaultGrace}, nil, func(inv *catalog.Catalog) { inv.Backups = nil }},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			inv := inventory()
			if c.inv != nil {
				c.inv(inv)
			}
			p, err := Make(withSlots(inv, c.slots), c.policy, now)
			if err != nil {
				t.Fatal(err)
			}
			got := render(p)
			path := filepath.Join("testdata", c.name+".golden")
			if *update {
				if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run go test ./retention -update to create it)", err)
			}
			if got != string(want) {
				t.Errorf("plan differs from %s:\n%s", path, got)
			}
			checkInvariants(t, inv, c.slots, p)
		})
	}
}

// checkInvariants: nothing a kept backup or a live slot needs is deleted,
// and nothing young is.
func checkInvariants(t *testing.T, inv *catalog.Catalog, slots []archive.Slot, p *Plan) {
	t.Helper()
	kept := map[string]bool{}
	for _, id := range p.KeptBackups {
		kept[id] = true
	}
	for _, it := range p.Items {
		if !it.Delete {
			continue
		}
		for _, o := range inv.Objects {
			if o.Key == it.Key && o.Modified.After(now.Add(-p.Policy.Grace)) {
				t.Errorf("deletes %s, younger than the grace period", it.Key)
			}
		}
		f, err := segment.ParseFile(it.Key[strings.LastIndexByte(it.Key, '/')+1:])
		if err != nil || !strings.HasPrefix(it.Key, "wal/") {
			continue
		}
		n, _ := f.SegNo(segSize)
		for _, b := range inv.Backups {
			if kept[b.ID] && f.TLI >= b.Timeline && n >= b.StartLSN.SegNo(segSize) {
				t.Errorf("deletes %s, which kept backup %s needs", it.Key, b.ID)
			}
		}
		for _, s := range slots {
			if s.Expired(now) || s.Position == "" {
				continue
			}
			sn, _ := segment.ParseName(s.Position, segSize)
			if f.TLI >= sn.TLI && n >= sn.SegNo {
				t.Errorf("deletes %s, which live slot %s needs", it.Key, s.Name)
			}
		}
	}
	for _, id := range p.DeletedBackups {
		if kept[id] {
			t.Errorf("backup %s both kept and deleted", id)
		}
	}
}

func TestNoPolicyRefused(t *testing.T) {
	if _, err := Make(inventory(), Policy{Grace: DefaultGrace}, now); err == nil {
		t.Fatal("a plan without a policy")
	}
	if _, err := Make(inventory(), Policy{KeepLast: -1}, now); err == nil {
		t.Fatal("a negative policy")
	}
}

// Positions past the first 4 GiB of WAL: names carry a log number, and
// the planner must compare segment numbers, not names' halves.
func TestPlanAcrossLogBoundary(t *testing.T) {
	inv := &catalog.Catalog{SegSize: segSize}
	for n := uint64(0x1F0); n <= 0x210; n++ {
		inv.Objects = append(inv.Objects, catalog.Object{Key: "wal/00000001/" + name(1, n), Size: 1, Modified: now.Add(-time.Hour)})
	}
	inv.Backups = []*manifest.Manifest{mkBackup("20261126T100000Z", 1, 0x1FE, now.Add(-time.Hour))}
	p, err := Make(withSlots(inv, []archive.Slot{slot("dr", name(1, 0x1FA), now)}), Policy{KeepLast: 1, Grace: DefaultGrace}, now)
	if err != nil {
		t.Fatal(err)
	}
	for _, it := range p.Items {
		f, _ := segment.ParseFile(it.Key[13:])
		n, _ := f.SegNo(segSize)
		if want := n < 0x1FA; it.Delete != want {
			t.Errorf("%s (segment %#x): delete=%v, want %v (%s)", it.Key, n, it.Delete, want, it.Reason)
		}
	}
}

func withSlots(c *catalog.Catalog, slots []archive.Slot) *catalog.Catalog {
	c.Slots = slots
	return c
}
