package retention

import (
	"context"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"time"

	"github.com/walship/walship/archive"
	"github.com/walship/walship/catalog"
	"github.com/walship/walship/manifest"
)

// Load reads the catalog the planner needs: the listing, the complete
// backups, the leases and the slots. Any failure fails it: a plan is never
// made from a partial catalog.
func Load(ctx context.Context, a *archive.Archive) (*catalog.Catalog, error) {
	return catalog.Load(ctx, a, catalog.Backups|catalog.Leases|catalog.Slots)
}

// Run plans at now from a fresh catalog, logs the plan's notes as
// warnings, and with apply deletes what the plan deletes. It returns the
// plan and how many objects were deleted.
func Run(ctx context.Context, a *archive.Archive, p Policy, now time.Time, apply bool, log *slog.Logger) (*Plan, int, error) {
	if err := p.Check(); err != nil {
		return nil, 0, err
	}
	c, err := Load(ctx, a)
	if err != nil {
		return nil, 0, fmt.Errorf("retention: nothing deleted: %w", err)
	}
	plan, err := Make(c, p, now)
	if err != nil {
		return nil, 0, err
	}
	for _, n := range plan.Notes {
		log.Warn(n)
	}
	if !apply {
		return plan, 0, nil
	}
	n, err := Apply(ctx, a, plan, log)
	if err != nil {
		return plan, n, fmt.Errorf("retention: %w", err)
	}
	return plan, n, nil
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
		k := archive.ParseKey(it.Key)
		switch {
		case k.Kind == archive.KeyBackup && k.Object == manifest.Name:
			manifests = append(manifests, it.Key)
		case k.Kind == archive.KeyBackup:
			data = append(data, it.Key)
		case strings.HasPrefix(it.Key, "wal/"):
			wal = append(wal, it.Key)
		default:
			hist = append(hist, it.Key)
		}
	}
	sort.Slice(wal, func(i, j int) bool { return archive.SegmentAfter(walName(wal[j]), walName(wal[i])) })
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

// walName is the file name a WAL key stores.
func walName(key string) string { return archive.ParseKey(key).File.String() }
