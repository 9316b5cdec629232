package archive

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/walship/walship/backends"
)

// A lease says that a long-running writer is alive: retention, which
// deletes what looks abandoned, keeps everything under a prefix whose lease
// is live. backup push holds one on its backup while it runs:
//
//	backups/<id>/lease.json         written before the first chunk, renewed
//	                                every LeaseRenew, removed at the end
//
// A lease is live while the later of its Renewed time (the holder's clock)
// and its object's modification time (the store's clock) is younger than
// its TTL. The holder renews it every LeaseRenew and gives it up as lost
// (and with it the work it protects) once LeaseMargin of the TTL is all
// that is left without a successful renewal: the clocks of the holder and
// of retention may disagree by up to that margin.
const (
	// LeaseName is the lease object's name inside the prefix it protects.
	LeaseName = "lease.json"
	// DefaultLeaseTTL is how long a lease protects without a renewal.
	DefaultLeaseTTL = 10 * time.Minute
	// DefaultLeaseRenew is how often the holder renews it.
	DefaultLeaseRenew = time.Minute
)

var (
	// ErrLeaseHeld is wrapped when another writer holds the lease.
	ErrLeaseHeld = errors.New("lease held by another writer")
	// ErrLeaseLost is wrapped when the lease expired or was removed while
	// its holder worked: retention (or backup delete) may have removed what
	// it protected.
	ErrLeaseLost = errors.New("lease lost")
	// ErrLeaseDamaged is wrapped when the lease object cannot be parsed.
	ErrLeaseDamaged = errors.New("lease is damaged")
)

// BackupLeaseKey is where a running backup's lease is.
func BackupLeaseKey(id string) string { return "backups/" + id + "/" + LeaseName }

// Lease is the stored record.
type Lease struct {
	Kind     string    `json:"kind"`   // what holds it: "backup push"
	Holder   string    `json:"holder"` // host and process id
	Token    string    `json:"token"`  // random; the holder recognises its own lease by it
	TTL      Duration  `json:"ttl"`
	Acquired time.Time `json:"acquired"`
	Renewed  time.Time `json:"renewed"`
	// WAL is the first segment the holder needs kept (a backup's start
	// segment) once it is known; retention keeps WAL from it on.
	WAL string `json:"wal,omitempty"`
	// Parent is the backup a running incremental backup is taken against:
	// it, and the chain it stands on, must outlive the lease.
	Parent string `json:"parent,omitempty"`
}

// Expires is when the lease stops protecting, given the modification time
// its store reports for it. A TTL that is not positive counts as the
// default.
func (l Lease) Expires(modified time.Time) time.Time {
	ttl := time.Duration(l.TTL)
	if ttl <= 0 {
		ttl = DefaultLeaseTTL
	}
	last := l.Renewed
	if modified.After(last) {
		last = modified
	}
	return last.Add(ttl)
}

// Live reports whether the lease protects its prefix at now.
func (l Lease) Live(now, modified time.Time) bool { return now.Before(l.Expires(modified)) }

// ReadLease reads the lease at key. A lease whose content is damaged is
// ErrLeaseDamaged; one that is not there, backends.ErrNotFound.
func (a *Archive) ReadLease(ctx context.Context, key string) (Lease, backends.ObjectInfo, error) {
	rc, info, err := a.store.Get(ctx, key)
	if err != nil {
		return Lease{}, info, fmt.Errorf("read lease %s: %w", key, err)
	}
	defer rc.Close()
	b, err := io.ReadAll(io.LimitReader(rc, 1<<16))
	if err != nil {
		return Lease{}, info, fmt.Errorf("read lease %s: %w", key, err)
	}
	var l Lease
	if err := json.Unmarshal(b, &l); err != nil || l.Token == "" {
		return Lease{}, info, backends.Permanent(fmt.Errorf("%s: %w", key, ErrLeaseDamaged))
	}
	return l, info, nil
}

// LeaseOptions tune a held lease. Zero values take the defaults.
type LeaseOptions struct {
	Kind  string
	TTL   time.Duration    // DefaultLeaseTTL
	Renew time.Duration    // DefaultLeaseRenew; at most a third of TTL
	Now   func() time.Time // the clock stamped into the lease; time.Now
	// Parent is recorded in the lease (Lease.Parent).
	Parent string
}

// LeaseMargin is the part of the TTL the holder does not count on: it
// gives the lease up when no renewal succeeded for TTL minus this.
func LeaseMargin(ttl time.Duration) time.Duration { return ttl / 5 }

// HeldLease is a lease this process holds.
type HeldLease struct {
	a     *Archive
	key   string
	o     LeaseOptions
	lease Lease

	renew sync.Mutex // one renewal at a time
	mu    sync.Mutex
	valid time.Time // ours until then, by our clock
	lost  error
	stop  chan struct{}
	done  chan struct{}
}

