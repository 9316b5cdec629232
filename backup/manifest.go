// Package backup takes base backups into an archive and reads them back:
// the manifest, the chunked and sealed tar streams, listing and deletion.
//
// Layout, under the archive root:
//
//	backups/<id>/<archive>.<seq>     sealed chunks of each tar stream
//	backups/<id>/backup_manifest     the server's manifest, sealed
//	backups/<id>/manifest.json       walship's manifest, written last
//	backups/<id>/lease.json          the running backup's lease (package archive)
//
// A backup exists only once manifest.json does. A prefix without one is a
// running backup while its lease is live, and otherwise debris of a failed
// run.
package backup

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/walship/walship/archive"
	"github.com/walship/walship/backends"
	"github.com/walship/walship/backends/retry"
	"github.com/walship/walship/sealed"
	"github.com/walship/walship/segment"
)

const (
	// Prefix holds every backup.
	Prefix       = "backups/"
	manifestName = "manifest.json"
	serverName   = "backup_manifest"
	// ManifestFormat is the version of manifest.json this code writes.
	ManifestFormat = 1
	idLayout       = "20060102T150405Z"
)

var (
	// ErrNoBackup: no complete backup with that id.
	ErrNoBackup = errors.New("no such backup")
	// ErrBadID: the id is not one walship makes.
	ErrBadID = errors.New("not a backup id")
	// ErrIncomplete: the server's data did not verify, or the WAL the backup
	// needs did not reach the archive in time.
	ErrIncomplete = errors.New("backup incomplete")
	// ErrLost: an object the backup wrote is no longer in the archive as
	// it was stored (removed or changed while the backup ran).
	ErrLost = errors.New("backup data lost from the archive while the backup ran")
	// ErrRunning: the backup has no manifest yet and a live lease: a
	// backup push is writing it.
	ErrRunning = errors.New("backup is running")
)

