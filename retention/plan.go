// Package retention decides what an archive keeps. The planner is a pure
// function of the archive's catalog (with the running backups' leases and
// the followers' slots), the policy and the time: it returns every object
// with keep or delete and the reason. Apply executes a plan. Nothing here
// deletes an object a kept backup, a running backup or a live slot needs,
// nor a timeline history file recovery may have to read.
package retention

import (
	"errors"
	"fmt"
	"math"
	"sort"
	"strings"
	"time"

	"github.com/walship/walship/archive"
	"github.com/walship/walship/catalog"
	"github.com/walship/walship/manifest"
	"github.com/walship/walship/segment"
)

// ErrNoPolicy is returned (or wrapped) when neither keep-last nor
// keep-within is set.
var ErrNoPolicy = errors.New("no retention policy: set keep-last and/or keep-within")

// DefaultGrace protects objects written recently: an upload or a fetch may
// be in flight.
const DefaultGrace = 10 * time.Minute

// Policy says which backups to keep; the WAL they and live slots need
// follows from it.
type Policy struct {
	KeepLast   int           `json:"keep_last,omitempty"`   // the newest N complete backups
	KeepWithin time.Duration `json:"keep_within,omitempty"` // every backup needed to restore to any moment this far back
	Grace      time.Duration `json:"grace"`                 // objects younger than this are never deleted
}

// Item is one object's fate.
type Item struct {
	Key    string `json:"key"`
	Delete bool   `json:"delete"`
	Reason string `json:"reason"`
	Size   int64  `json:"size"`
}

// Plan is the planner's answer.
type Plan struct {
	Now            time.Time `json:"now"`
	Policy         Policy    `json:"policy"`
	KeptBackups    []string  `json:"kept_backups"`
	DeletedBackups []string  `json:"deleted_backups"`
	// RunningBackups are backups without a manifest that are kept because
	// their lease is live or they were written to within the grace period.
	RunningBackups []string `json:"running_backups"`
	Notes          []string `json:"notes"`
	Items          []Item   `json:"items"`
	DeleteCount    int      `json:"delete_count"`
	DeleteBytes    int64    `json:"delete_bytes"`
	KeepCount      int      `json:"keep_count"`
	KeepBytes      int64    `json:"keep_bytes"`
}

// guard is something that keeps WAL from a position on: a kept backup or a
// live slot. Segment (tli, n) is needed if tli >= TLI and n >= SegNo.
type guard struct {
	TLI    uint32
	SegNo  uint64
	Reason string
}

// Check refuses a policy that keeps nothing or has negative values.
func (p Policy) Check() error {
	if p.KeepLast < 0 || p.KeepWithin < 0 || p.Grace < 0 {
		return fmt.Errorf("%w (negative values)", ErrNoPolicy)
	}
	if p.KeepLast == 0 && p.KeepWithin == 0 {
		return ErrNoPolicy
	}
	return nil
}

