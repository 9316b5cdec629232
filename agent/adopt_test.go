package agent_test

import (
	"context"
	"log/slog"
	"path/filepath"
	"testing"
	"testing/synctest"
	"time"

	"github.com/walship/walship/agent"
	"github.com/walship/walship/archive"
	"github.com/walship/walship/backends/memory"
	"github.com/walship/walship/internal/archivetest"
	"github.com/walship/walship/spool"
)

// An agent started on a spool an earlier run filled counts those segments
// as its own when it reaches them (checked again, not downloaded again):
// the standby taking one is replay reaching it, the slot hears of it, and
// the window moves on without fetching the taken segment a second time.
func TestAgentAdoptsWhatAnEarlierRunPlaced(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		store := memory.New()
		a := archive.New(store, slog.New(slog.DiscardHandler))
		archivetest.SlotAt3(t, a)
		spoolDir := t.TempDir()
		opts := agent.Options{Spool: spoolDir, Slot: "dr", Ahead: 3, Parallel: 2,
			PollMin: 5 * time.Millisecond, PollMax: 20 * time.Millisecond, Heartbeat: 10 * time.Millisecond}
		run := func() (*agent.Agent, context.CancelFunc, chan error) {
			ctx, cancel := context.WithCancel(context.Background())
			ag := agent.New(a, opts)
			done := make(chan error, 1)
			go func() { done <- ag.Run(ctx) }()
			return ag, cancel, done
		}
		first, stop, done := run()
		archivetest.Eventually(t, "three segments", 10*time.Second, func() bool { return first.Stats().Downloads.Load() >= 3 })
		stop()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		second, stop, done := run()
		defer func() {
			stop()
			if err := <-done; err != nil {
				t.Error(err)
			}
		}()
		archivetest.Eventually(t, "the second agent polled", 10*time.Second, func() bool { return second.Stats().HeadSegment.Load() != 0 })
		synctest.Wait()
		dest := filepath.Join(t.TempDir(), "RECOVERYXLOG")
		if took, err := spool.Take(spoolDir, archivetest.Seg(3), dest); !took || err != nil {
			t.Fatalf("take: %v %v", took, err)
		}
		archivetest.Eventually(t, "the take noticed", 10*time.Second, func() bool { return second.Stats().Taken.Load() == 1 })
		archivetest.Eventually(t, "the slot told", 10*time.Second, func() bool {
			s, err := a.GetSlot(context.Background(), "dr")
			return err == nil && s.Replayed == archivetest.Seg(3)
		})
		archivetest.Eventually(t, "the window moved on", 10*time.Second, func() bool { return archivetest.SpoolNames(t, spoolDir)[archivetest.Seg(6)] })
		if got := archivetest.SpoolNames(t, spoolDir); got[archivetest.Seg(3)] || second.Stats().Downloads.Load() != 1 {
			t.Errorf("spool %v after %d downloads: the taken segment came back, or more than segment 6 was fetched", got, second.Stats().Downloads.Load())
		}
	})
}
