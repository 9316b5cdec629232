// Package catalog is the one read model of an archive: it lists the
// archive once, parses every key with archive.ParseKey, reads the small
// records a command asks for (backup manifests, history files, leases,
// heads, recorded gaps, slots), and answers from that alone: which
// segments each timeline holds, the path recovery follows through the
// timeline history, what is missing on it, which history files are absent,
// and which backup can serve. Restore planning, retention, verify, status,
// the agent and the drill all read the archive through it. It reads no WAL
// and no backup data, and writes nothing.
package catalog

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/walship/walship/archive"
	"github.com/walship/walship/backends"
	"github.com/walship/walship/manifest"
	"github.com/walship/walship/segment"
)

// Parts says which records Load reads besides the listing.
type Parts uint

// The records Load can read.
const (
	Backups   Parts = 1 << iota // every complete backup's manifest.json
	Histories                   // every history file, parsed
	Leases                      // every backup lease
	Heads                       // every timeline head
	Gaps                        // the gaps push recorded
	Slots                       // every slot
	All       = Backups | Histories | Leases | Heads | Gaps | Slots
)

// Object is one listed object.
type Object struct {
	Key      string    `json:"key"`
	Size     int64     `json:"size"`
	Modified time.Time `json:"modified"`
}

// Lease is a backup's lease as Load found it.
type Lease struct {
	Lease    archive.Lease
	Modified time.Time // the store's time for the lease object
	// Damaged: the lease could not be parsed; it counts as renewed at
	// Modified with the default TTL.
	Damaged bool
	// Vanished: listed, then gone when read (the backup just finished or
	// failed). It counts as live for this read; the next one sees why.
	Vanished bool
}

// Live reports whether l protects its backup at now, and until when.
func (l Lease) Live(now time.Time) (bool, time.Time) {
	if l.Vanished {
		return true, now
	}
	exp := l.Lease.Expires(l.Modified)
	return now.Before(exp), exp
}

// Catalog is what the archive held when Load listed it.
type Catalog struct {
	Identity archive.Identity
	SegSize  uint64
	// Objects is every object listed, in key order; Bytes their total size.
	Objects []Object
	Bytes   int64
	// WAL maps timeline to segment number to the time it was archived.
	WAL map[uint32]map[uint64]time.Time
	// HistoryFiles are the timelines whose history file is archived;
	// History their parsed entries (with Histories only).
	HistoryFiles map[uint32]bool
	History      map[uint32][]segment.HistoryEntry
	// Backups are the complete backups, oldest first (with Backups only).
	Backups []*manifest.Manifest
	// Incomplete are the ids of backup prefixes without a manifest, in
	// key order: running backups and debris of failed ones.
	Incomplete []string
	Leases     map[string]Lease // by backup id (with Leases only)
	Heads      []archive.Head   // by timeline (with Heads only)
	Gaps       []archive.Gap    // recorded gaps still open (with Gaps only)
	Slots      []archive.Slot   // by name (with Slots only)

	// keys found by the listing, by kind, for the reads
	backupKeys map[string]bool // backup id -> has manifest.json
	backupIDs  []string
	leaseKeys  []Object
	headTLIs   []uint32
	gapKeys    []string
	slotNames  []string
}

// Load lists the archive once and reads what parts asks for. Any listing
// or read failure fails it: nothing is ever decided from a partial
// catalog.
func Load(ctx context.Context, a *archive.Archive, parts Parts) (*Catalog, error) {
	id, err := a.Identity(ctx)
	if err != nil {
		return nil, err
	}
	c := &Catalog{Identity: id, SegSize: id.SegmentSize, WAL: map[uint32]map[uint64]time.Time{},
		HistoryFiles: map[uint32]bool{}, History: map[uint32][]segment.HistoryEntry{},
		Leases: map[string]Lease{}, backupKeys: map[string]bool{}}
	if err := a.Storage().List(ctx, "", c.add); err != nil {
		return nil, fmt.Errorf("list the archive: %w", err)
	}
	for _, bid := range c.backupIDs {
		if !c.backupKeys[bid] {
			c.Incomplete = append(c.Incomplete, bid)
		}
	}
	steps := []struct {
		part Parts
		read func(context.Context, *archive.Archive) error
	}{
		{Backups, c.readBackups}, {Histories, c.readHistories}, {Leases, c.readLeases},
		{Heads, c.readHeads}, {Gaps, c.readGaps}, {Slots, c.readSlots},
	}
	for _, s := range steps {
		if parts&s.part == 0 {
			continue
		}
		if err := s.read(ctx, a); err != nil {
			return nil, err
		}
	}
	return c, nil
}