// AcquireLease writes a new lease at key; ErrLeaseHeld if there is one.
func (a *Archive) AcquireLease(ctx context.Context, key string, o LeaseOptions) (*HeldLease, error) {
	if o.TTL <= 0 {
		o.TTL = DefaultLeaseTTL
	}
	if o.Renew <= 0 {
		o.Renew = DefaultLeaseRenew
	}
	o.Renew = min(o.Renew, o.TTL/3)
	if o.Now == nil {
		o.Now = time.Now
	}
	var tok [16]byte
	_, _ = rand.Read(tok[:])
	host, _ := os.Hostname()
	now := o.Now()
	h := &HeldLease{a: a, key: key, o: o, lease: Lease{Kind: o.Kind, Holder: host + ":" + strconv.Itoa(os.Getpid()),
		Token: hex.EncodeToString(tok[:]), TTL: Duration(o.TTL), Acquired: now.UTC(), Renewed: now.UTC(), Parent: o.Parent}}
	b, _ := json.MarshalIndent(h.lease, "", "  ")
	err := a.store.PutIfAbsent(ctx, key, bytes.NewReader(b), int64(len(b)))
	if errors.Is(err, backends.ErrExists) {
		return nil, fmt.Errorf("%s: %w", key, ErrLeaseHeld)
	}
	if err != nil {
		return nil, fmt.Errorf("write lease %s: %w", key, err)
	}
	h.valid = now.Add(o.TTL - LeaseMargin(o.TTL))
	return h, nil
}

// Key is where the lease is stored.
func (h *HeldLease) Key() string { return h.key }

// TTL is how long the lease lasts without a renewal, after defaults.
func (h *HeldLease) TTL() time.Duration { return h.o.TTL }

// Renew is how often the lease is renewed, after defaults.
func (h *HeldLease) Renew() time.Duration { return h.o.Renew }

// check fails once the lease is lost or lapsed by our clock.
func (h *HeldLease) check(now time.Time) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.lost == nil && !now.Before(h.valid) {
		h.lost = fmt.Errorf("%w: %s was not renewed for %s (TTL %s): retention may have removed what it protected",
			ErrLeaseLost, h.key, h.o.TTL-LeaseMargin(h.o.TTL), h.o.TTL)
	}
	return h.lost
}

func (h *HeldLease) setLost(err error) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.lost == nil {
		h.lost = err
	}
	return h.lost
}

// RenewOnce renews the lease: it must still be ours by our clock and still
// stored with our token. Transient storage errors are returned as they
// are (the next renewal may succeed); a lapsed, removed or replaced lease
// is ErrLeaseLost, for good.
func (h *HeldLease) RenewOnce(ctx context.Context) error {
	h.renew.Lock()
	defer h.renew.Unlock()
	now := h.o.Now()
	if err := h.check(now); err != nil {
		return err
	}
	cur, _, err := h.a.ReadLease(ctx, h.key)
	switch {
	case errors.Is(err, backends.ErrNotFound):
		return h.setLost(fmt.Errorf("%w: %s was removed (by retention or backup delete?)", ErrLeaseLost, h.key))
	case errors.Is(err, ErrLeaseDamaged):
		return h.setLost(fmt.Errorf("%w: %w", ErrLeaseLost, err))
	case err != nil:
		return err
	case cur.Token != h.lease.Token:
		return h.setLost(fmt.Errorf("%w: %s now belongs to %s", ErrLeaseLost, h.key, cur.Holder))
	}
	l := h.lease
	l.Renewed = now.UTC()
	b, _ := json.MarshalIndent(l, "", "  ")
	if err := h.a.store.Put(ctx, h.key, bytes.NewReader(b), int64(len(b))); err != nil {
		return fmt.Errorf("renew lease %s: %w", h.key, err)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.lost != nil {
		return h.lost
	}
	h.lease, h.valid = l, now.Add(h.o.TTL-LeaseMargin(h.o.TTL))
	return nil
}

// SetWAL records the first segment the holder needs; the next renewal
// stores it.
func (h *HeldLease) SetWAL(name string) {
	h.renew.Lock()
	defer h.renew.Unlock()
	h.lease.WAL = name
}

// Remaining is how long the lease is still ours by our clock, or an
// error if it is lost.
func (h *HeldLease) Remaining() (time.Duration, error) {
	now := h.o.Now()
	if err := h.check(now); err != nil {
		return 0, err
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.valid.Sub(now), nil
}

// Keep renews the lease every Renew until Release, in the background.
// lost is called once, from the background, if the lease is lost.
func (h *HeldLease) Keep(ctx context.Context, lost func(error)) {
	h.stop, h.done = make(chan struct{}), make(chan struct{})
	go func() {
		defer close(h.done)
		t := time.NewTicker(h.o.Renew)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-h.stop:
				return
			case <-t.C:
			}
			rctx, cancel := context.WithTimeout(ctx, h.o.Renew)
			err := h.RenewOnce(rctx)
			cancel()
			if errors.Is(err, ErrLeaseLost) {
				lost(err)
				return
			}
		}
	}()
}

// Release stops the renewals and removes the lease if it is still ours.
func (h *HeldLease) Release(ctx context.Context) error {
	if h.stop != nil {
		close(h.stop)
		<-h.done
		h.stop = nil
	}
	cur, _, err := h.a.ReadLease(ctx, h.key)
	switch {
	case errors.Is(err, backends.ErrNotFound):
		return nil
	case err != nil && !errors.Is(err, ErrLeaseDamaged):
		return err
	case err == nil && cur.Token != h.lease.Token:
		return nil
	}
	if err := h.a.store.Delete(ctx, h.key); err != nil {
		return fmt.Errorf("remove lease %s: %w", h.key, err)
	}
	return nil
}