// Make plans. It fails only on a policy that keeps nothing.
func Make(c *catalog.Catalog, p Policy, now time.Time) (*Plan, error) {
	if err := p.Check(); err != nil {
		return nil, err
	}
	if err := segment.ValidSegmentSize(c.SegSize); err != nil && (len(c.Objects) > 0 || len(c.Backups) > 0) {
		return nil, fmt.Errorf("inventory: %w", err)
	}
	plan := &Plan{Now: now, Policy: p, KeptBackups: []string{}, DeletedBackups: []string{}, RunningBackups: []string{}, Notes: []string{}}
	backups := append([]*manifest.Manifest(nil), c.Backups...)
	sort.SliceStable(backups, func(i, j int) bool { return backups[i].StartTime.Before(backups[j].StartTime) })

	pl := &planner{ss: c.SegSize, byID: map[string]*manifest.Manifest{}}
	for _, b := range backups {
		pl.byID[b.ID] = b
	}
	var running []guard
	pl.running, pl.debris, running = incompleteBackups(c, pl.byID, p.Grace, now)
	pl.keptWhy = keptBackups(c, backups, p, now)
	keepRunningParents(c, pl.running, pl.byID, pl.keptWhy)
	for _, b := range backups {
		if why, ok := pl.keptWhy[b.ID]; ok {
			plan.KeptBackups = append(plan.KeptBackups, b.ID)
			pl.guards = append(pl.guards, guard{TLI: b.Timeline, SegNo: b.StartLSN.SegNo(pl.ss),
				Reason: fmt.Sprintf("WAL of kept backup %s (%s)", b.ID, why)})
		} else {
			plan.DeletedBackups = append(plan.DeletedBackups, b.ID)
		}
	}
	if len(backups) == 0 {
		pl.keepAllWAL = "no complete backup in the archive: WAL is never deleted without one"
	}
	pl.slotGuards(plan, c.Slots, now)
	if pl.keepAllWAL != "" {
		plan.Notes = append(plan.Notes, pl.keepAllWAL)
	}
	pl.guards = append(pl.guards, running...)
	for id, why := range pl.running {
		plan.RunningBackups = append(plan.RunningBackups, id)
		plan.Notes = append(plan.Notes, why)
	}
	sort.Strings(plan.RunningBackups)
	sort.Strings(plan.Notes[len(plan.Notes)-len(pl.running):])

	cutoff := now.Add(-p.Grace)
	add := func(o catalog.Object, keep bool, reason string) {
		if !keep && o.Modified.After(cutoff) {
			keep, reason = true, fmt.Sprintf("younger than the grace period (%s): it may be in flight", p.Grace)
		}
		plan.Items = append(plan.Items, Item{Key: o.Key, Delete: !keep, Reason: reason, Size: o.Size})
	}
	var histories []catalog.Object
	for _, o := range c.DataObjects() {
		if strings.HasPrefix(o.Key, "history/") {
			histories = append(histories, o)
			continue
		}
		keep, reason := pl.decide(o)
		add(o, keep, reason)
	}
	keepHistory := historyRule(plan.Items, pl.guards, pl.keepAllWAL, histories)
	for _, o := range histories {
		keep, reason := keepHistory(o)
		add(o, keep, reason)
	}
	sort.Slice(plan.Items, func(i, j int) bool { return plan.Items[i].Key < plan.Items[j].Key })
	for _, it := range plan.Items {
		if it.Delete {
			plan.DeleteCount++
			plan.DeleteBytes += it.Size
		} else {
			plan.KeepCount++
			plan.KeepBytes += it.Size
		}
	}
	return plan, nil
}

// planner holds what decide needs.
type planner struct {
	ss         uint64
	guards     []guard
	keepAllWAL string
	keptWhy    map[string]string
	byID       map[string]*manifest.Manifest
	running    map[string]string // manifest-less backups kept, and why
	debris     map[string]string // manifest-less backups deleted, and why
}

// slotGuards adds a guard for every live slot with a position.
func (pl *planner) slotGuards(plan *Plan, slots []archive.Slot, now time.Time) {
	for _, s := range slots {
		switch {
		case s.Expired(now):
			plan.Notes = append(plan.Notes, fmt.Sprintf("slot %s expired (last heartbeat %s, TTL %s): it protects nothing",
				s.Name, s.Heartbeat.UTC().Format(time.RFC3339), time.Duration(s.TTL)))
		case s.Position == "":
			if pl.keepAllWAL == "" {
				pl.keepAllWAL = fmt.Sprintf("live slot %s has no position yet: it may need any WAL", s.Name)
			}
		default:
			n, err := segment.ParseName(s.Position, pl.ss)
			if err != nil {
				pl.keepAllWAL = fmt.Sprintf("live slot %s has an unreadable position %q", s.Name, s.Position)
				continue
			}
			pl.guards = append(pl.guards, guard{TLI: n.TLI, SegNo: n.SegNo, Reason: "needed by live slot " + s.Name + " (position " + s.Position + ")"})
		}
	}
}

