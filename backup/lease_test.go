package backup_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/walship/walship/archive"
	"github.com/walship/walship/backends"
	"github.com/walship/walship/backends/memory"
	"github.com/walship/walship/backup"
	"github.com/walship/walship/manifest"
)

// hookStore records the order of writes and runs onStat at the first Stat
// of a WAL segment: backup push is then waiting for its WAL, with every
// chunk written.
type hookStore struct {
	*memory.Storage
	mu     sync.Mutex
	puts   []string
	onStat func()
}

func (h *hookStore) record(key string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.puts = append(h.puts, key)
}

func (h *hookStore) PutIfAbsent(ctx context.Context, key string, body io.ReadSeeker, size int64) error {
	h.record(key)
	return h.Storage.PutIfAbsent(ctx, key, body, size)
}

func (h *hookStore) Put(ctx context.Context, key string, body io.ReadSeeker, size int64) error {
	h.record(key)
	return h.Storage.Put(ctx, key, body, size)
}

func (h *hookStore) Stat(ctx context.Context, key string) (backends.ObjectInfo, error) {
	h.mu.Lock()
	f := h.onStat
	if strings.HasPrefix(key, "wal/") {
		h.onStat = nil
	}
	h.mu.Unlock()
	if f != nil && strings.HasPrefix(key, "wal/") {
		f()
	}
	return h.Storage.Stat(ctx, key)
}

type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func onlyBackupID(ctx context.Context, t *testing.T, store backends.Storage) string {
	t.Helper()
	keys := keysUnder(ctx, t, store, manifest.Prefix)
	if len(keys) == 0 {
		t.Fatal("nothing under backups/")
	}
	id, _, _ := strings.Cut(strings.TrimPrefix(keys[0], manifest.Prefix), "/")
	return id
}

// The lease is the backup's first object, names the start segment while
// the backup waits for its WAL, and is gone once the backup is complete.
func TestPushHoldsLease(t *testing.T) {
	ctx := context.Background()
	store := &hookStore{Storage: memory.New()}
	putWAL(t, store.Storage, 3)
	a := archive.New(store, slog.New(slog.DiscardHandler))
	var during archive.Lease
	var duringErr error
	store.onStat = func() {
		id := onlyBackupID(ctx, t, store.Storage)
		during, _, duringErr = a.ReadLease(ctx, archive.BackupLeaseKey(id))
	}
	m, err := backup.Push(ctx, a, newFakeServer(t, false), options())
	if err != nil {
		t.Fatal(err)
	}
	if duringErr != nil || during.Kind != "backup push" || during.WAL != "000000010000000000000002" ||
		time.Duration(during.TTL) != archive.DefaultLeaseTTL {
		t.Fatalf("lease while waiting for WAL: %+v, %v", during, duringErr)
	}
	var first string
	for _, k := range store.puts {
		if strings.HasPrefix(k, manifest.Prefix) {
			first = k
			break
		}
	}
	if first != archive.BackupLeaseKey(m.ID) {
		t.Errorf("first object written under backups/ is %s, want the lease", first)
	}
	if _, err := store.Storage.Stat(ctx, archive.BackupLeaseKey(m.ID)); !errors.Is(err, backends.ErrNotFound) {
		t.Errorf("the lease outlived the backup: %v", err)
	}
	if _, err := manifest.Get(ctx, store, m.ID); err != nil {
		t.Errorf("complete backup: %v", err)
	}
}

// Whatever removes part of a running backup, or its lease, backup push
// fails, writes no manifest and leaves nothing behind.
func TestPushRefusesLostData(t *testing.T) {
	cases := []struct {
		name string
		hit  func(t *testing.T, store *memory.Storage, clk *fakeClock, id string)
		want error
	}{
		{"a chunk removed", func(t *testing.T, store *memory.Storage, _ *fakeClock, id string) {
			_ = store.Delete(context.Background(), manifest.Prefix+id+"/base.tar.00000")
		}, backup.ErrLost},
		{"a chunk truncated", func(t *testing.T, store *memory.Storage, _ *fakeClock, id string) {
			key := manifest.Prefix + id + "/base.tar.00001"
			rc, _, err := store.Get(context.Background(), key)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(rc)
			rc.Close()
			_ = store.Put(context.Background(), key, strings.NewReader(string(b[:len(b)/2])), int64(len(b)/2))
		}, backup.ErrLost},
		{"the server manifest removed", func(t *testing.T, store *memory.Storage, _ *fakeClock, id string) {
			_ = store.Delete(context.Background(), manifest.Prefix+id+"/backup_manifest")
		}, backup.ErrLost},
		{"the lease removed", func(t *testing.T, store *memory.Storage, _ *fakeClock, id string) {
			_ = store.Delete(context.Background(), archive.BackupLeaseKey(id))
		}, archive.ErrLeaseLost},
		{"the lease lapsed (no renewal for TTL minus the margin)", func(_ *testing.T, _ *memory.Storage, clk *fakeClock, _ string) {
			clk.Add(archive.DefaultLeaseTTL - archive.LeaseMargin(archive.DefaultLeaseTTL))
		}, archive.ErrLeaseLost},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			store := &hookStore{Storage: memory.New()}
			putWAL(t, store.Storage, 3)
			clk := &fakeClock{t: time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)}
			store.onStat = func() { tc.hit(t, store.Storage, clk, onlyBackupID(context.Background(), t, store.Storage)) }
			o := options()
			o.Now = clk.Now
			o.LeaseRenew = time.Hour // no background renewal during the test: the clock is fake
			o.LeaseTTL = archive.DefaultLeaseTTL
			_, err := backup.Push(context.Background(), archive.New(store, slog.New(slog.DiscardHandler)), newFakeServer(t, false), o)
			if !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
			if keys := keysUnder(context.Background(), t, store.Storage, manifest.Prefix); len(keys) != 0 {
				t.Errorf("failed backup left %v", keys)
			}
			for _, k := range store.puts {
				if strings.HasSuffix(k, "/manifest.json") {
					t.Errorf("manifest written: %s", k)
				}
			}
		})
	}
}
