package retention

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/walship/walship/archive"
	"github.com/walship/walship/backends/memory"
	"github.com/walship/walship/catalog"
	"github.com/walship/walship/manifest"
)

// runningInventory: one complete backup on timeline 1 from segment 4, WAL
// 1..9, and a manifest-less backup whose chunks are hours old (older than
// any grace) and whose lease names segment 2 as its start.
func runningInventory(l catalog.Lease) *catalog.Catalog {
	inv := &catalog.Catalog{SegSize: segSize, Leases: map[string]catalog.Lease{}}
	add := func(key string, mod time.Time) {
		inv.Objects = append(inv.Objects, catalog.Object{Key: key, Size: 10, Modified: mod})
	}
	for n := uint64(1); n <= 9; n++ {
		add("wal/00000001/"+name(1, n), now.Add(-10*time.Hour))
	}
	done := mkBackup("20261126T010000Z", 1, 4, now.Add(-11*time.Hour))
	inv.Backups = []*manifest.Manifest{done}
	add(manifest.Prefix+done.ID+"/base.tar.00000", done.StopTime)
	add(manifest.Prefix+done.ID+"/manifest.json", done.StopTime)
	id := "20261126T020000Z"
	add(manifest.Prefix+id+"/base.tar.00000", now.Add(-9*time.Hour))
	add(manifest.Prefix+id+"/base.tar.00001", now.Add(-8*time.Hour))
	add(manifest.Prefix+id+"/lease.json", l.Modified)
	inv.Leases[id] = l
	return inv
}

func itemsOf(p *Plan, prefix string) []Item {
	var out []Item
	for _, it := range p.Items {
		if strings.HasPrefix(it.Key, prefix) {
			out = append(out, it)
		}
	}
	return out
}

func TestPlanHonoursLeases(t *testing.T) {
	const running = "20261126T020000Z"
	withWAL := func(l catalog.Lease) catalog.Lease { l.Lease.WAL = name(1, 2); return l }
	cases := []struct {
		name   string
		lease  catalog.Lease
		keep   bool
		reason string
	}{
		{"live lease", withWAL(lease(now.Add(-time.Minute), now.Add(-time.Minute))), true, "is running: its lease (held by db1:4242) is live until 2026-11-26T12:09:00Z"},
		{"expired lease", lease(now.Add(-11*time.Minute), now.Add(-11*time.Minute)), false, "lease expired 2026-11-26T11:59:00Z"},
		{"holder's clock behind: the store's time counts", lease(now.Add(-30*time.Minute), now.Add(-time.Minute)), true, "is running"},
		{"lease gone between listing and reading", catalog.Lease{Modified: now.Add(-time.Hour), Vanished: true}, true, "gone when read"},
		{"damaged lease written recently", catalog.Lease{Modified: now.Add(-time.Minute), Damaged: true}, true, "the lease is damaged"},
		{"damaged lease written long ago", catalog.Lease{Modified: now.Add(-time.Hour), Damaged: true}, false, "lease expired"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			inv := runningInventory(tc.lease)
			p, err := Make(inv, Policy{KeepLast: 1, Grace: time.Second}, now)
			if err != nil {
				t.Fatal(err)
			}
			items := itemsOf(p, manifest.Prefix+running+"/")
			if len(items) != 3 {
				t.Fatalf("items of the running backup: %+v", items)
			}
			for _, it := range items {
				if it.Delete == tc.keep || !strings.Contains(it.Reason, tc.reason) {
					t.Errorf("%s: delete=%v %q; want keep=%v with %q", it.Key, it.Delete, it.Reason, tc.keep, tc.reason)
				}
			}
			if got := len(p.RunningBackups) == 1 && p.RunningBackups[0] == running; got != tc.keep {
				t.Errorf("running backups %v", p.RunningBackups)
			}
			// A live lease naming its start segment keeps WAL from there,
			// before the complete backup's start.
			for _, it := range itemsOf(p, "wal/") {
				wantKeep := it.Key >= "wal/00000001/"+name(1, 4) || (tc.lease.Lease.WAL != "" && it.Key >= "wal/00000001/"+name(1, 2))
				if it.Delete == wantKeep {
					t.Errorf("%s: delete=%v (%s)", it.Key, it.Delete, it.Reason)
				}
			}
		})
	}
}

// A backup without a manifest and without a lease (a walship from before
// leases, or a lease removed by hand) is debris only once nothing under it
// was written within the grace period, not object by object.
func TestPlanIncompleteWithoutLeaseUsesNewestObject(t *testing.T) {
	inv := runningInventory(catalog.Lease{})
	delete(inv.Leases, "20261126T020000Z")
	var objs []catalog.Object
	for _, o := range inv.Objects {
		if !strings.HasSuffix(o.Key, "/lease.json") {
			objs = append(objs, o)
		}
	}
	objs = append(objs, catalog.Object{Key: manifest.Prefix + "20261126T020000Z/base.tar.00002", Size: 10, Modified: now.Add(-time.Minute)})
	inv.Objects = objs
	p, err := Make(inv, Policy{KeepLast: 1, Grace: 10 * time.Minute}, now)
	if err != nil {
		t.Fatal(err)
	}
	for _, it := range itemsOf(p, manifest.Prefix+"20261126T020000Z/") {
		if it.Delete || !strings.Contains(it.Reason, "written to within the grace period") {
			t.Errorf("%s: delete=%v %q", it.Key, it.Delete, it.Reason)
		}
	}
	p, _ = Make(inv, Policy{KeepLast: 1, Grace: 10 * time.Second}, now)
	for _, it := range itemsOf(p, manifest.Prefix+"20261126T020000Z/") {
		if !it.Delete || !strings.Contains(it.Reason, "no lease") {
			t.Errorf("grace 10s: %s: delete=%v %q", it.Key, it.Delete, it.Reason)
		}
	}
}

