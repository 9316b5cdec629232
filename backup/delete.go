// Package backup takes base backups into an archive: it streams the
// server's tar archives in sealed chunks, verifies them against the
// server's backup_manifest, waits for the WAL they need, writes the
// manifest (package manifest) last, and deletes backups.
package backup

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/walship/walship/archive"
	"github.com/walship/walship/backends"
	"github.com/walship/walship/catalog"
	"github.com/walship/walship/manifest"
)

var (
	// ErrIncomplete is wrapped when the server's data did not verify, or
	// the WAL the backup needs did not reach the archive in time.
	ErrIncomplete = errors.New("backup incomplete")
	// ErrLost is wrapped when an object the backup wrote is no longer in
	// the archive as it was stored (removed or changed while the backup ran).
	ErrLost = errors.New("backup data lost from the archive while the backup ran")
	// ErrRunning is wrapped when the backup has no manifest yet and a live
	// lease: a backup push is writing it.
	ErrRunning = errors.New("backup is running")
)

// Delete removes a backup: its manifest first, so that it stops counting
// as a backup before any of its data goes, then everything under its
// prefix. An incomplete backup (no manifest) can be deleted too.
func Delete(ctx context.Context, store backends.Storage, id string) error {
	if err := manifest.ValidID(id); err != nil {
		return err
	}
	var keys []string
	err := store.List(ctx, manifest.Prefix+id+"/", func(o backends.ObjectInfo) error {
		keys = append(keys, o.Key)
		return nil
	})
	if err != nil {
		return fmt.Errorf("list backup %s: %w", id, err)
	}
	if len(keys) == 0 {
		return fmt.Errorf("backup %s: %w", id, manifest.ErrNoBackup)
	}
	if err := store.Delete(ctx, manifest.Key(id)); err != nil {
		return fmt.Errorf("delete backup %s: %w", id, err)
	}
	if err := store.Delete(ctx, keys...); err != nil {
		return fmt.Errorf("delete backup %s: %w", id, err)
	}
	return nil
}

// putManifest writes manifest.json, which makes the backup exist.
func putManifest(ctx context.Context, store backends.Storage, m *manifest.Manifest) error {
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	b = append(b, '\n')
	if err := store.PutIfAbsent(ctx, manifest.Key(m.ID), bytes.NewReader(b), int64(len(b))); err != nil {
		return fmt.Errorf("write backup manifest: %w", err)
	}
	return nil
}

// CheckNotRunning fails with ErrRunning when backup id has no manifest
// and its lease is live at now: deleting it would pull the data from
// under a running backup push (which would then fail, or, had it not
// written a chunk yet, renew the lease and carry on).
func CheckNotRunning(ctx context.Context, a *archive.Archive, id string, now time.Time) error {
	if _, err := manifest.Get(ctx, a.Storage(), id); err == nil || !errors.Is(err, manifest.ErrNoBackup) {
		return nil // complete, or damaged: not running
	}
	l, info, err := a.ReadLease(ctx, archive.BackupLeaseKey(id))
	switch {
	case errors.Is(err, backends.ErrNotFound), errors.Is(err, archive.ErrLeaseDamaged):
		return nil
	case err != nil:
		return err
	case l.Live(now, info.Modified) && !holderGone(l.Holder):
		return fmt.Errorf("backup %s: %w (lease held by %s, renewed %s; it lapses at %s if that push is gone): stop it, or use --force",
			id, ErrRunning, l.Holder, l.Renewed.UTC().Format(time.RFC3339), l.Expires(info.Modified).UTC().Format(time.RFC3339))
	}
	return nil
}

// holderGone reports whether a lease's holder ("host:pid") was a process
// on this host that no longer exists. A holder elsewhere, or a pid that
// exists (even reused by another process), is not gone.
func holderGone(holder string) bool {
	host, pidText, ok := strings.Cut(holder, ":")
	me, err := os.Hostname()
	if !ok || err != nil || host != me {
		return false
	}
	pid, err := strconv.Atoi(pidText)
	if err != nil || pid <= 0 {
		return false
	}
	return errors.Is(syscall.Kill(pid, 0), syscall.ESRCH)
}

// ErrHasDependants is returned by Remove for a backup that incremental backups
// are built on and that cannot be restored without it.
var ErrHasDependants = errors.New("backup has incremental backups built on it")

// DeleteOptions say what Remove may do beyond deleting one finished backup.
type DeleteOptions struct {
	Force          bool // delete a backup that is still running (its push then fails)
	WithDependants bool // also delete the incrementals built on it, newest first
	Now            time.Time
}

// Remove deletes backup id after the checks an operator relies on: not a
// running backup, nor the parent a running incremental is taken against
// (unless Force), and not the parent of incrementals (unless
// WithDependants, which deletes them first, newest first, so that no
// incremental is ever left without its parent). It returns the ids
// deleted, in order.
func Remove(ctx context.Context, a *archive.Archive, id string, o DeleteOptions) ([]string, error) {
	if err := manifest.ValidID(id); err != nil {
		return nil, err
	}
	if !o.Force {
		if err := CheckNotRunning(ctx, a, id, o.Now); err != nil {
			return nil, err
		}
	}
	c, err := catalog.Load(ctx, a, catalog.Backups|catalog.Leases)
	if err != nil {
		return nil, err
	}
	if !o.Force {
		for other, l := range c.Leases {
			if live, _ := l.Live(o.Now); live && l.Lease.Parent == id {
				return nil, fmt.Errorf("backup %s: %w: incremental backup %s is being taken against it (lease held by %s); wait for it, or use --force",
					id, ErrHasDependants, other, l.Lease.Holder)
			}
		}
	}
	deps := c.Dependants(id)
	if len(deps) > 0 && !o.WithDependants {
		ids := make([]string, len(deps))
		for i, d := range deps {
			ids[i] = d.ID
		}
		return nil, fmt.Errorf("backup %s: %w (%s): they cannot be restored without it; delete them first, or pass --with-dependants to delete them too",
			id, ErrHasDependants, strings.Join(ids, ", "))
	}
	var done []string
	for i := len(deps) - 1; i >= 0; i-- {
		if err := Delete(ctx, a.Storage(), deps[i].ID); err != nil {
			return done, err
		}
		done = append(done, deps[i].ID)
	}
	if err := Delete(ctx, a.Storage(), id); err != nil {
		return done, err
	}
	return append(done, id), nil
}
