// Package manifest is the description of a base backup in the archive:
// walship's manifest.json (the backup's identity, positions, times, WAL
// ranges and every chunk with its size and SHA-256), the part of the
// server's backup_manifest walship checks, and reading and listing them.
// It is what restore planning, retention, verify and status read about a
// backup, and it imports neither PostgreSQL's protocol nor a storage SDK.
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
package manifest

import (
	"errors"
	"fmt"
	"regexp"
	"sync"
	"time"

	"github.com/walship/walship/archive"

	"github.com/walship/walship/segment"
)

const (
	// Prefix holds every backup.
	Prefix = archive.BackupsPrefix
	// Name is the manifest's object name under a backup's prefix.
	Name = "manifest.json"
	// ServerName is the server's backup_manifest under a backup's prefix.
	ServerName = "backup_manifest"
	// Format is the version of manifest.json this code writes.
	Format = 1
	// IDLayout is the time layout of a backup id.
	IDLayout = "20060102T150405Z"
)

var (
	// ErrNoBackup is wrapped when there is no complete backup with that id.
	ErrNoBackup = errors.New("no such backup")
	// ErrBadID is wrapped when an id is not one walship makes.
	ErrBadID = errors.New("not a backup id")
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
	// Type is TypeFull or TypeIncremental. Manifests written before
	// incremental backups carry none and are full.
	Type string `json:"type,omitempty"`
	// Parent is the backup an incremental was taken against: the server
	// was sent Parent's backup_manifest (UPLOAD_MANIFEST) and sent back
	// only the blocks changed since. Empty for a full backup.
	Parent string `json:"parent,omitempty"`
}

// The backup types.
const (
	TypeFull        = "full"
	TypeIncremental = "incremental"
)

// Incremental reports whether m needs its parent chain to be restored.
func (m *Manifest) Incremental() bool { return m.Type == TypeIncremental }

// Kind is m's type as shown to operators: "full" for manifests that
// predate the field.
func (m *Manifest) Kind() string {
	if m.Type == "" {
		return TypeFull
	}
	return m.Type
}

// Key is the key of backup id's manifest.json.
func Key(id string) string { return Prefix + id + "/" + Name }

// ServerKey is the key of backup id's sealed server backup_manifest.
func ServerKey(id string) string { return Prefix + id + "/" + ServerName }

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
	return append(keys, Key(m.ID))
}

// LastSegment is the segment holding the last byte of r (its first segment
// if r is empty).
func LastSegment(r WALRange, segSize uint64) segment.Name {
	n := r.Start.SegNo(segSize)
	if r.End > r.Start {
		n = uint64(r.End-1) / segSize
	}
	return segment.Name{TLI: r.Timeline, SegNo: n}
}

// NeededWAL lists the segments a backup cannot be restored without, each
// on the timeline PostgreSQL reads it from: the newest range that began at
// or before it.
func (m *Manifest) NeededWAL() []segment.Name {
	ss := m.SegmentSize
	first := m.WALRanges[0].Start.SegNo(ss)
	last := LastSegment(m.WALRanges[len(m.WALRanges)-1], ss).SegNo
	var out []segment.Name
	for n := first; n <= last; n++ {
		tli := m.WALRanges[0].Timeline
		for _, r := range m.WALRanges {
			if r.Start.SegNo(ss) <= n {
				tli = r.Timeline
			}
		}
		out = append(out, segment.Name{TLI: tli, SegNo: n})
	}
	return out
}
