package agent_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/walship/walship/agent"
	"github.com/walship/walship/archive"
	"github.com/walship/walship/backends"
	"github.com/walship/walship/backends/memory"
	"github.com/walship/walship/internal/archivetest"
	"github.com/walship/walship/internal/testenv"
	"github.com/walship/walship/segment"
)

// dropping fails every third read while it is on: a store behind a network
// that drops connections.
type dropping struct {
	backends.Storage
	mu    sync.Mutex
	on    bool
	calls int
}

var errInjected = errors.New("injected: connection reset by peer")

func (f *dropping) fail() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	return f.on && f.calls%3 == 0
}

func (f *dropping) set(on bool) {
	f.mu.Lock()
	f.on = on
	f.mu.Unlock()
}

func (f *dropping) Get(ctx context.Context, key string) (io.ReadCloser, backends.ObjectInfo, error) {
	if f.fail() {
		return nil, backends.ObjectInfo{}, errInjected
	}
	return f.Storage.Get(ctx, key)
}

func (f *dropping) Stat(ctx context.Context, key string) (backends.ObjectInfo, error) {
	if f.fail() {
		return backends.ObjectInfo{}, errInjected
	}
	return f.Storage.Stat(ctx, key)
}

// TestAgentUnderFaults: with every third read failing and one archived
// segment corrupted, the agent places only verified segments, counts the
// failures, never calls the corrupt one gone, and places it once the
// archive holds a good copy.
func TestAgentUnderFaults(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		mem := memory.New()
		store := &dropping{Storage: mem}
		a := archive.New(store, slog.New(slog.DiscardHandler))
		archivetest.SlotAt3(t, a)
		key5 := archive.Key(segment.File{Kind: segment.KindSegment, TLI: 1, Seg: 5})
		mem.Corrupt(key5, 200)

		spool := t.TempDir()
		ag := agent.New(a, agent.Options{Spool: spool, Slot: "dr", Ahead: 4, Parallel: 2,
			PollMin: 5 * time.Millisecond, PollMax: 20 * time.Millisecond, Heartbeat: 10 * time.Millisecond})
		done := make(chan error, 1)
		go func() { done <- ag.Run(ctx) }()
		// The network turns bad once the agent runs (at start, an unreachable
		// archive is an error for the service manager to retry).
		archivetest.Eventually(t, "the first poll", 10*time.Second, func() bool { return ag.Stats().LastPoll.Load() != 0 })
		store.set(true)

		// Ahead 4 from the slot's position: 3 to 6, 5 being the corrupt one.
		archivetest.Eventually(t, "3, 4 and 6 in the spool despite the faults", 20*time.Second, func() bool {
			got := archivetest.SpoolNames(t, spool)
			return got[archivetest.Seg(3)] && got[archivetest.Seg(4)] && got[archivetest.Seg(6)]
		})
		archivetest.Eventually(t, "failures to be counted", 10*time.Second, func() bool { return ag.Stats().Failures.Load() >= 2 })
		if archivetest.SpoolNames(t, spool)[archivetest.Seg(5)] {
			t.Fatal("the corrupt segment was placed in the spool")
		}
		if ag.Stats().Gone.Load() {
			t.Fatal("a corrupt segment was reported gone: it is there, damaged")
		}
		want := t.TempDir()
		for _, n := range []uint64{3, 4, 6} {
			orig, err := os.ReadFile(testenv.WriteSegment(t, want, archivetest.Seg(n), archivetest.Sys, nil))
			if err != nil {
				t.Fatal(err)
			}
			got, err := os.ReadFile(filepath.Join(spool, archivetest.Seg(n)))
			if err != nil || !bytes.Equal(got, orig) {
				t.Fatalf("%s in the spool differs from what was archived (%v)", archivetest.Seg(n), err)
			}
		}

		// The operator replaces the damaged object; the faults stop.
		store.set(false)
		if err := mem.Delete(ctx, key5); err != nil {
			t.Fatal(err)
		}
		archivetest.PushSegments(t, a, 5, 5)
		archivetest.Eventually(t, "the repaired segment in the spool", 20*time.Second, func() bool { return archivetest.SpoolNames(t, spool)[archivetest.Seg(5)] })
		cancel()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		if ents, _ := filepath.Glob(filepath.Join(spool, ".0*")); len(ents) != 0 {
			t.Errorf("temporary files left: %v", ents)
		}
	})
}
