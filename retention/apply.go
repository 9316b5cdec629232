package retention

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"time"

	"github.com/walship/walship/archive"
	"github.com/walship/walship/backends"
	"github.com/walship/walship/manifest"
)

// Load lists everything the planner needs. Any listing or read failure
// fails it: a plan is never made from a partial inventory.
func Load(ctx context.Context, a *archive.Archive) (Inventory, []archive.Slot, error) {
	var inv Inventory
	id, err := a.Identity(ctx)
	if err != nil {
		return inv, nil, err
	}
	inv.SegmentSize = id.SegmentSize
	store := a.Storage()
	for _, prefix := range []string{"wal/", "history/", manifest.Prefix} {
		err := store.List(ctx, prefix, func(o backends.ObjectInfo) error {
			inv.Objects = append(inv.Objects, Object{Key: o.Key, Size: o.Size, Modified: o.Modified})
			return nil
		})
		if err != nil {
			return inv, nil, fmt.Errorf("list %s: %w", prefix, err)
		}
	}
	if inv.Leases, err = loadLeases(ctx, a, inv.Objects); err != nil {
		return inv, nil, err
	}
	l, err := manifest.List(ctx, store)
	if err != nil {
		return inv, nil, err
	}
	inv.Backups = l.Backups
	slots, err := a.ListSlots(ctx)
	if err != nil {
		return inv, nil, err
	}
	return inv, slots, nil
}

// loadLeases reads every backup lease the listing found. A damaged one
// counts from its modification time; one gone since the listing counts as
// live for this run (its backup just ended); any other read failure fails.
func loadLeases(ctx context.Context, a *archive.Archive, objects []Object) (map[string]BackupLease, error) {
	leases := map[string]BackupLease{}
	for _, o := range objects {
		id, name, ok := strings.Cut(strings.TrimPrefix(o.Key, manifest.Prefix), "/")
		if !ok || name != archive.LeaseName || !strings.HasPrefix(o.Key, manifest.Prefix) || manifest.ValidID(id) != nil {
			continue
		}
		l, info, err := a.ReadLease(ctx, o.Key)
		switch {
		case errors.Is(err, backends.ErrNotFound):
			leases[id] = BackupLease{Modified: o.Modified, Vanished: true}
		case errors.Is(err, archive.ErrLeaseDamaged):
			leases[id] = BackupLease{Modified: later(o.Modified, info.Modified), Damaged: true}
		case err != nil:
			return nil, err
		default:
			leases[id] = BackupLease{Lease: l, Modified: later(o.Modified, info.Modified)}
		}
	}
	return leases, nil
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// Apply deletes what the plan deletes: first each deleted backup's
// manifest (so that it stops being a backup before any of its data goes),
// then the rest of the backups' objects, then WAL oldest first, then
// history files. It stops at the first failure; what is left is still
// consistent, and the next run finishes the job.
func Apply(ctx context.Context, a *archive.Archive, p *Plan, log *slog.Logger) (int, error) {
	var manifests, data, wal, hist []string
	for _, it := range p.Items {
		if !it.Delete {
			continue
		}
		switch {
		case strings.HasPrefix(it.Key, manifest.Prefix) && strings.HasSuffix(it.Key, "/manifest.json"):
			manifests = append(manifests, it.Key)
		case strings.HasPrefix(it.Key, manifest.Prefix):
			data = append(data, it.Key)
		case strings.HasPrefix(it.Key, "wal/"):
			wal = append(wal, it.Key)
		default:
			hist = append(hist, it.Key)
		}
	}
	sort.Slice(wal, func(i, j int) bool { return archive.SegmentAfter(wal[j][13:], wal[i][13:]) })
	done := 0
	for _, group := range [][]string{manifests, data, wal, hist} {
		for len(group) > 0 {
			n := min(len(group), 1000)
			if err := a.Storage().Delete(ctx, group[:n]...); err != nil {
				return done, fmt.Errorf("delete: %w (after %d of %d objects)", err, done, p.DeleteCount)
			}
			done += n
			group = group[n:]
		}
	}
	log.Info("retention applied", "deleted_objects", done, "deleted_bytes", p.DeleteBytes, "kept_backups", len(p.KeptBackups),
		"deleted_backups", len(p.DeletedBackups))
	return done, nil
}
