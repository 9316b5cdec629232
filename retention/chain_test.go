package retention

import (
	"strings"
	"testing"
	"time"

	"github.com/walship/walship/archive"
	"github.com/walship/walship/catalog"
	"github.com/walship/walship/manifest"
)

// An incremental is never kept without its whole chain, and keep_last
// counts chains (a full backup with its incrementals), not backups.
func TestRetentionKeepsWholeChains(t *testing.T) {
	incr := func(m *manifest.Manifest, parent string) *manifest.Manifest {
		m.Type, m.Parent = manifest.TypeIncremental, parent
		return m
	}
	old := now.Add(-72 * time.Hour)
	f1 := mkBackup("20261123T000000Z", 1, 2, old)
	i1 := incr(mkBackup("20261123T060000Z", 1, 4, old.Add(6*time.Hour)), f1.ID)
	i2 := incr(mkBackup("20261123T120000Z", 1, 6, old.Add(12*time.Hour)), i1.ID)
	f2 := mkBackup("20261124T000000Z", 1, 8, old.Add(24*time.Hour))
	j1 := incr(mkBackup("20261124T060000Z", 1, 10, old.Add(30*time.Hour)), f2.ID)
	c := &catalog.Catalog{SegSize: segSize, Backups: []*manifest.Manifest{f1, i1, i2, f2, j1}}
	for _, b := range c.Backups {
		c.Objects = append(c.Objects, catalog.Object{Key: manifest.Key(b.ID), Size: 1, Modified: old})
	}
	for n := uint64(1); n <= 12; n++ {
		c.Objects = append(c.Objects, catalog.Object{Key: "wal/00000001/" + name(1, n), Size: 1, Modified: old})
	}
	kept := func(p *Plan) string { return strings.Join(p.KeptBackups, " ") }

	// keep_last 1: the newest chain, F2 and J1, however many it holds.
	p, err := Make(c, Policy{KeepLast: 1}, now)
	if err != nil {
		t.Fatal(err)
	}
	if got := kept(p); got != f2.ID+" "+j1.ID {
		t.Errorf("keep-last 1 kept %q, want F2 and J1", got)
	}
	// keep_last 2: both chains, all five.
	if p, _ = Make(c, Policy{KeepLast: 2}, now); len(p.KeptBackups) != 5 {
		t.Errorf("keep-last 2 kept %v, want all five", p.KeptBackups)
	}
	// keep_within a window that reaches only I2's time: I2 needs I1 and
	// F1, which are kept with it and say why.
	p, _ = Make(c, Policy{KeepWithin: now.Sub(i2.StopTime) + time.Hour}, now)
	for _, id := range []string{f1.ID, i1.ID, i2.ID} {
		if !strings.Contains(kept(p), id) {
			t.Errorf("keep-within kept %q, which lacks %s of I2's chain", kept(p), id)
		}
	}
	for _, it := range p.Items {
		if it.Key == manifest.Key(f1.ID) && (it.Delete || !strings.Contains(it.Reason, "chain of kept incremental backup "+i2.ID)) {
			t.Errorf("F1's manifest: %+v", it)
		}
	}
	// Never: an incremental kept while a member of its chain is deleted.
	for _, pol := range []Policy{{KeepLast: 1}, {KeepLast: 2}, {KeepWithin: time.Hour}, {KeepWithin: 50 * time.Hour}, {KeepLast: 1, KeepWithin: 60 * time.Hour}} {
		p, _ := Make(c, pol, now)
		keep := map[string]bool{}
		for _, id := range p.KeptBackups {
			keep[id] = true
		}
		for _, b := range c.Backups {
			chain, _ := c.Chain(b)
			for _, m := range chain {
				if keep[b.ID] && !keep[m.ID] {
					t.Errorf("%+v: kept %s but deleted %s of its chain", pol, b.ID, m.ID)
				}
			}
		}
	}
}

// A running incremental's lease names its parent: that parent and its
// chain are kept however old, or the new backup would complete orphaned.
func TestRetentionKeepsTheParentOfARunningIncremental(t *testing.T) {
	old := now.Add(-72 * time.Hour)
	f1 := mkBackup("20261123T000000Z", 1, 2, old)
	i1 := mkBackup("20261123T060000Z", 1, 4, old.Add(6*time.Hour))
	i1.Type, i1.Parent = manifest.TypeIncremental, f1.ID
	f2 := mkBackup("20261125T000000Z", 1, 8, old.Add(48*time.Hour))
	running := "20261126T110000Z"
	c := &catalog.Catalog{SegSize: segSize, Backups: []*manifest.Manifest{f1, i1, f2}, Leases: map[string]catalog.Lease{
		running: {Lease: archive.Lease{Holder: "db1:42", TTL: archive.Duration(10 * time.Minute), Renewed: now, Parent: i1.ID}, Modified: now},
	}}
	for _, b := range c.Backups {
		c.Objects = append(c.Objects, catalog.Object{Key: manifest.Key(b.ID), Size: 1, Modified: old})
	}
	c.Objects = append(c.Objects, catalog.Object{Key: archive.BackupLeaseKey(running), Size: 1, Modified: now})
	p, err := Make(c, Policy{KeepLast: 1, Grace: time.Minute}, now)
	if err != nil {
		t.Fatal(err)
	}
	kept := strings.Join(p.KeptBackups, " ")
	if !strings.Contains(kept, f1.ID) || !strings.Contains(kept, i1.ID) || !strings.Contains(kept, f2.ID) {
		t.Errorf("kept %q: want F2 (the last chain) and I1 with F1 (the running incremental's parent chain)", kept)
	}
}
