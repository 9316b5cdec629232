package agent_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
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
	"github.com/walship/walship/spool"
)

func TestAgentFillsSpoolWithinBounds(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		store := memory.New()
		a := archive.New(store, slog.New(slog.DiscardHandler))
		archivetest.SlotAt3(t, a)
		spoolDir := t.TempDir()
		ag := agent.New(a, agent.Options{Spool: spoolDir, Slot: "dr", Ahead: 3, Parallel: 2,
			PollMin: 5 * time.Millisecond, PollMax: 20 * time.Millisecond, Heartbeat: 10 * time.Millisecond})
		done := make(chan error, 1)
		go func() { done <- ag.Run(ctx) }()

		// It starts at the slot's position and stops at three ahead.
		// A file is in the spool a moment before the agent counts it.
		archivetest.Eventually(t, "three segments downloaded", 10*time.Second, func() bool { return ag.Stats().Downloads.Load() >= 3 })
		got := archivetest.SpoolNames(t, spoolDir)
		if len(got) != 3 {
			t.Fatalf("spool holds %v, want three with ahead=3", got)
		}
		for _, n := range []uint64{3, 4, 5} {
			if !got[archivetest.Seg(n)] {
				t.Fatalf("spool %v lacks %s", got, archivetest.Seg(n))
			}
		}
		if ag.Stats().Downloads.Load() != 3 {
			t.Fatalf("downloads %d, want 3 with ahead=3", ag.Stats().Downloads.Load())
		}
		// fetch --spool takes one by rename: the agent sees replay reach it
		// and fetches the next.
		dest := filepath.Join(t.TempDir(), "RECOVERYXLOG")
		if took, err := spool.Take(spoolDir, archivetest.Seg(3), dest); !took || err != nil {
			t.Fatalf("take: %v %v", took, err)
		}
		if st, err := os.Stat(dest); err != nil || st.Size() != 1<<20 {
			t.Fatalf("handed-over file: %v", err)
		}
		archivetest.Eventually(t, "the next segment", 10*time.Second, func() bool { return archivetest.SpoolNames(t, spoolDir)[archivetest.Seg(6)] })
		if took, _ := spool.Take(spoolDir, archivetest.Seg(3), dest); took {
			t.Fatal("a file was handed over twice")
		}
		// The slot hears of replay.
		archivetest.Eventually(t, "the slot's heartbeat", 10*time.Second, func() bool {
			s, err := a.GetSlot(ctx, "dr")
			return err == nil && s.Replayed == archivetest.Seg(3)
		})

		// A segment the standby needs vanishes while later ones exist: gone.
		// (Deleted before the takes: with 4 to 6 in the spool, the agent
		// downloads nothing more until they are taken.)
		if err := store.Delete(ctx, archive.Key(segment.File{Kind: segment.KindSegment, TLI: 1, Log: 0, Seg: 8})); err != nil {
			t.Fatal(err)
		}
		for _, n := range []uint64{4, 5, 6} {
			if took, _ := spool.Take(spoolDir, archivetest.Seg(n), dest); !took {
				t.Fatalf("take %s", archivetest.Seg(n))
			}
		}
		archivetest.Eventually(t, "the agent to report segment 8 gone", 10*time.Second, func() bool { return ag.Stats().Gone.Load() })
		archivetest.Eventually(t, "the slot to carry the problem", 10*time.Second, func() bool {
			s, _ := a.GetSlot(ctx, "dr")
			return s.Problem != ""
		})
		cancel()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		if ents, _ := filepath.Glob(filepath.Join(spoolDir, ".0*")); len(ents) != 0 {
			t.Errorf("temporary files left: %v", ents)
		}
	})
}

