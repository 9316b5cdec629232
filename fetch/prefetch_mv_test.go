package fetch_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/walship/walship/backends/memory"
	"github.com/walship/walship/fetch"
	"github.com/walship/walship/internal/archivetest"
	"github.com/walship/walship/internal/testenv"
	"github.com/walship/walship/spool"
)

// mv takes segment n out of the spool as the restore_command walship
// restore writes does: a rename by its shell, no walship started, no note.
func (r *prefetchRig) mv(n uint64) {
	r.t.Helper()
	if err := os.Rename(filepath.Join(r.spool.Dir, archivetest.Seg(n)), r.dest); err != nil {
		r.t.Fatalf("mv %s: %v", archivetest.Seg(n), err)
	}
	r.assertSegment(n)
}

// writeNote writes fetch's note by hand, dated at (unix nanoseconds).
func (r *prefetchRig) writeNote(n uint64, at int64) {
	r.t.Helper()
	b, _ := json.Marshal(map[string]any{"archive": rigArchive, "name": archivetest.Seg(n), "delivered": true, "at": at})
	if err := os.WriteFile(filepath.Join(r.spool.Dir, spool.NoteFile), b, 0o600); err != nil {
		r.t.Fatal(err)
	}
}

// hasAll reports whether the spool holds exactly segments from..to.
func (r *prefetchRig) hasAll(from, to uint64) bool {
	got := archivetest.SpoolNames(r.t, r.spool.Dir)
	for n := from; n <= to; n++ {
		if !got[archivetest.Seg(n)] {
			return false
		}
	}
	return len(got) == int(to-from+1)
}

// TestPrefetchSeesTakesByRename: segments moved out of the spool by the
// restore_command's mv, which writes no note, move the prefetcher's window
// and count as activity: takes 45 s apart keep it running past its idle
// minute, and it idles out a minute after the last one. Each take is
// counted once; the prefetcher's own removals never are.
func TestPrefetchSeesTakesByRename(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		mem := memory.New()
		r := newPrefetchRig(t, mem, mem, 2, 30)
		r.start(2, fetch.PrefetchOptions{Ahead: 4, Parallel: 2, Idle: time.Minute})
		archivetest.Eventually(t, "3 to 6 prefetched", 10*time.Second, func() bool { return r.hasAll(3, 6) })
		for i, n := range []uint64{3, 4, 5, 6} {
			archivetest.Advance(45 * time.Second)
			r.mv(n)
			archivetest.Eventually(t, "the window to move past the segment taken", 10*time.Second, func() bool { return r.hasAll(n+1, n+4) })
			if !r.spool.Running() {
				t.Fatalf("the prefetcher stopped %ds in although a segment was taken every 45s", 45*(i+1))
			}
			if got := r.p.Stats().Taken.Load(); got != uint64(i+1) {
				t.Fatalf("after %d takes the prefetcher counted %d", i+1, got)
			}
		}
		if got := r.p.Stats().Downloads.Load(); got != 8 {
			t.Fatalf("%d downloads, want 8 (3 to 10, each once)", got)
		}
		// PostgreSQL asks the archive for 20 itself (a fetch and its note):
		// the window jumps, and the prefetcher removes 7 to 10 itself.
		if took, err := r.fetch(20); took || err != nil {
			t.Fatalf("fetch 20: %v %v", took, err)
		}
		archivetest.Eventually(t, "the window to follow to 21..24", 10*time.Second, func() bool { return r.hasAll(21, 24) })
		if got := r.p.Stats().Taken.Load(); got != 4 {
			t.Fatalf("after the prefetcher removed 7 to 10 itself it counts %d takes, want the 4 by mv", got)
		}
		r.mv(21)
		start := time.Now()
		end := <-r.done
		if waited := time.Since(start); end.err != nil || !strings.Contains(end.why, "idle") || waited < time.Minute || waited > time.Minute+time.Second {
			t.Fatalf("after the last take: %+v after %s, want idle after 1m", end, waited)
		}
		if got := r.p.Stats().Taken.Load(); got != 5 {
			t.Fatalf("after its own clearing the prefetcher counts %d takes, want 5", got)
		}
		r.assertCleared()
	})
}

