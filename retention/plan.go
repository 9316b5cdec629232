// Package retention decides what an archive keeps. The planner is a pure
// function of the archive's inventory, the followers' slots, the policy and
// the time: it returns every object with keep or delete and the reason.
// Apply executes a plan. Nothing here deletes an object a kept backup or a
// live slot needs.
package retention

import (
	"errors"
	"fmt"
	"math"
	"sort"
	"strings"
	"time"

	"github.com/walship/walship/archive"
	"github.com/walship/walship/backup"
	"github.com/walship/walship/segment"
)

// ErrNoPolicy: neither keep-last nor keep-within is set.
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

// Object is one stored object.
type Object struct {
	Key      string    `json:"key"`
	Size     int64     `json:"size"`
	Modified time.Time `json:"modified"`
}

// Inventory is what the archive holds: every object under wal/, history/
// and backups/, and the complete backups' manifests.
type Inventory struct {
	SegmentSize uint64
	Objects     []Object
	Backups     []*backup.Manifest
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
	Notes          []string  `json:"notes"`
	Items          []Item    `json:"items"`
	DeleteCount    int       `json:"delete_count"`
	DeleteBytes    int64     `json:"delete_bytes"`
	KeepCount      int       `json:"keep_count"`
	KeepBytes      int64     `json:"keep_bytes"`
}

// guard is something that keeps WAL from a position on: a kept backup or a
// live slot. Segment (tli, n) is needed if tli >= TLI and n >= SegNo.
type guard struct {
	TLI    uint32
	SegNo  uint64
	Reason string
}