func TestKnownAbsent(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		a := archive.New(memory.New(), slog.New(slog.DiscardHandler))
		archivetest.PushSegments(t, a, 2, 4)
		if _, err := a.CreateSlot(ctx, "dr", time.Hour); err != nil {
			t.Fatal(err)
		}
		if _, err := a.UpdateSlot(ctx, "dr", archive.SlotUpdate{Position: archivetest.Seg(2), Reset: true}); err != nil {
			t.Fatal(err)
		}
		spoolDir := t.TempDir()
		// Polls at least 100ms apart: each is trusted for two intervals.
		ag := agent.New(a, agent.Options{Spool: spoolDir, Slot: "dr", Ahead: 8,
			PollMin: 100 * time.Millisecond, PollMax: 400 * time.Millisecond})
		done := make(chan error, 1)
		go func() { done <- ag.Run(ctx) }()
		defer func() { // before the spool is removed
			cancel()
			if err := <-done; err != nil {
				t.Errorf("agent stopped with %v, want nil", err)
			}
		}()
		now := time.Now()
		archivetest.Eventually(t, "the agent to be caught up", 10*time.Second, func() bool {
			return spool.KnownAbsent(spoolDir, archivetest.Seg(5), time.Now())
		})
		for name, want := range map[string]bool{
			archivetest.Seg(5): true, archivetest.Seg(9): true, archivetest.Seg(4): false, archivetest.Seg(3): false,
			"00000002.history": true, "00000003.history": false,
			"000000020000000000000005": false, // another timeline: ask the archive
		} {
			if got := spool.KnownAbsent(spoolDir, name, time.Now()); got != want {
				t.Errorf("KnownAbsent(%s) = %v, want %v", name, got, want)
			}
		}
		// A stale poll is not trusted.
		if spool.KnownAbsent(spoolDir, archivetest.Seg(5), now.Add(time.Hour)) {
			t.Error("an hour-old poll was trusted")
		}
	})
}

// otherUID is a user other than the one the tests run as.
func otherUID(t *testing.T) int {
	if u, err := user.Lookup("postgres"); err == nil && u.Uid != strconv.Itoa(os.Geteuid()) {
		n, _ := strconv.Atoi(u.Uid)
		return n
	}
	return 65534
}

// TestAgentRefusesSpoolNotItsOwn: the agent runs only as the spool's owner,
// on a spool no one else can write into, and alone.
func TestAgentRefusesSpoolNotItsOwn(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx := context.Background()
		a := archive.New(memory.New(), slog.New(slog.DiscardHandler))
		archivetest.SlotAt3(t, a)
		run := func(spoolDir string) error {
			ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			return agent.New(a, agent.Options{Spool: spoolDir, Slot: "dr"}).Run(ctx)
		}
		shared := t.TempDir()
		if err := os.Chmod(shared, 0o770); err != nil {
			t.Fatal(err)
		}
		if err := run(shared); !errors.Is(err, spool.ErrOwner) || !strings.Contains(err.Error(), "writable by group or others") {
			t.Errorf("group-writable spool: %v, want ErrSpoolOwner", err)
		}
		if err := run("relative/spool"); !errors.Is(err, spool.ErrOwner) {
			t.Errorf("relative spool: %v, want ErrSpoolOwner", err)
		}
		if os.Geteuid() != 0 {
			t.Log("not root: cannot hand a spool to another user; the owner check is not exercised")
		} else {
			// The field case: the agent started as root beside a standby
			// whose spool belongs to postgres.
			theirs := t.TempDir()
			if err := os.Chown(theirs, otherUID(t), -1); err != nil {
				t.Fatal(err)
			}
			err := run(theirs)
			if !errors.Is(err, spool.ErrOwner) || !strings.Contains(err.Error(), "is owned by") {
				t.Errorf("spool of another user: %v, want ErrSpoolOwner", err)
			}
			if ents, _ := os.ReadDir(theirs); len(ents) != 0 {
				t.Errorf("the refused agent wrote into the spool: %v", ents)
			}
		}
		// One agent per spool.
		spoolDir := t.TempDir()
		ctx1, cancel := context.WithCancel(ctx)
		defer cancel()
		first := agent.New(a, agent.Options{Spool: spoolDir, Slot: "dr", PollMin: 5 * time.Millisecond, PollMax: 20 * time.Millisecond})
		done := make(chan error, 1)
		go func() { done <- first.Run(ctx1) }()
		archivetest.Eventually(t, "the first agent to poll", 10*time.Second, func() bool { return first.Stats().LastPoll.Load() != 0 })
		if err := run(spoolDir); !errors.Is(err, archive.ErrLocal) || !strings.Contains(err.Error(), "another walship agent") {
			t.Errorf("second agent on a spool: %v, want ErrLocal (another agent)", err)
		}
		cancel()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	})
}

