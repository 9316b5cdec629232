package restore_test

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/walship/walship/archive"
	"github.com/walship/walship/backends/memory"
	"github.com/walship/walship/internal/testenv"
	"github.com/walship/walship/restore"
	"github.com/walship/walship/segment"
)

const sys = 7300000000000000009

func seg(n uint64) string { return segment.Name{TLI: 1, SegNo: n}.String(1 << 20) }

func pushSegments(t *testing.T, a *archive.Archive, from, to uint64) {
	dir := t.TempDir()
	for n := from; n <= to; n++ {
		if _, err := a.Push(context.Background(), testenv.WriteSegment(t, dir, seg(n), sys, nil), segment.Compression{Codec: segment.CodecZstd}); err != nil {
			t.Fatal(err)
		}
	}
}

// slotAt3 archives segments 2 to 9 and a slot "dr" that needs 3 onward.
func slotAt3(t *testing.T, a *archive.Archive) {
	t.Helper()
	ctx := context.Background()
	pushSegments(t, a, 2, 9)
	if _, err := a.CreateSlot(ctx, "dr", time.Hour); err != nil {
		t.Fatal(err)
	}
	if _, err := a.UpdateSlot(ctx, "dr", archive.SlotUpdate{Position: seg(3), Reset: true}); err != nil {
		t.Fatal(err)
	}
}

func spoolNames(t *testing.T, dir string) map[string]bool {
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]bool{}
	for _, e := range ents {
		if e.Name()[0] != '.' {
			out[e.Name()] = true
		}
	}
	return out
}

func TestAgentFillsSpoolWithinBounds(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	store := memory.New()
	a := archive.New(store, slog.New(slog.DiscardHandler))
	slotAt3(t, a)
	spool := t.TempDir()
	ag := restore.NewAgent(a, restore.AgentOptions{Spool: spool, Slot: "dr", Ahead: 3, Parallel: 2,
		PollMin: 5 * time.Millisecond, PollMax: 20 * time.Millisecond, Heartbeat: 10 * time.Millisecond})
	done := make(chan error, 1)
	go func() { done <- ag.Run(ctx) }()

	// It starts at the slot's position and stops at three ahead.
	// A file is in the spool a moment before the agent counts it.
	testenv.WaitFor(t, "three segments downloaded", 10*time.Second, func() bool { return ag.Stats().Downloads.Load() >= 3 })
	got := spoolNames(t, spool)
	if len(got) != 3 {
		t.Fatalf("spool holds %v, want three with ahead=3", got)
	}
	for _, n := range []uint64{3, 4, 5} {
		if !got[seg(n)] {
			t.Fatalf("spool %v lacks %s", got, seg(n))
		}
	}
	if ag.Stats().Downloads.Load() != 3 {
		t.Fatalf("downloads %d, want 3 with ahead=3", ag.Stats().Downloads.Load())
	}
	// fetch --spool takes one by rename: the agent sees replay reach it
	// and fetches the next.
	dest := filepath.Join(t.TempDir(), "RECOVERYXLOG")
	if took, err := restore.TakeFromSpool(spool, seg(3), dest); !took || err != nil {
		t.Fatalf("take: %v %v", took, err)
	}
	if st, err := os.Stat(dest); err != nil || st.Size() != 1<<20 {
		t.Fatalf("handed-over file: %v", err)
	}
	testenv.WaitFor(t, "the next segment", 10*time.Second, func() bool { return spoolNames(t, spool)[seg(6)] })
	if took, _ := restore.TakeFromSpool(spool, seg(3), dest); took {
		t.Fatal("a file was handed over twice")
	}
	// The slot hears of replay.
	testenv.WaitFor(t, "the slot's heartbeat", 10*time.Second, func() bool {
		s, err := a.GetSlot(ctx, "dr")
		return err == nil && s.Replayed == seg(3)
	})

	// A segment the standby needs vanishes while later ones exist: gone.
	for _, n := range []uint64{4, 5, 6} {
		if took, _ := restore.TakeFromSpool(spool, seg(n), dest); !took {
			t.Fatalf("take %s", seg(n))
		}
	}
	if err := store.Delete(ctx, archive.Key(segment.File{Kind: segment.KindSegment, TLI: 1, Log: 0, Seg: 8})); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, "the agent to report segment 8 gone", 10*time.Second, func() bool { return ag.Stats().Gone.Load() })
	testenv.WaitFor(t, "the slot to carry the problem", 10*time.Second, func() bool {
		s, _ := a.GetSlot(ctx, "dr")
		return s.Problem != ""
	})
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if ents, _ := filepath.Glob(filepath.Join(spool, ".0*")); len(ents) != 0 {
		t.Errorf("temporary files left: %v", ents)
	}
}

func TestKnownAbsent(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	a := archive.New(memory.New(), slog.New(slog.DiscardHandler))
	pushSegments(t, a, 2, 4)
	if _, err := a.CreateSlot(ctx, "dr", time.Hour); err != nil {
		t.Fatal(err)
	}
	if _, err := a.UpdateSlot(ctx, "dr", archive.SlotUpdate{Position: seg(2), Reset: true}); err != nil {
		t.Fatal(err)
	}
	spool := t.TempDir()
	ag := restore.NewAgent(a, restore.AgentOptions{Spool: spool, Slot: "dr", Ahead: 8,
		PollMin: 5 * time.Millisecond, PollMax: 20 * time.Millisecond})
	go func() { _ = ag.Run(ctx) }()
	now := time.Now()
	testenv.WaitFor(t, "the agent to be caught up", 10*time.Second, func() bool {
		return restore.KnownAbsent(spool, seg(5), time.Now())
	})
	for name, want := range map[string]bool{
		seg(5): true, seg(9): true, seg(4): false, seg(3): false,
		"00000002.history": true, "00000003.history": false,
		"000000020000000000000005": false, // another timeline: ask the archive
	} {
		if got := restore.KnownAbsent(spool, name, time.Now()); got != want {
			t.Errorf("KnownAbsent(%s) = %v, want %v", name, got, want)
		}
	}
	// A stale poll is not trusted.
	if restore.KnownAbsent(spool, seg(5), now.Add(time.Hour)) {
		t.Error("an hour-old poll was trusted")
	}
}