func historyItems(p *Plan) map[string]Item {
	out := map[string]Item{}
	for _, it := range itemsOf(p, "history/") {
		out[strings.TrimPrefix(it.Key, "history/")] = it
	}
	return out
}

func TestPlanKeepsHistoryChain(t *testing.T) {
	old := now.Add(-48 * time.Hour)
	build := func(backupTLI uint32, wal map[uint32][]uint64, hist ...string) *catalog.Catalog {
		inv := &catalog.Catalog{SegSize: segSize}
		for tli, segs := range wal {
			for _, n := range segs {
				inv.Objects = append(inv.Objects, catalog.Object{Key: "wal/" + name(tli, 0)[:8] + "/" + name(tli, n), Size: 1, Modified: old})
			}
		}
		for _, h := range hist {
			inv.Objects = append(inv.Objects, catalog.Object{Key: "history/" + h, Size: 1, Modified: old})
		}
		inv.Backups = []*manifest.Manifest{mkBackup("20261126T000000Z", backupTLI, 5, old)}
		return inv
	}
	cases := []struct {
		name   string
		inv    *catalog.Catalog
		keep   []string
		delete []string
	}{
		// Right after a promotion the new primary has archived only its
		// history file: nothing kept is on timeline 2 yet.
		{"promotion, no WAL on timeline 2 yet", build(1, map[uint32][]uint64{1: {3, 4, 5, 6}}, "00000002.history"),
			[]string{"00000002.history"}, nil},
		// Timeline 2 was abandoned (its WAL gone), timeline 3 branched
		// from 1: PostgreSQL still probes 2 before 3.
		{"a sibling branch on the way up", build(1, map[uint32][]uint64{1: {5, 6}, 3: {6, 7}}, "00000002.history", "00000003.history"),
			[]string{"00000002.history", "00000003.history"}, nil},
		// Everything kept is on timeline 3: older histories go, the
		// chain from 3 up and the newest stay.
		{"kept backup on timeline 3", build(3, map[uint32][]uint64{1: {1, 2}, 2: {2, 3}, 3: {5, 6}}, "00000002.history", "00000003.history", "00000004.history"),
			[]string{"00000003.history", "00000004.history"}, []string{"00000002.history"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p, err := Make(tc.inv, Policy{KeepLast: 1, Grace: time.Minute}, now)
			if err != nil {
				t.Fatal(err)
			}
			h := historyItems(p)
			for _, k := range tc.keep {
				if it, ok := h[k]; !ok || it.Delete {
					t.Errorf("%s: %+v, want kept", k, it)
				}
			}
			for _, k := range tc.delete {
				if it, ok := h[k]; !ok || !it.Delete {
					t.Errorf("%s: %+v, want deleted", k, it)
				}
			}
		})
	}
}

// Load reads the leases it lists, and a plan from it keeps a running
// backup whatever the age of its chunks.
func TestLoadReadsLeases(t *testing.T) {
	ctx := context.Background()
	store := memory.New()
	a := archive.New(store, slog.New(slog.DiscardHandler))
	if _, err := a.ClaimIdentity(ctx, archive.Identity{SystemIdentifier: 1, PGVersion: "15", SegmentSize: segSize}); err != nil {
		t.Fatal(err)
	}
	put := func(key string, b []byte) {
		if err := store.Put(ctx, key, bytes.NewReader(b), int64(len(b))); err != nil {
			t.Fatal(err)
		}
	}
	b := mkBackup("20261120T000000Z", 1, 2, time.Now().Add(-time.Hour))
	b.Format = manifest.Format
	j, _ := json.Marshal(b)
	put(manifest.Prefix+b.ID+"/manifest.json", j)
	put(manifest.Prefix+"20261121T000000Z/base.tar.00000", []byte("data"))
	if _, err := a.AcquireLease(ctx, archive.BackupLeaseKey("20261121T000000Z"), archive.LeaseOptions{Kind: "backup push"}); err != nil {
		t.Fatal(err)
	}
	put(manifest.Prefix+"20261122T000000Z/lease.json", []byte("garbage"))
	inv, err := Load(ctx, a)
	if err != nil {
		t.Fatal(err)
	}
	if l := inv.Leases["20261121T000000Z"]; l.Lease.Token == "" || l.Damaged || l.Modified.IsZero() {
		t.Errorf("live lease as loaded: %+v", l)
	}
	if l := inv.Leases["20261122T000000Z"]; !l.Damaged {
		t.Errorf("damaged lease as loaded: %+v", l)
	}
	// Now, the fresh lease keeps its backup; an hour later, never
	// renewed, it has expired and the backup is debris.
	p, err := Make(inv, Policy{KeepLast: 1}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	for _, it := range itemsOf(p, manifest.Prefix+"20261121T000000Z/") {
		if it.Delete {
			t.Errorf("live lease: %s deleted (%s)", it.Key, it.Reason)
		}
	}
	p, _ = Make(inv, Policy{KeepLast: 1}, time.Now().Add(time.Hour))
	for _, it := range itemsOf(p, manifest.Prefix+"20261121T000000Z/") {
		if !it.Delete {
			t.Errorf("an hour later, the unrenewed lease still protects %s (%s)", it.Key, it.Reason)
		}
	}
}