// holdLock takes the agent's lock on spool, as a live agent would.
func holdLock(t *testing.T, spoolDir string) func() {
	f, err := os.OpenFile(filepath.Join(spoolDir, ".walship-agent.lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		t.Fatal(err)
	}
	return func() { f.Close() }
}

// TestAgentPollDiesWithAgent: the published poll answers only while the
// agent that wrote it holds the spool's lock, and a clean stop withdraws
// it.
func TestAgentPollDiesWithAgent(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		a := archive.New(memory.New(), slog.New(slog.DiscardHandler))
		archivetest.SlotAt3(t, a)
		spoolDir := t.TempDir()
		// Polls at least 500ms apart: each is trusted for two intervals, ample
		// for what follows.
		ag := agent.New(a, agent.Options{Spool: spoolDir, Slot: "dr", Ahead: 16,
			PollMin: 500 * time.Millisecond, PollMax: time.Minute})
		done := make(chan error, 1)
		go func() { done <- ag.Run(ctx) }()
		archivetest.Eventually(t, "the agent to be caught up", 10*time.Second, func() bool {
			return spool.KnownAbsent(spoolDir, archivetest.Seg(10), time.Now())
		})

		// The same state with no live agent behind it (what kill -9 leaves):
		// not trusted; with the lock held, trusted.
		dead := t.TempDir()
		b, err := os.ReadFile(filepath.Join(spoolDir, ".walship-agent.json"))
		if err != nil {
			t.Fatal(err)
		}
		for name, content := range map[string][]byte{".walship-agent.json": b, ".walship-agent.lock": nil} {
			if err := os.WriteFile(filepath.Join(dead, name), content, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		if spool.KnownAbsent(dead, archivetest.Seg(10), time.Now()) {
			t.Fatal("a poll with no agent holding the lock was trusted")
		}
		release := holdLock(t, dead)
		if !spool.KnownAbsent(dead, archivetest.Seg(10), time.Now()) {
			t.Fatalf("a fresh poll of a live agent was not trusted at %s: %s", time.Now(), b)
		}
		release()

		// A clean stop withdraws the poll: even with the lock held again (a
		// new agent starting), it no longer answers.
		cancel()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		defer holdLock(t, spoolDir)()
		if spool.KnownAbsent(spoolDir, archivetest.Seg(10), time.Now()) {
			t.Fatal("the poll of a stopped agent is still trusted")
		}
		// It resumes where it was: the state keeps its position.
		if b, err := os.ReadFile(filepath.Join(spoolDir, ".walship-agent.json")); err != nil || !strings.Contains(string(b), archivetest.Seg(10)) {
			t.Fatalf("the state lost the resume position (%v): %s", err, b)
		}
	})
}

// hangingHead is a store whose head reads never return once hang is
// closed: an agent stuck in a poll.
type hangingHead struct {
	backends.Storage
	hang chan struct{}
}

func (h *hangingHead) Get(ctx context.Context, key string) (io.ReadCloser, backends.ObjectInfo, error) {
	if strings.HasPrefix(key, "heads/") {
		select {
		case <-h.hang:
			<-ctx.Done()
			return nil, backends.ObjectInfo{}, ctx.Err()
		default:
		}
	}
	return h.Storage.Get(ctx, key)
}

// TestAgentHungPollGoesStale: a live agent's poll stays trusted across its
// polls; once it stops polling (hung, still holding the lock) the poll is
// trusted for at most two poll intervals. The clock is synctest's.
func TestAgentHungPollGoesStale(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		store := &hangingHead{Storage: memory.New(), hang: make(chan struct{})}
		a := archive.New(store, slog.New(slog.DiscardHandler))
		archivetest.SlotAt3(t, a)
		spoolDir := t.TempDir()
		const pollMax = 30 * time.Second
		ag := agent.New(a, agent.Options{Spool: spoolDir, Slot: "dr", PollMin: 500 * time.Millisecond, PollMax: pollMax})
		done := make(chan error, 1)
		go func() { done <- ag.Run(ctx) }()
		start := time.Now()
		archivetest.Eventually(t, "the agent to catch up", time.Minute, func() bool {
			return spool.KnownAbsent(spoolDir, archivetest.Seg(10), time.Now())
		})
		// Alive and polling, backing off to pollMax: trusted throughout.
		for i := 0; i < 300; i++ {
			archivetest.Advance(time.Second)
			if !spool.KnownAbsent(spoolDir, archivetest.Seg(10), time.Now()) {
				t.Fatalf("a live agent's poll was not trusted %s after it caught up", time.Since(start))
			}
		}
		polls := ag.Stats().LastPoll.Load()
		close(store.hang)
		hung := time.Now()
		for spool.KnownAbsent(spoolDir, archivetest.Seg(10), time.Now()) {
			if time.Since(hung) > 2*pollMax {
				t.Fatalf("a hung agent's poll was trusted %s after it hung, beyond two poll intervals", time.Since(hung))
			}
			archivetest.Advance(time.Second)
		}
		if ag.Stats().LastPoll.Load() == polls {
			t.Fatal("the agent did not poll (and hang) after the store hung: the staleness was not tested")
		}
		cancel()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	})
}