// incompleteBackups sorts the backups without a manifest into running
// (a live lease, or written to within the grace period: every one of their
// objects is kept) and debris (neither: every one is deleted). A live
// lease that names the backup's start segment guards WAL from it on.
func incompleteBackups(c *catalog.Catalog, complete map[string]*manifest.Manifest, grace time.Duration, now time.Time) (running, debris map[string]string, guards []guard) {
	running, debris = map[string]string{}, map[string]string{}
	newest := map[string]time.Time{}
	for _, o := range c.DataObjects() {
		k := archive.ParseKey(o.Key)
		id := k.BackupID
		if k.Kind != archive.KeyBackup || complete[id] != nil {
			continue
		}
		if t, seen := newest[id]; !seen || o.Modified.After(t) {
			newest[id] = o.Modified
		}
	}
	for id, last := range newest {
		l, hasLease := c.Leases[id]
		live, exp := l.Live(now)
		switch {
		case hasLease && live && l.Vanished:
			running[id] = fmt.Sprintf("backup %s had a lease when listed that was gone when read (it just ended): kept until the next run", id)
		case hasLease && live:
			holder := l.Lease.Holder
			if l.Damaged {
				holder = "unknown (the lease is damaged)"
			}
			running[id] = fmt.Sprintf("backup %s is running: its lease (held by %s) is live until %s", id, holder, exp.UTC().Format(time.RFC3339))
			if n, err := segment.ParseName(l.Lease.WAL, c.SegSize); err == nil {
				guards = append(guards, guard{TLI: n.TLI, SegNo: n.SegNo, Reason: "WAL of running backup " + id + " (from " + l.Lease.WAL + ")"})
			}
		case last.After(now.Add(-grace)):
			running[id] = fmt.Sprintf("backup %s has no manifest and no live lease, but was written to within the grace period (%s): it may still be running", id, grace)
		case hasLease:
			debris[id] = fmt.Sprintf("incomplete backup %s (no manifest, lease expired %s): debris of a failed or interrupted backup push", id, exp.UTC().Format(time.RFC3339))
		default:
			debris[id] = "incomplete backup " + id + " (no manifest, no lease): debris of a failed or interrupted backup push"
		}
	}
	sort.Slice(guards, func(i, j int) bool { return guards[i].Reason < guards[j].Reason })
	return running, debris, guards
}

// keptBackups applies the policy to backups (oldest first) and says why
// each kept one is kept.
func keptBackups(c *catalog.Catalog, backups []*manifest.Manifest, p Policy, now time.Time) map[string]string {
	why := map[string]string{}
	lastChains(c, backups, p.KeepLast, why)
	if p.KeepWithin > 0 {
		cutoff := now.Add(-p.KeepWithin)
		window := fmt.Sprintf("restores to any moment of the last %s", p.KeepWithin)
		older := -1
		for i, b := range backups {
			if b.StopTime.After(cutoff) {
				if _, ok := why[b.ID]; !ok {
					why[b.ID] = window
				}
			} else {
				older = i
			}
		}
		// The newest backup consistent at or before the window opens is
		// what restores to the window's first moments.
		if older >= 0 {
			if _, ok := why[backups[older].ID]; !ok {
				why[backups[older].ID] = window + " (the window's first moments)"
			}
		}
	}
	keepChains(c, backups, why)
	return why
}

// lastChains keeps the newest n chains: a chain is a full backup with
// every incremental built on it, and counts once however many
// incrementals it has. Chains are ordered by their newest member. A
// backup whose chain is broken counts for nothing: it cannot be restored.
func lastChains(c *catalog.Catalog, backups []*manifest.Manifest, n int, why map[string]string) {
	roots := map[string]bool{}
	rootOf := map[string]string{}
	for i := len(backups) - 1; i >= 0; i-- {
		chain, err := c.Chain(backups[i])
		if err != nil {
			continue
		}
		root := chain[0].ID
		rootOf[backups[i].ID] = root
		if len(roots) < n {
			roots[root] = true
		}
	}
	for _, b := range backups {
		if roots[rootOf[b.ID]] {
			why[b.ID] = fmt.Sprintf("in one of the last %d backup chains", n)
		}
	}
}

// keepRunningParents keeps the chain a running incremental backup is taken
// against (its lease names the parent): deleting it would leave the new
// backup without a parent the moment it completes.
func keepRunningParents(c *catalog.Catalog, running map[string]string, byID map[string]*manifest.Manifest, why map[string]string) {
	for id := range running {
		parent, ok := byID[c.Leases[id].Lease.Parent]
		if !ok {
			continue
		}
		chain, err := c.Chain(parent)
		if err != nil {
			chain = []*manifest.Manifest{parent}
		}
		for _, m := range chain {
			if _, kept := why[m.ID]; !kept {
				why[m.ID] = "in the chain running incremental backup " + id + " is taken against"
			}
		}
	}
}

