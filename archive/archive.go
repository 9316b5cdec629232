// Package archive is walship's view of an archive on a store: where each
// file lives (the layout, its key builders and the one key parser), which
// cluster the archive belongs to (the identity), whether its store enforces
// conditional writes (probed once, recorded with the identity; a checked
// put where it does not), the push path archive_command runs (with its
// look-ahead and local proofs), and the small records beside the WAL:
// timeline heads, recorded gaps, slots and leases. Reading the archive as a
// whole is package catalog's.
package archive

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/walship/walship/backends"
	"github.com/walship/walship/segment"
)

// Errors a caller maps to exit statuses. Each is wrapped with the details.
var (
	// ErrConflict: the archive already holds a different file under this name.
	ErrConflict = errors.New("archive already holds a different file with this name")
	// ErrWrongCluster: the file or archive belongs to another cluster, another
	// PostgreSQL major version or another segment size.
	ErrWrongCluster = errors.New("archive belongs to another cluster")
	// ErrNoIdentity: the archive has no identity record, so it is not (yet) a
	// walship archive; fetch never reports "absent" from such a place.
	ErrNoIdentity = errors.New("no walship archive here")
	// ErrLocal: reading or writing a file on this machine failed.
	ErrLocal = errors.New("local file error")
)

// IdentityKey is where the archive's identity record is stored, the first
// key of the archive's layout, which maps archived files to keys. Keys carry
// no codec suffix: each object is sealed and says its own codec, so a reader
// never probes.
//
//	identity.json                   which cluster, version, segment size,
//	                                whether conditional writes are enforced
//	conditional-writes.json         that answer, for an older identity.json
//	probes/...                      the probe's objects, deleted at once
//	wal/<TLI>/<segment name>        segments, .partial and .backup files
//	history/<TLI>.history           timeline history files
const IdentityKey = "identity.json"

// Key is where f is stored.
func Key(f segment.File) string {
	if f.Kind == segment.KindHistory {
		return "history/" + f.String()
	}
	return fmt.Sprintf("wal/%08X/%s", f.TLI, f)
}

// Identity records which cluster an archive belongs to. The first push writes
// it; every later push and fetch checks against it.
type Identity struct {
	Format           int       `json:"format"`
	SystemIdentifier uint64    `json:"system_identifier,string"`
	PGVersion        string    `json:"pg_version"`
	SegmentSize      uint64    `json:"segment_size"`
	BlockSize        uint32    `json:"wal_block_size"`
	Created          time.Time `json:"created"`
	// ConditionalWrites: whether the store refused the probe's second
	// write to one key (see condwrite.go). Absent (nil) in identity files
	// written before the probe; their answer is in CondWritesKey. Older
	// walship versions ignore the field: the format stays 1.
	ConditionalWrites *bool `json:"conditional_writes,omitempty"`
}

const identityFormat = 1

// Archive is an archive on a Storage.
type Archive struct {
	store backends.Storage // guarded: PutIfAbsent as the store allows
	log   *slog.Logger
	now   func() time.Time
	id    atomic.Pointer[Identity] // once read, an identity never changes

	cond     atomic.Pointer[bool] // conditional writes enforced, once known
	condMu   sync.Mutex           // one probe at a time
	warnOnce sync.Once
}

// New wraps store. log receives at most one line per operation at info.
func New(store backends.Storage, log *slog.Logger) *Archive {
	a := &Archive{log: log, now: time.Now}
	a.store = &guarded{Storage: store, a: a}
	return a
}

// Storage is the archive's store. Its PutIfAbsent never lets a different
// object replace an existing one, on stores that enforce conditional writes
// and (but for a race, see condwrite.go) on those that do not.
func (a *Archive) Storage() backends.Storage { return a.store }

// raw is the store without the guard.
func (a *Archive) raw() backends.Storage { return a.store.(*guarded).Storage }

