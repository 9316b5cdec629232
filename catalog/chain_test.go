package catalog

import (
	"errors"
	"testing"
	"time"

	"github.com/walship/walship/manifest"
)

func TestChain(t *testing.T) {
	t0 := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	mk := func(id string, hour int, parent string) *manifest.Manifest {
		m := &manifest.Manifest{ID: id, SystemIdentifier: 7, StartTime: t0.Add(time.Duration(hour) * time.Hour), Type: manifest.TypeFull}
		if parent != "" {
			m.Type, m.Parent = manifest.TypeIncremental, parent
		}
		return m
	}
	f1, i1, i2 := mk("F1", 0, ""), mk("I1", 1, "F1"), mk("I2", 2, "I1")
	f2, j1 := mk("F2", 3, ""), mk("J1", 4, "F2")
	orphan := mk("O1", 5, "GONE")
	c := &Catalog{Backups: []*manifest.Manifest{f1, i1, i2, f2, j1, orphan}}
	ids := func(ms []*manifest.Manifest) (s []string) {
		for _, m := range ms {
			s = append(s, m.ID)
		}
		return s
	}
	for b, want := range map[*manifest.Manifest][]string{f1: {"F1"}, i2: {"F1", "I1", "I2"}, j1: {"F2", "J1"}} {
		got, err := c.Chain(b)
		if err != nil || len(got) != len(want) {
			t.Fatalf("chain of %s: %v, %v", b.ID, ids(got), err)
		}
		for i := range want {
			if got[i].ID != want[i] {
				t.Errorf("chain of %s: %v, want %v", b.ID, ids(got), want)
			}
		}
	}
	if _, err := c.Chain(orphan); !errors.Is(err, ErrBrokenChain) {
		t.Errorf("orphan: %v", err)
	}
	// A parent that is not older, or of another cluster, breaks the chain.
	bad := mk("B1", -1, "F2")
	other := mk("B2", 6, "F2")
	other.SystemIdentifier = 8
	c.Backups = append(c.Backups, bad, other)
	for _, b := range []*manifest.Manifest{bad, other} {
		if _, err := c.Chain(b); !errors.Is(err, ErrBrokenChain) {
			t.Errorf("%s: %v", b.ID, err)
		}
	}
	// A parent started in the same second (backup_label's resolution) is
	// a parent.
	same := mk("S1", 3, "F2")
	c.Backups = append(c.Backups, same)
	if got, err := c.Chain(same); err != nil || len(got) != 2 {
		t.Errorf("a parent of the same second: %v, %v", ids(got), err)
	}
	// A loop never hangs.
	x, y := mk("X", 7, "Y"), mk("Y", 8, "X")
	c.Backups = append(c.Backups, x, y)
	if _, err := c.Chain(x); !errors.Is(err, ErrBrokenChain) {
		t.Errorf("loop: %v", err)
	}
	if got := ids(c.Dependants("F1")); len(got) != 2 || got[0] != "I1" || got[1] != "I2" {
		t.Errorf("dependants of F1: %v", got)
	}
	if got := ids(c.Dependants("I2")); len(got) != 0 {
		t.Errorf("dependants of I2: %v", got)
	}
}