// keepChains keeps every backup a kept incremental is built on: an
// incremental without its whole chain restores nothing.
func keepChains(c *catalog.Catalog, backups []*manifest.Manifest, why map[string]string) {
	for i := len(backups) - 1; i >= 0; i-- {
		b := backups[i]
		if _, kept := why[b.ID]; !kept || !b.Incremental() {
			continue
		}
		chain, err := c.Chain(b)
		if err != nil {
			continue // its own reason stands; the parts it has are kept below if anything needs them
		}
		for _, m := range chain[:len(chain)-1] {
			if _, ok := why[m.ID]; !ok {
				why[m.ID] = "in the chain of kept incremental backup " + b.ID
			}
		}
	}
}

// decide keeps or deletes one object (before the grace period).
func (pl *planner) decide(o catalog.Object) (bool, string) {
	k := archive.ParseKey(o.Key)
	switch {
	case k.Kind == archive.KeyBackup:
		id := k.BackupID
		if why, ok := pl.keptWhy[id]; ok {
			return true, "kept backup " + id + " (" + why + ")"
		}
		if _, ok := pl.byID[id]; ok {
			return false, "backup " + id + " is outside the policy"
		}
		if why, ok := pl.running[id]; ok {
			return true, why
		}
		if why, ok := pl.debris[id]; ok {
			return false, why
		}
		return true, "not a backup's object: left alone"
	case strings.HasPrefix(o.Key, "wal/"):
		if k.Kind != archive.KeyWAL {
			return true, "not a WAL file name: left alone"
		}
		f := k.File
		if pl.keepAllWAL != "" {
			return true, pl.keepAllWAL
		}
		n, err := f.SegNo(pl.ss)
		if err != nil {
			return true, "not a WAL file name for this segment size: left alone"
		}
		for _, g := range pl.guards {
			if f.TLI >= g.TLI && n >= g.SegNo {
				return true, g.Reason
			}
		}
		return false, "older than every kept backup and live slot needs"
	}
	return true, "not managed by retention"
}

// historyRule decides the history files. Recovery needs a timeline's
// history file to move onto it, and PostgreSQL finds the latest timeline
// by probing history files one after another from its own timeline up: a
// missing one stops it there, and it silently stays on the older timeline.
// So every history file from the lowest timeline anything kept is on (a
// kept backup, a live slot, any kept WAL) upward is kept, sibling branches
// included, and always the newest one: right after a promotion it is
// archived long before the first WAL of its timeline.
func historyRule(items []Item, guards []guard, keepAll string, histories []catalog.Object) func(catalog.Object) (bool, string) {
	low, lowWhy := uint32(math.MaxUint32), ""
	for _, g := range guards {
		if g.TLI < low {
			low, lowWhy = g.TLI, g.Reason
		}
	}
	for _, it := range items {
		if it.Delete || !strings.HasPrefix(it.Key, "wal/") {
			continue
		}
		if k := archive.ParseKey(it.Key); k.Kind == archive.KeyWAL && k.TLI < low {
			low, lowWhy = k.TLI, "kept "+it.Key
		}
	}
	newest := uint32(0)
	for _, o := range histories {
		if k := archive.ParseKey(o.Key); k.Kind == archive.KeyHistory {
			newest = max(newest, k.TLI)
		}
	}
	return func(o catalog.Object) (bool, string) {
		k := archive.ParseKey(o.Key)
		f := k.File
		switch {
		case k.Kind != archive.KeyHistory:
			return true, "not a history file name: left alone"
		case keepAll != "":
			return true, keepAll
		case f.TLI == newest:
			return true, "the newest history file: a new timeline's history is archived before its first WAL"
		case f.TLI == low:
			return true, fmt.Sprintf("history of timeline %d, which kept WAL, backups or slots are on (%s)", f.TLI, lowWhy)
		case f.TLI > low:
			return true, fmt.Sprintf("history of timeline %d: recovery from timeline %d (%s) probes every history file after it to find the latest timeline",
				f.TLI, low, lowWhy)
		}
		return false, "history of a timeline older than everything kept"
	}
}