var idPattern = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^[0-9]{8}T[0-9]{6}Z$`) })

// ValidID checks that id is a backup id (UTC start time, 20261126T071033Z).
func ValidID(id string) error {
	if !idPattern().MatchString(id) {
		return fmt.Errorf("%w: %q (want the form 20261126T071033Z)", ErrBadID, id)
	}
	return nil
}

// Chunk is one sealed piece of a tar stream.
type Chunk struct {
	Key        string `json:"key"`
	Size       int64  `json:"size"`        // bytes before compression
	StoredSize int64  `json:"stored_size"` // bytes of the sealed object
	SHA256     string `json:"sha256"`      // hex, of the bytes before compression
}

// Archive is one tar stream: base.tar for the data directory, <oid>.tar
// for each tablespace.
type Archive struct {
	Name          string  `json:"name"`
	TablespaceOID uint32  `json:"tablespace_oid,omitempty"`
	Location      string  `json:"location,omitempty"`
	Size          int64   `json:"size"`
	StoredSize    int64   `json:"stored_size"`
	Chunks        []Chunk `json:"chunks"`
}

// WALRange is a timeline's stretch of WAL the backup needs, from the
// server's manifest.
type WALRange struct {
	Timeline uint32      `json:"timeline"`
	Start    segment.LSN `json:"start_lsn"`
	End      segment.LSN `json:"end_lsn"`
}

// Manifest describes a complete backup.
type Manifest struct {
	Format           int         `json:"format"`
	ID               string      `json:"id"`
	Label            string      `json:"label"`
	PGVersion        string      `json:"pg_version"`
	PGVersionNum     int         `json:"pg_version_num"`
	SystemIdentifier uint64      `json:"system_identifier,string"`
	SegmentSize      uint64      `json:"segment_size"`
	Timeline         uint32      `json:"timeline"`
	StartLSN         segment.LSN `json:"start_lsn"`
	StopLSN          segment.LSN `json:"stop_lsn"`
	StopTimeline     uint32      `json:"stop_timeline"`
	StartWAL         string      `json:"start_wal"`
	StopWAL          string      `json:"stop_wal"`
	// StartTime is the server's clock at the start checkpoint (backup_label).
	StartTime time.Time `json:"start_time"`
	// StopTime is an upper bound on the server's clock at the stop
	// position: StartTime plus the time this client saw pass, so that clock
	// skew between client and server cannot make a target look reachable.
	StopTime    time.Time  `json:"stop_time"`
	FromStandby bool       `json:"from_standby"`
	NextXID     uint64     `json:"next_xid"` // full transaction id from pg_control's checkpoint
	WALRanges   []WALRange `json:"wal_ranges"`
	Compression string     `json:"compression"`
	Size        int64      `json:"size"`
	StoredSize  int64      `json:"stored_size"`
	Files       int        `json:"files"`
	Archives    []Archive  `json:"archives"`
	// ServerManifest is the server's backup_manifest, verified against the
	// received files before upload.
	ServerManifest Chunk `json:"server_manifest"`
}

func manifestKey(id string) string { return Prefix + id + "/" + manifestName }

// Keys lists every object the backup consists of, manifest.json last.
func (m *Manifest) Keys() []string {
	var keys []string
	for _, a := range m.Archives {
		for _, c := range a.Chunks {
			keys = append(keys, c.Key)
		}
	}
	if m.ServerManifest.Key != "" {
		keys = append(keys, m.ServerManifest.Key)
	}
	return append(keys, manifestKey(m.ID))
}

// Get reads one backup's manifest.
func Get(ctx context.Context, store backends.Storage, id string) (*Manifest, error) {
	if err := ValidID(id); err != nil {
		return nil, err
	}
	b, _, err := retry.ReadAll(ctx, store, manifestKey(id), 64<<20)
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
	if m.Format != ManifestFormat {
		return nil, fmt.Errorf("backup %s: manifest format %d is not one this walship reads", id, m.Format)
	}
	if m.ID != id {
		return nil, fmt.Errorf("backup %s: manifest names backup %q: %w", id, m.ID, sealed.ErrChecksum)
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
		id, rest, ok := strings.Cut(strings.TrimPrefix(o.Key, Prefix), "/")
		if !ok || ValidID(id) != nil {
			return nil
		}
		if _, seen := ids[id]; !seen {
			ids[id] = false
			order = append(order, id)
		}
		if rest == manifestName {
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

// Delete removes a backup: its manifest first, so that it stops counting
// as a backup before any of its data goes, then everything under its
// prefix. An incomplete backup (no manifest) can be deleted too.
func Delete(ctx context.Context, store backends.Storage, id string) error {
	if err := ValidID(id); err != nil {
		return err
	}
	var keys []string
	err := store.List(ctx, Prefix+id+"/", func(o backends.ObjectInfo) error {
		keys = append(keys, o.Key)
		return nil
	})
	if err != nil {
		return fmt.Errorf("list backup %s: %w", id, err)
	}
	if len(keys) == 0 {
		return fmt.Errorf("backup %s: %w", id, ErrNoBackup)
	}
	if err := store.Delete(ctx, manifestKey(id)); err != nil {
		return fmt.Errorf("delete backup %s: %w", id, err)
	}
	if err := store.Delete(ctx, keys...); err != nil {
		return fmt.Errorf("delete backup %s: %w", id, err)
	}
	return nil
}

// putManifest writes manifest.json, which makes the backup exist.
func putManifest(ctx context.Context, store backends.Storage, m *Manifest) error {
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	b = append(b, '\n')
	if err := store.PutIfAbsent(ctx, manifestKey(m.ID), bytes.NewReader(b), int64(len(b))); err != nil {
		return fmt.Errorf("write backup manifest: %w", err)
	}
	return nil
}

// CheckNotRunning fails with ErrRunning when backup id has no manifest
// and its lease is live at now: deleting it would pull the data from
// under a running backup push (which would then fail, or, had it not
// written a chunk yet, renew the lease and carry on).
func CheckNotRunning(ctx context.Context, a *archive.Archive, id string, now time.Time) error {
	if _, err := Get(ctx, a.Storage(), id); err == nil || !errors.Is(err, ErrNoBackup) {
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