// add files one listed object under its kind.
func (c *Catalog) add(o backends.ObjectInfo) error {
	c.Objects = append(c.Objects, Object{Key: o.Key, Size: o.Size, Modified: o.Modified})
	c.Bytes += o.Size
	k := archive.ParseKey(o.Key)
	switch k.Kind {
	case archive.KeyWAL:
		if k.File.Kind != segment.KindSegment {
			return nil
		}
		n, err := k.File.SegNo(c.SegSize)
		if err != nil {
			return nil //nolint:nilerr // not a segment of this archive's size: left alone, not a listing failure
		}
		if c.WAL[k.TLI] == nil {
			c.WAL[k.TLI] = map[uint64]time.Time{}
		}
		c.WAL[k.TLI][n] = o.Modified
	case archive.KeyHistory:
		c.HistoryFiles[k.TLI] = true
	case archive.KeyBackup:
		if manifest.ValidID(k.BackupID) != nil {
			return nil //nolint:nilerr // a prefix walship did not make is no backup: left alone
		}
		if _, seen := c.backupKeys[k.BackupID]; !seen {
			c.backupKeys[k.BackupID] = false
			c.backupIDs = append(c.backupIDs, k.BackupID)
		}
		switch k.Object {
		case manifest.Name:
			c.backupKeys[k.BackupID] = true
		case archive.LeaseName:
			c.leaseKeys = append(c.leaseKeys, Object{Key: o.Key, Modified: o.Modified})
		}
	case archive.KeyHead:
		c.headTLIs = append(c.headTLIs, k.TLI)
	case archive.KeyGap:
		c.gapKeys = append(c.gapKeys, o.Key)
	case archive.KeySlot:
		c.slotNames = append(c.slotNames, k.Slot)
	}
	return nil
}

func (c *Catalog) readBackups(ctx context.Context, a *archive.Archive) error {
	for _, bid := range c.backupIDs {
		if !c.backupKeys[bid] {
			continue
		}
		m, err := manifest.Get(ctx, a.Storage(), bid)
		if err != nil {
			return err
		}
		c.Backups = append(c.Backups, m)
	}
	sort.SliceStable(c.Backups, func(i, j int) bool { return c.Backups[i].StartTime.Before(c.Backups[j].StartTime) })
	return nil
}

func (c *Catalog) readHistories(ctx context.Context, a *archive.Archive) error {
	for tli := range c.HistoryFiles {
		f := segment.File{Kind: segment.KindHistory, TLI: tli}
		data, err := archive.ReadSealed(ctx, a.Storage(), archive.Key(f))
		if err != nil {
			return err
		}
		h, err := segment.ParseHistory(tli, data)
		if err != nil {
			// Sealed and intact, but not a history file: damaged, status 4.
			return fmt.Errorf("%s: %w: %w", f, err, archive.ErrDamaged)
		}
		c.History[tli] = h
	}
	return nil
}

// readLeases reads every backup lease the listing found. A damaged one
// counts from its modification time; one gone since the listing counts as
// live for this read (its backup just ended); any other failure fails.
func (c *Catalog) readLeases(ctx context.Context, a *archive.Archive) error {
	for _, o := range c.leaseKeys {
		k := archive.ParseKey(o.Key)
		l, info, err := a.ReadLease(ctx, o.Key)
		switch {
		case errors.Is(err, backends.ErrNotFound):
			c.Leases[k.BackupID] = Lease{Modified: o.Modified, Vanished: true}
		case errors.Is(err, archive.ErrLeaseDamaged):
			c.Leases[k.BackupID] = Lease{Modified: later(o.Modified, info.Modified), Damaged: true}
		case err != nil:
			return err
		default:
			c.Leases[k.BackupID] = Lease{Lease: l, Modified: later(o.Modified, info.Modified)}
		}
	}
	return nil
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

func (c *Catalog) readHeads(ctx context.Context, a *archive.Archive) error {
	sort.Slice(c.headTLIs, func(i, j int) bool { return c.headTLIs[i] < c.headTLIs[j] })
	for _, tli := range c.headTLIs {
		h, err := a.ReadHead(ctx, tli)
		if err != nil {
			return err
		}
		c.Heads = append(c.Heads, h)
	}
	return nil
}

// readGaps reads the gaps push recorded and keeps those whose first
// segment is still missing from the listing (a late push closes a gap).
// A record that cannot be parsed is skipped: it only ever adds a warning.
func (c *Catalog) readGaps(ctx context.Context, a *archive.Archive) error {
	c.Gaps = []archive.Gap{}
	for _, key := range c.gapKeys {
		g, err := a.ReadGap(ctx, key)
		if errors.Is(err, archive.ErrDamaged) || errors.Is(err, backends.ErrNotFound) {
			continue
		}
		if err != nil {
			return err
		}
		f, err := segment.ParseFile(g.From)
		if err != nil {
			continue
		}
		n, err := f.SegNo(c.SegSize)
		if err != nil {
			continue
		}
		if _, ok := c.WAL[f.TLI][n]; !ok {
			c.Gaps = append(c.Gaps, g)
		}
	}
	return nil
}

func (c *Catalog) readSlots(ctx context.Context, a *archive.Archive) error {
	sort.Strings(c.slotNames)
	c.Slots = make([]archive.Slot, 0, len(c.slotNames))
	for _, n := range c.slotNames {
		s, err := a.GetSlot(ctx, n)
		if err != nil {
			return err
		}
		c.Slots = append(c.Slots, s)
	}
	return nil
}

// DataObjects are the objects under wal/, history/ and backups/, whatever
// their names: what retention may delete and verify reads. Records
// (identity, heads, gaps, slots) are not among them.
func (c *Catalog) DataObjects() []Object {
	var out []Object
	for _, o := range c.Objects {
		if strings.HasPrefix(o.Key, "wal/") || strings.HasPrefix(o.Key, "history/") || strings.HasPrefix(o.Key, manifest.Prefix) {
			out = append(out, o)
		}
	}
	return out
}