// Make plans. It fails only on a policy that keeps nothing.
func Make(inv Inventory, slots []archive.Slot, p Policy, now time.Time) (*Plan, error) {
	if p.KeepLast < 0 || p.KeepWithin < 0 || p.Grace < 0 {
		return nil, fmt.Errorf("%w (negative values)", ErrNoPolicy)
	}
	if p.KeepLast == 0 && p.KeepWithin == 0 {
		return nil, ErrNoPolicy
	}
	if err := segment.ValidSegmentSize(inv.SegmentSize); err != nil && (len(inv.Objects) > 0 || len(inv.Backups) > 0) {
		return nil, fmt.Errorf("inventory: %w", err)
	}
	ss := inv.SegmentSize
	plan := &Plan{Now: now, Policy: p, KeptBackups: []string{}, DeletedBackups: []string{}, Notes: []string{}}
	backups := append([]*backup.Manifest(nil), inv.Backups...)
	sort.SliceStable(backups, func(i, j int) bool { return backups[i].StartTime.Before(backups[j].StartTime) })

	keptWhy := keptBackups(backups, p, now)
	var guards []guard
	byID := map[string]*backup.Manifest{}
	for _, b := range backups {
		byID[b.ID] = b
		if why, ok := keptWhy[b.ID]; ok {
			plan.KeptBackups = append(plan.KeptBackups, b.ID)
			guards = append(guards, guard{TLI: b.Timeline, SegNo: b.StartLSN.SegNo(ss),
				Reason: fmt.Sprintf("WAL of kept backup %s (%s)", b.ID, why)})
		} else {
			plan.DeletedBackups = append(plan.DeletedBackups, b.ID)
		}
	}
	keepAllWAL := ""
	if len(backups) == 0 {
		keepAllWAL = "no complete backup in the archive: WAL is never deleted without one"
	}
	for _, s := range slots {
		switch {
		case s.Expired(now):
			plan.Notes = append(plan.Notes, fmt.Sprintf("slot %s expired (last heartbeat %s, TTL %s): it protects nothing",
				s.Name, s.Heartbeat.UTC().Format(time.RFC3339), time.Duration(s.TTL)))
		case s.Position == "":
			if keepAllWAL == "" {
				keepAllWAL = fmt.Sprintf("live slot %s has no position yet: it may need any WAL", s.Name)
			}
		default:
			n, err := segment.ParseName(s.Position, ss)
			if err != nil {
				keepAllWAL = fmt.Sprintf("live slot %s has an unreadable position %q", s.Name, s.Position)
				continue
			}
			guards = append(guards, guard{TLI: n.TLI, SegNo: n.SegNo, Reason: "needed by live slot " + s.Name + " (position " + s.Position + ")"})
		}
	}
	if keepAllWAL != "" {
		plan.Notes = append(plan.Notes, keepAllWAL)
	}

	maxTLI := uint32(0)
	for _, g := range guards {
		maxTLI = max(maxTLI, g.TLI)
	}
	cutoff := now.Add(-p.Grace)
	add := func(o Object, keep bool, reason string) {
		if !keep && o.Modified.After(cutoff) {
			keep, reason = true, fmt.Sprintf("younger than the grace period (%s): it may be in flight", p.Grace)
		}
		plan.Items = append(plan.Items, Item{Key: o.Key, Delete: !keep, Reason: reason, Size: o.Size})
	}
	var histories []Object
	for _, o := range inv.Objects {
		if strings.HasPrefix(o.Key, "history/") {
			histories = append(histories, o)
			continue
		}
		keep, reason := decide(o, ss, guards, keepAllWAL, keptWhy, byID)
		add(o, keep, reason)
	}
	maxKept := maxKeptTimeline(plan.Items, guards, keepAllWAL != "")
	for _, o := range histories {
		f, err := segment.ParseFile(strings.TrimPrefix(o.Key, "history/"))
		switch {
		case err != nil:
			add(o, true, "not a history file name: left alone")
		case f.TLI <= maxKept:
			add(o, true, fmt.Sprintf("history of timeline %d, which kept WAL or backups need", f.TLI))
		default:
			add(o, false, "history of a timeline nothing kept is on")
		}
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

// keptBackups applies the policy to backups (oldest first) and says why
// each kept one is kept.
func keptBackups(backups []*backup.Manifest, p Policy, now time.Time) map[string]string {
	why := map[string]string{}
	n := len(backups)
	for i := max(0, n-p.KeepLast); i < n && p.KeepLast > 0; i++ {
		why[backups[i].ID] = fmt.Sprintf("one of the last %d", p.KeepLast)
	}
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
	return why
}

// decide keeps or deletes one object (before the grace period).
func decide(o Object, ss uint64, guards []guard, keepAllWAL string, keptWhy map[string]string, byID map[string]*backup.Manifest) (bool, string) {
	switch {
	case strings.HasPrefix(o.Key, backup.Prefix):
		id, _, _ := strings.Cut(strings.TrimPrefix(o.Key, backup.Prefix), "/")
		if why, ok := keptWhy[id]; ok {
			return true, "kept backup " + id + " (" + why + ")"
		}
		if _, ok := byID[id]; ok {
			return false, "backup " + id + " is outside the policy"
		}
		return false, "incomplete backup " + id + " (no manifest): debris of a failed or interrupted backup push"
	case strings.HasPrefix(o.Key, "wal/"):
		f, err := segment.ParseFile(o.Key[strings.LastIndexByte(o.Key, '/')+1:])
		if err != nil {
			return true, "not a WAL file name: left alone"
		}
		if keepAllWAL != "" {
			return true, keepAllWAL
		}
		n, err := f.SegNo(ss)
		if err != nil {
			return true, "not a WAL file name for this segment size: left alone"
		}
		for _, g := range guards {
			if f.TLI >= g.TLI && n >= g.SegNo {
				return true, g.Reason
			}
		}
		return false, "older than every kept backup and live slot needs"
	}
	return true, "not managed by retention"
}

// maxKeptTimeline is the newest timeline anything kept is on. A history
// file is kept up to it: recovery reads its target timeline's history and
// probes the files in order to find the latest timeline.
func maxKeptTimeline(items []Item, guards []guard, keepAll bool) uint32 {
	if keepAll {
		return math.MaxUint32
	}
	m := uint32(0)
	for _, it := range items {
		if it.Delete || !strings.HasPrefix(it.Key, "wal/") {
			continue
		}
		if f, err := segment.ParseFile(it.Key[strings.LastIndexByte(it.Key, '/')+1:]); err == nil {
			m = max(m, f.TLI)
		}
	}
	for _, g := range guards {
		m = max(m, g.TLI)
	}
	return m
}