// Identity reads the identity record; ErrNoIdentity if there is none.
func (a *Archive) Identity(ctx context.Context) (Identity, error) {
	if id := a.id.Load(); id != nil {
		return *id, nil
	}
	var id Identity
	err := readRecord(ctx, a.store, IdentityKey, 1<<16, &id, func() error {
		if id.Format != identityFormat {
			return backends.Permanent(fmt.Errorf("archive identity format %d is not one this walship understands", id.Format))
		}
		if err := segment.ValidSegmentSize(id.SegmentSize); err != nil || id.SystemIdentifier == 0 {
			return fmt.Errorf("%w: archive identity %s", ErrDamaged, IdentityKey)
		}
		return nil
	})
	switch {
	case errors.Is(err, backends.ErrNotFound):
		return Identity{}, fmt.Errorf("%s: %w (no %s)", a.store, ErrNoIdentity, IdentityKey)
	case errors.Is(err, ErrDamaged):
		return Identity{}, backends.Permanent(fmt.Errorf("archive identity: %w", err))
	case err != nil:
		return Identity{}, fmt.Errorf("read archive identity: %w", err)
	}
	if id.ConditionalWrites != nil {
		a.setCond(*id.ConditionalWrites)
	} else if a.cond.Load() == nil {
		// An identity from before the probe. Reading the answer beside
		// it only decides the warning here; a writer that cannot read
		// it probes again.
		if enforced, known, err := a.readCondRecord(ctx); err == nil && known {
			a.setCond(enforced)
		}
	}
	a.id.Store(&id)
	return id, nil
}

// claimIdentity returns the archive's identity, writing one from h if the
// archive has none. Two first pushes racing both end with the winner's.
func (a *Archive) claimIdentity(ctx context.Context, h segment.Header) (Identity, error) {
	return a.claim(ctx, Identity{
		Format: identityFormat, SystemIdentifier: h.SysID, PGVersion: h.Version(),
		SegmentSize: uint64(h.SegSize), BlockSize: h.BlockSize,
	})
}

// ClaimIdentity checks that the archive belongs to the cluster want
// describes (system identifier, major version, segment size), recording
// want as the archive's identity if it has none yet.
func (a *Archive) ClaimIdentity(ctx context.Context, want Identity) (Identity, error) {
	want.Format = identityFormat
	id, err := a.claim(ctx, want)
	if err != nil {
		return id, err
	}
	switch {
	case want.SystemIdentifier != id.SystemIdentifier:
		return id, fmt.Errorf("%w: server has system identifier %d, archive %d", ErrWrongCluster, want.SystemIdentifier, id.SystemIdentifier)
	case want.PGVersion != id.PGVersion:
		return id, fmt.Errorf("%w: server is PostgreSQL %s, archive is from %s", ErrWrongCluster, want.PGVersion, id.PGVersion)
	case want.SegmentSize != id.SegmentSize:
		return id, fmt.Errorf("%w: server's segment size %d, archive's %d", ErrWrongCluster, want.SegmentSize, id.SegmentSize)
	}
	return id, nil
}

func (a *Archive) claim(ctx context.Context, id Identity) (Identity, error) {
	have, err := a.Identity(ctx)
	if !errors.Is(err, ErrNoIdentity) {
		return have, err
	}
	// A new archive: learn first whether the store enforces conditional
	// writes, which decides how the identity itself is written, and
	// record the answer in it.
	var enforced bool
	if c := a.cond.Load(); c != nil {
		enforced = *c
	} else if enforced, err = a.probe(ctx); err != nil {
		return Identity{}, err
	}
	id.ConditionalWrites = &enforced
	id.Created = a.now().UTC()
	b, _ := json.MarshalIndent(id, "", "  ")
	b = append(b, '\n')
	err = a.store.PutIfAbsent(ctx, IdentityKey, bytes.NewReader(b), int64(len(b)))
	if errors.Is(err, backends.ErrExists) {
		return a.Identity(ctx)
	}
	if err != nil {
		return Identity{}, fmt.Errorf("write archive identity: %w", err)
	}
	a.log.Info("archive identity recorded", "archive", a.store.String(), "system_identifier", id.SystemIdentifier,
		"pg_version", id.PGVersion, "segment_size", id.SegmentSize)
	return id, nil
}

// SegmentKey is where the segment n is stored.
func SegmentKey(n segment.Name, segSize uint64) string {
	return fmt.Sprintf("wal/%08X/%s", n.TLI, n.String(segSize))
}

// checkIdentity compares a segment header with the archive's identity.
func checkIdentity(id Identity, h segment.Header) error {
	switch {
	case h.SysID != id.SystemIdentifier:
		return fmt.Errorf("%w: segment has system identifier %d, archive %d", ErrWrongCluster, h.SysID, id.SystemIdentifier)
	case h.Version() != id.PGVersion:
		return fmt.Errorf("%w: segment is from PostgreSQL %s, archive from %s", ErrWrongCluster, h.Version(), id.PGVersion)
	case uint64(h.SegSize) != id.SegmentSize:
		return fmt.Errorf("%w: segment size %d, archive %d", ErrWrongCluster, h.SegSize, id.SegmentSize)
	}
	return nil
}
