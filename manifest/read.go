package manifest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/walship/walship/archive"

	"github.com/walship/walship/backends"
	"github.com/walship/walship/backends/retry"
	"github.com/walship/walship/sealed"
)

// Get reads one backup's manifest.
func Get(ctx context.Context, store backends.Storage, id string) (*Manifest, error) {
	if err := ValidID(id); err != nil {
		return nil, err
	}
	b, _, err := retry.ReadAll(ctx, store, Key(id), 64<<20)
	if errors.Is(err, backends.ErrNotFound) {
		return nil, fmt.Errorf("backup %s: %w", id, ErrNoBackup)
	}
	if err != nil {
		return nil, fmt.Errorf("read backup %s: %w", id, err)
	}
	return decodeManifest(id, b)
}

func decodeManifest(id string, b []byte) (*Manifest, error) {
	var m Manifest
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("backup %s: manifest is damaged: %w", id, sealed.ErrChecksum)
	}
	if m.Format != Format {
		return nil, fmt.Errorf("backup %s: manifest format %d is not one this walship reads", id, m.Format)
	}
	if m.ID != id {
		return nil, fmt.Errorf("backup %s: manifest names backup %q: %w", id, m.ID, sealed.ErrChecksum)
	}
	switch {
	case m.Type != "" && m.Type != TypeFull && m.Type != TypeIncremental:
		return nil, fmt.Errorf("backup %s: manifest type %q is not one this walship reads", id, m.Type)
	case m.Incremental() && ValidID(m.Parent) != nil:
		return nil, fmt.Errorf("backup %s: incremental without a valid parent: %w", id, sealed.ErrChecksum)
	case !m.Incremental() && m.Parent != "":
		return nil, fmt.Errorf("backup %s: a full backup names a parent: %w", id, sealed.ErrChecksum)
	}
	prefix := Prefix + id + "/"
	for _, a := range m.Archives {
		for _, c := range a.Chunks {
			if !strings.HasPrefix(c.Key, prefix) || backends.ValidKey(c.Key) != nil {
				return nil, fmt.Errorf("backup %s: manifest names a chunk outside the backup: %w", id, sealed.ErrChecksum)
			}
		}
	}
	return &m, nil
}

// Listing is what List finds: complete backups oldest first, and the ids
// of prefixes without a manifest (failed or running backups).
type Listing struct {
	Backups    []*Manifest
	Incomplete []string
}

// List reads every backup's manifest. A manifest that cannot be read fails
// the whole listing: callers decide what to keep from it.
func List(ctx context.Context, store backends.Storage) (Listing, error) {
	var out Listing
	ids := map[string]bool{}
	var order []string
	err := store.List(ctx, Prefix, func(o backends.ObjectInfo) error {
		k := archive.ParseKey(o.Key)
		id, rest := k.BackupID, k.Object
		if k.Kind != archive.KeyBackup || ValidID(id) != nil {
			return nil //nolint:nilerr // a prefix walship did not make is no backup: skipped, not a listing failure
		}
		if _, seen := ids[id]; !seen {
			ids[id] = false
			order = append(order, id)
		}
		if rest == Name {
			ids[id] = true
		}
		return nil
	})
	if err != nil {
		return out, fmt.Errorf("list backups: %w", err)
	}
	for _, id := range order {
		if !ids[id] {
			out.Incomplete = append(out.Incomplete, id)
			continue
		}
		m, err := Get(ctx, store, id)
		if err != nil {
			return out, err
		}
		out.Backups = append(out.Backups, m)
	}
	sort.SliceStable(out.Backups, func(i, j int) bool { return out.Backups[i].StartTime.Before(out.Backups[j].StartTime) })
	return out, nil
}
