package archive

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/walship/walship/backends"
	"github.com/walship/walship/backends/memory"
)

// clock is a fake clock the test moves by hand.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func newLeaseArchive(t *testing.T) (*Archive, *memory.Storage, *clock) {
	t.Helper()
	store := memory.New()
	return New(store, slog.New(slog.DiscardHandler)), store, &clock{t: time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)}
}

func TestLeaseAcquireRenewRelease(t *testing.T) {
	ctx := context.Background()
	a, store, clk := newLeaseArchive(t)
	key := BackupLeaseKey("20261126T120000Z")
	h, err := a.AcquireLease(ctx, key, LeaseOptions{Kind: "backup push", TTL: 10 * time.Minute, Renew: time.Minute, Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.AcquireLease(ctx, key, LeaseOptions{Now: clk.Now}); !errors.Is(err, ErrLeaseHeld) {
		t.Fatalf("second acquire: %v, want ErrLeaseHeld", err)
	}
	l, info, err := a.ReadLease(ctx, key)
	if err != nil || l.Kind != "backup push" || l.Token == "" || !l.Renewed.Equal(clk.Now()) || time.Duration(l.TTL) != 10*time.Minute {
		t.Fatalf("stored lease %+v, %v", l, err)
	}
	if !l.Live(clk.Now().Add(9*time.Minute), info.Modified) || l.Live(clk.Now().Add(10*time.Minute), time.Time{}) {
		t.Errorf("a 10m lease: live at +9m, expired at +10m")
	}
	// Renewed at +7m (within TTL minus the margin): ours until +15m.
	clk.Add(7 * time.Minute)
	h.SetWAL("000000010000000000000042")
	if err := h.RenewOnce(ctx); err != nil {
		t.Fatal(err)
	}
	if l, _, _ = a.ReadLease(ctx, key); !l.Renewed.Equal(clk.Now()) || l.WAL != "000000010000000000000042" {
		t.Fatalf("renewal not stored: %+v", l)
	}
	if left, err := h.Remaining(); err != nil || left != 8*time.Minute {
		t.Fatalf("remaining %s, %v; want 8m (TTL minus a fifth)", left, err)
	}
	if err := h.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := store.Stat(ctx, key); !errors.Is(err, backends.ErrNotFound) {
		t.Fatalf("released lease still there: %v", err)
	}
}

func TestLeaseLost(t *testing.T) {
	ctx := context.Background()
	opts := func(clk *clock) LeaseOptions {
		return LeaseOptions{TTL: 10 * time.Minute, Renew: time.Minute, Now: clk.Now}
	}
	t.Run("lapsed by the holder's clock", func(t *testing.T) {
		a, _, clk := newLeaseArchive(t)
		h, err := a.AcquireLease(ctx, "backups/x/lease.json", opts(clk))
		if err != nil {
			t.Fatal(err)
		}
		clk.Add(8 * time.Minute) // TTL minus the margin: retention's clock may be ahead
		if err := h.RenewOnce(ctx); !errors.Is(err, ErrLeaseLost) {
			t.Fatalf("renew after 8m: %v, want ErrLeaseLost", err)
		}
		if _, err := h.Remaining(); !errors.Is(err, ErrLeaseLost) {
			t.Fatalf("remaining: %v", err)
		}
		// Lost is for good: the holder never revives it.
		clk.Add(-8 * time.Minute)
		if err := h.RenewOnce(ctx); !errors.Is(err, ErrLeaseLost) {
			t.Fatalf("renew after loss: %v", err)
		}
	})
	t.Run("removed", func(t *testing.T) {
		a, store, clk := newLeaseArchive(t)
		h, _ := a.AcquireLease(ctx, "backups/x/lease.json", opts(clk))
		_ = store.Delete(ctx, "backups/x/lease.json")
		if err := h.RenewOnce(ctx); !errors.Is(err, ErrLeaseLost) {
			t.Fatalf("renew of a removed lease: %v", err)
		}
		if _, err := store.Stat(ctx, "backups/x/lease.json"); !errors.Is(err, backends.ErrNotFound) {
			t.Fatalf("a lost lease was recreated: %v", err)
		}
	})
	t.Run("replaced", func(t *testing.T) {
		a, store, clk := newLeaseArchive(t)
		h, _ := a.AcquireLease(ctx, "backups/x/lease.json", opts(clk))
		_ = store.Delete(ctx, "backups/x/lease.json")
		other, err := a.AcquireLease(ctx, "backups/x/lease.json", opts(clk))
		if err != nil {
			t.Fatal(err)
		}
		if err := h.RenewOnce(ctx); !errors.Is(err, ErrLeaseLost) {
			t.Fatalf("renew of a replaced lease: %v", err)
		}
		if err := h.Release(ctx); err != nil {
			t.Fatal(err)
		}
		if _, err := store.Stat(ctx, other.Key()); err != nil {
			t.Fatalf("release removed another holder's lease: %v", err)
		}
	})
	t.Run("damaged", func(t *testing.T) {
		a, store, clk := newLeaseArchive(t)
		h, _ := a.AcquireLease(ctx, "backups/x/lease.json", opts(clk))
		_ = store.Put(ctx, "backups/x/lease.json", bytes.NewReader([]byte("{")), 1)
		if _, _, err := a.ReadLease(ctx, "backups/x/lease.json"); !errors.Is(err, ErrLeaseDamaged) {
			t.Fatalf("read of a damaged lease: %v", err)
		}
		if err := h.RenewOnce(ctx); !errors.Is(err, ErrLeaseLost) {
			t.Fatalf("renew of a damaged lease: %v", err)
		}
	})
	t.Run("background renewal reports the loss", func(t *testing.T) {
		a, store, _ := newLeaseArchive(t)
		h, err := a.AcquireLease(ctx, "backups/x/lease.json", LeaseOptions{TTL: time.Minute, Renew: 5 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		lost := make(chan error, 1)
		h.Keep(ctx, func(err error) { lost <- err })
		_ = store.Delete(ctx, h.Key())
		select {
		case err := <-lost:
			if !errors.Is(err, ErrLeaseLost) {
				t.Fatalf("lost with %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("the background renewal did not notice the removed lease")
		}
		if err := h.Release(ctx); err != nil {
			t.Fatal(err)
		}
	})
}

// The later of the holder's and the store's clocks counts: a holder whose
// clock is behind does not lose its lease to retention early.
func TestLeaseLiveUsesTheLaterClock(t *testing.T) {
	now := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	l := Lease{TTL: Duration(10 * time.Minute), Renewed: now.Add(-20 * time.Minute)}
	if l.Live(now, now.Add(-30*time.Minute)) {
		t.Error("renewed 20m ago, modified 30m ago: live")
	}
	if !l.Live(now, now.Add(-time.Minute)) {
		t.Error("modified a minute ago by the store's clock: expired")
	}
	if (Lease{}).Expires(now) != now.Add(DefaultLeaseTTL) {
		t.Error("a lease without a TTL does not count with the default")
	}
}