// TestAgentRemovesWhatItDidNotPlace: files under segments' names that are
// not good segments of the agent's user (left by an agent run as root, a
// directory, a wrong header) are removed and replaced by verified copies,
// so that even a plain mv from the spool hands PostgreSQL only those.
func TestAgentRemovesWhatItDidNotPlace(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		a := archive.New(memory.New(), slog.New(slog.DiscardHandler))
		archivetest.SlotAt3(t, a)
		spoolDir := t.TempDir()
		// seg 3 carries seg 7's header; seg 4 is a directory; seg 5 belongs
		// to another user (when root).
		wrong := testenv.WriteSegment(t, t.TempDir(), archivetest.Seg(7), archivetest.Sys, nil)
		if err := os.Rename(wrong, filepath.Join(spoolDir, archivetest.Seg(3))); err != nil {
			t.Fatal(err)
		}
		if err := os.Mkdir(filepath.Join(spoolDir, archivetest.Seg(4)), 0o700); err != nil {
			t.Fatal(err)
		}
		if os.Geteuid() == 0 {
			p := testenv.WriteSegment(t, spoolDir, archivetest.Seg(5), archivetest.Sys, nil)
			if err := os.Chown(p, otherUID(t), -1); err != nil {
				t.Fatal(err)
			}
		}
		ag := agent.New(a, agent.Options{Spool: spoolDir, Slot: "dr", Ahead: 3,
			PollMin: 5 * time.Millisecond, PollMax: 20 * time.Millisecond})
		done := make(chan error, 1)
		go func() { done <- ag.Run(ctx) }()
		archivetest.Eventually(t, "3, 4 and 5 downloaded", 10*time.Second, func() bool { return ag.Stats().Downloads.Load() >= 3 })
		want := t.TempDir()
		for _, n := range []uint64{3, 4, 5} {
			orig, _ := os.ReadFile(testenv.WriteSegment(t, want, archivetest.Seg(n), archivetest.Sys, nil))
			fi, err := os.Lstat(filepath.Join(spoolDir, archivetest.Seg(n)))
			if err != nil || !fi.Mode().IsRegular() || fi.Sys().(*syscall.Stat_t).Uid != uint32(os.Geteuid()) {
				t.Fatalf("%s in the spool: %v %v", archivetest.Seg(n), fi, err)
			}
			if got, _ := os.ReadFile(filepath.Join(spoolDir, archivetest.Seg(n))); !bytes.Equal(got, orig) {
				t.Fatalf("%s in the spool is not the archived segment", archivetest.Seg(n))
			}
		}
		cancel()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	})
}
