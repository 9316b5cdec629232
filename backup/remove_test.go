package backup

import (
	"context"
	"errors"
	"log/slog"
	"testing"
	"time"

	"github.com/walship/walship/archive"
	"github.com/walship/walship/backends/memory"
	"github.com/walship/walship/manifest"
)

// A backup incrementals are built on is not deleted alone; with
// WithDependants they go first, newest first, then it.
func TestRemoveRefusesOrphaningIncrementals(t *testing.T) {
	ctx := context.Background()
	store := memory.New()
	a := archive.New(store, slog.New(slog.DiscardHandler))
	if _, err := a.ClaimIdentity(ctx, archive.Identity{SystemIdentifier: 9, PGVersion: "17", SegmentSize: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	t0 := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	put := func(id string, hour int, parent string) {
		m := &manifest.Manifest{Format: manifest.Format, ID: id, SystemIdentifier: 9, SegmentSize: 1 << 20, StartTime: t0.Add(time.Duration(hour) * time.Hour)}
		if parent != "" {
			m.Type, m.Parent = manifest.TypeIncremental, parent
		}
		if err := putManifest(ctx, store, m); err != nil {
			t.Fatal(err)
		}
	}
	put("20261201T000000Z", 0, "")
	put("20261201T010000Z", 1, "20261201T000000Z")
	put("20261201T020000Z", 2, "20261201T010000Z")
	put("20261201T030000Z", 3, "")
	now := t0.Add(4 * time.Hour)
	_, err := Remove(ctx, a, "20261201T010000Z", DeleteOptions{Now: now})
	if !errors.Is(err, ErrHasDependants) {
		t.Fatalf("delete of a parent: %v, want ErrHasDependants", err)
	}
	if _, err := manifest.Get(ctx, store, "20261201T010000Z"); err != nil {
		t.Fatalf("the refused delete removed something: %v", err)
	}
	done, err := Remove(ctx, a, "20261201T000000Z", DeleteOptions{Now: now, WithDependants: true})
	if err != nil || len(done) != 3 || done[0] != "20261201T020000Z" || done[2] != "20261201T000000Z" {
		t.Fatalf("delete with dependants: %v, %v", done, err)
	}
	// The unrelated full stays; a backup without dependants goes alone.
	if done, err := Remove(ctx, a, "20261201T030000Z", DeleteOptions{Now: now}); err != nil || len(done) != 1 {
		t.Fatalf("delete of a lone full: %v, %v", done, err)
	}
}

// The parent a running incremental backup is taken against (its live
// lease names it) is not deleted under it, unless forced.
func TestRemoveRefusesTheParentOfARunningIncremental(t *testing.T) {
	ctx := context.Background()
	store := memory.New()
	a := archive.New(store, slog.New(slog.DiscardHandler))
	if _, err := a.ClaimIdentity(ctx, archive.Identity{SystemIdentifier: 9, PGVersion: "17", SegmentSize: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	full := &manifest.Manifest{Format: manifest.Format, ID: "20261201T000000Z", SystemIdentifier: 9, SegmentSize: 1 << 20}
	if err := putManifest(ctx, store, full); err != nil {
		t.Fatal(err)
	}
	held, err := a.AcquireLease(ctx, archive.BackupLeaseKey("20261201T010000Z"), archive.LeaseOptions{Kind: "backup push", Parent: full.ID})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Remove(ctx, a, full.ID, DeleteOptions{Now: time.Now()}); !errors.Is(err, ErrHasDependants) {
		t.Fatalf("delete of a running incremental's parent: %v, want ErrHasDependants", err)
	}
	if _, err := manifest.Get(ctx, store, full.ID); err != nil {
		t.Fatalf("the refused delete removed it: %v", err)
	}
	if err := held.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if done, err := Remove(ctx, a, full.ID, DeleteOptions{Now: time.Now()}); err != nil || len(done) != 1 {
		t.Fatalf("delete once the incremental ended: %v, %v", done, err)
	}
}
