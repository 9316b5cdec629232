package archive

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"sort"
	"sync"
	"time"

	"github.com/walship/walship/backends"
	"github.com/walship/walship/backends/retry"
	"github.com/walship/walship/segment"
)

var (
	// ErrNoSlot is wrapped when there is no slot of that name.
	ErrNoSlot = errors.New("no such slot")
	// ErrSlotExists is wrapped when slot create is given a name in use.
	ErrSlotExists = errors.New("slot already exists")
	// ErrBadSlot is wrapped when a slot's name or position is not acceptable.
	ErrBadSlot = errors.New("bad slot")
)

var slotName = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^[a-z0-9_]{1,63}$`) })

// DefaultSlotTTL is how long a slot protects WAL without a heartbeat.
const DefaultSlotTTL = 24 * time.Hour

// Slot is a follower's record in the archive: the oldest segment it still
// needs (Position), how far it has replayed, and when it was last heard
// from. Retention keeps WAL from Position on while the slot is alive, that
// is, while its last heartbeat is younger than its TTL.
type Slot struct {
	Name      string    `json:"name"`
	Position  string    `json:"position,omitempty"` // a segment name; empty until first advanced
	Replayed  string    `json:"replayed,omitempty"` // the segment replay has reached, if known
	TTL       Duration  `json:"ttl"`
	Created   time.Time `json:"created"`
	Heartbeat time.Time `json:"heartbeat"`
	// Problem is what the slot's agent last reported as blocking it (a
	// segment gone from the archive, with the rebuild command); empty when
	// all is well.
	Problem string `json:"problem,omitempty"`
}

// Duration is a time.Duration that reads and writes as "24h0m0s" in JSON.
type Duration time.Duration

// MarshalText writes d as time.Duration's String does ("24h0m0s").
func (d Duration) MarshalText() ([]byte, error) { return []byte(time.Duration(d).String()), nil }

// UnmarshalText reads what time.ParseDuration accepts.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	*d = Duration(v)
	return err
}

// Expired reports whether the slot has stopped protecting WAL.
func (s Slot) Expired(now time.Time) bool {
	return now.Sub(s.Heartbeat) > time.Duration(s.TTL)
}

// SlotKey is where a slot is stored.
func SlotKey(name string) string { return "slots/" + name + ".json" }

// ValidSlotName checks a slot name: 1 to 63 of a-z, 0-9 and _ (as
// PostgreSQL's replication slots).
func ValidSlotName(name string) error {
	if !slotName().MatchString(name) {
		return fmt.Errorf("%w: name %q: use 1 to 63 of a-z, 0-9 and _", ErrBadSlot, name)
	}
	return nil
}

// CreateSlot records a new slot.
func (a *Archive) CreateSlot(ctx context.Context, name string, ttl time.Duration) (Slot, error) {
	if err := ValidSlotName(name); err != nil {
		return Slot{}, err
	}
	if ttl <= 0 {
		return Slot{}, fmt.Errorf("%w: TTL must be positive", ErrBadSlot)
	}
	now := a.now().UTC()
	s := Slot{Name: name, TTL: Duration(ttl), Created: now, Heartbeat: now}
	b, _ := json.MarshalIndent(s, "", "  ")
	err := a.store.PutIfAbsent(ctx, SlotKey(name), bytes.NewReader(b), int64(len(b)))
	if errors.Is(err, backends.ErrExists) {
		return Slot{}, fmt.Errorf("slot %s: %w", name, ErrSlotExists)
	}
	if err != nil {
		return Slot{}, fmt.Errorf("create slot %s: %w", name, err)
	}
	return s, nil
}

// GetSlot reads a slot.
func (a *Archive) GetSlot(ctx context.Context, name string) (Slot, error) {
	if err := ValidSlotName(name); err != nil {
		return Slot{}, err
	}
	b, _, err := retry.ReadAll(ctx, a.store, SlotKey(name), 1<<16)
	if errors.Is(err, backends.ErrNotFound) {
		return Slot{}, fmt.Errorf("slot %s: %w (create it with walship slot create %s)", name, ErrNoSlot, name)
	}
	if err != nil {
		return Slot{}, fmt.Errorf("read slot %s: %w", name, err)
	}
	var s Slot
	if err := json.Unmarshal(b, &s); err != nil {
		return Slot{}, fmt.Errorf("%w: slot %s: %w", ErrDamaged, name, err)
	}
	if s.Name != name {
		return Slot{}, fmt.Errorf("%w: slot %s: the object names slot %q", ErrDamaged, name, s.Name)
	}
	return s, nil
}

// SlotUpdate is what a heartbeat changes. Empty strings leave a field as
// it is; Position never moves backwards.
type SlotUpdate struct {
	Position string
	Replayed string
	Problem  *string
	// Reset sets Position even backwards and clears Replayed: a follower
	// rebuilt from a backup starts over from the backup's first segment.
	Reset bool
}

// UpdateSlot applies u to an existing slot and renews its heartbeat. A
// dropped slot is not recreated.
func (a *Archive) UpdateSlot(ctx context.Context, name string, u SlotUpdate) (Slot, error) {
	s, err := a.GetSlot(ctx, name)
	if err != nil {
		return s, err
	}
	for _, p := range []string{u.Position, u.Replayed} {
		if p == "" {
			continue
		}
		if f, err := segment.ParseFile(p); err != nil || f.Kind != segment.KindSegment {
			return s, fmt.Errorf("%w: position %q is not a WAL segment name", ErrBadSlot, p)
		}
	}
	if u.Reset {
		s.Position, s.Replayed, s.Problem = u.Position, "", ""
	} else if u.Position != "" && (s.Position == "" || SegmentAfter(u.Position, s.Position)) {
		s.Position = u.Position
	}
	if u.Replayed != "" {
		s.Replayed = u.Replayed
	}
	if u.Problem != nil {
		s.Problem = *u.Problem
	}
	s.Heartbeat = a.now().UTC()
	b, _ := json.MarshalIndent(s, "", "  ")
	if err := a.store.Put(ctx, SlotKey(name), bytes.NewReader(b), int64(len(b))); err != nil {
		return s, fmt.Errorf("update slot %s: %w", name, err)
	}
	return s, nil
}

// SegmentAfter reports whether segment name x comes after y in the WAL,
// whatever their timelines.
func SegmentAfter(x, y string) bool {
	if len(x) != 24 || len(y) != 24 {
		return x > y
	}
	if x[8:] != y[8:] {
		return x[8:] > y[8:]
	}
	return x[:8] > y[:8]
}

// ListSlots reads every slot, by name. A slot that cannot be read fails
// the listing.
func (a *Archive) ListSlots(ctx context.Context) ([]Slot, error) {
	var names []string
	err := a.store.List(ctx, "slots/", func(o backends.ObjectInfo) error {
		if k := ParseKey(o.Key); k.Kind == KeySlot {
			names = append(names, k.Slot)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list slots: %w", err)
	}
	sort.Strings(names)
	out := make([]Slot, 0, len(names))
	for _, n := range names {
		s, err := a.GetSlot(ctx, n)
		if err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	return out, nil
}

// DropSlot removes a slot.
func (a *Archive) DropSlot(ctx context.Context, name string) error {
	if _, err := a.GetSlot(ctx, name); err != nil {
		return err
	}
	if err := a.store.Delete(ctx, SlotKey(name)); err != nil {
		return fmt.Errorf("drop slot %s: %w", name, err)
	}
	return nil
}