// TestPrefetchTakesAndNotesInEitherOrder: a fetch's note for a segment
// written before a later segment was moved out by mv, but read after the
// prefetcher saw that take, does not move the window back (nothing taken
// is downloaded again); a note written after the take does (PostgreSQL
// went back).
func TestPrefetchTakesAndNotesInEitherOrder(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		mem := memory.New()
		r := newPrefetchRig(t, mem, mem, 2, 30)
		r.start(2, fetch.PrefetchOptions{Ahead: 4, Parallel: 1})
		archivetest.Eventually(t, "3 to 6 prefetched", 10*time.Second, func() bool { return r.hasAll(3, 6) })
		before := time.Now().UnixNano()
		archivetest.Advance(time.Second)
		if took, err := r.spool.Take(archivetest.Seg(3), r.dest); !took || err != nil {
			t.Fatalf("take 3: %v %v", took, err)
		}
		r.mv(4)
		archivetest.Eventually(t, "the window to move to 5..8", 10*time.Second, func() bool { return r.hasAll(5, 8) })
		r.writeNote(3, before) // fetch's note of 3, read only now
		archivetest.Advance(time.Second)
		if !r.hasAll(5, 8) || r.p.Stats().Downloads.Load() != 6 {
			t.Fatalf("after a stale note of 3 the spool holds %v after %d downloads; want 5 to 8 after 6",
				archivetest.SpoolNames(t, r.spool.Dir), r.p.Stats().Downloads.Load())
		}
		r.writeNote(3, time.Now().UnixNano()) // PostgreSQL really asked for 3 again
		archivetest.Eventually(t, "the window to go back to 4..7", 10*time.Second, func() bool { return r.hasAll(4, 7) })
		if got := r.p.Stats().Taken.Load(); got != 2 {
			t.Fatalf("%d takes counted, want 2 (3 by fetch, 4 by mv; 8, removed by the prefetcher, is none)", got)
		}
		r.stop()
		r.assertCleared()
	})
}

// TestPrefetchMark: a running prefetcher keeps the mark of its archive in
// its spool, and only then; what an earlier run of another archive left
// (killed: its mark and its segments) is cleared before the new mark is
// written.
func TestPrefetchMark(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		mem := memory.New()
		r := newPrefetchRig(t, mem, mem, 2, 8)
		other := filepath.Join(r.spool.Dir, fetch.PrefetchMark("file:///elsewhere"))
		if err := os.WriteFile(other, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		stale := testenv.WriteSegment(t, r.spool.Dir, archivetest.Seg(20), archivetest.Sys, nil)
		mine := filepath.Join(r.spool.Dir, fetch.PrefetchMark(rigArchive))
		if fetch.PrefetchMark(rigArchive) == fetch.PrefetchMark("file:///elsewhere") || !strings.HasPrefix(filepath.Base(mine), ".") {
			t.Fatalf("marks %s and %s: want a dot file per archive", filepath.Base(mine), filepath.Base(other))
		}
		r.start(2, fetch.PrefetchOptions{Ahead: 2})
		archivetest.Eventually(t, "3 and 4 prefetched", 10*time.Second, func() bool { return r.hasAll(3, 4) })
		if _, err := os.Stat(mine); err != nil {
			t.Fatalf("a running prefetcher has no mark: %v", err)
		}
		for _, f := range []string{other, stale} {
			if _, err := os.Lstat(f); err == nil {
				t.Errorf("the prefetcher started with %s of an earlier run left in its spool", filepath.Base(f))
			}
		}
		if end := r.stop(); end.err != nil {
			t.Fatal(end.err)
		}
		r.assertCleared() // the mark went with the segments
	})
}
