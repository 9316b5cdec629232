package fetch_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/walship/walship/archive"
	"github.com/walship/walship/backends"
	"github.com/walship/walship/backends/memory"
	"github.com/walship/walship/fetch"
	"github.com/walship/walship/internal/archivetest"
	"github.com/walship/walship/internal/testenv"
	"github.com/walship/walship/sealed"
	"github.com/walship/walship/segment"
	"github.com/walship/walship/spool"
)

// prefetchRig is a data directory in recovery, its pg_wal with the
// prefetcher's spool in it, and an archive.
type prefetchRig struct {
	t      *testing.T
	mem    *memory.Storage
	a      *archive.Archive
	pgdata string
	dest   string // pg_wal/RECOVERYXLOG
	spool  fetch.PrefetchSpool
	p      *fetch.Prefetcher
	cancel context.CancelFunc
	done   chan prefetchEnd
}

type prefetchEnd struct {
	why string
	err error
}

const rigArchive = "memory://rig"

// newPrefetchRig archives segments from..to (none when to < from).
func newPrefetchRig(t *testing.T, store backends.Storage, mem *memory.Storage, from, to uint64) *prefetchRig {
	t.Helper()
	a := archive.New(store, slog.New(slog.DiscardHandler))
	if to >= from {
		archivetest.PushSegments(t, a, from, to)
	}
	pgdata := t.TempDir()
	if err := os.WriteFile(filepath.Join(pgdata, "recovery.signal"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	wal := filepath.Join(pgdata, "pg_wal")
	if err := os.Mkdir(wal, 0o700); err != nil {
		t.Fatal(err)
	}
	ps := fetch.PrefetchSpool{Dir: filepath.Join(wal, fetch.PrefetchDirName), Archive: rigArchive}
	if err := ps.Prepare(); err != nil {
		t.Fatal(err)
	}
	return &prefetchRig{t: t, mem: mem, a: a, pgdata: pgdata, dest: filepath.Join(wal, "RECOVERYXLOG"), spool: ps}
}

// start runs a prefetcher as fetch starts one: after a note that segment
// `after` was delivered.
func (r *prefetchRig) start(after uint64, o fetch.PrefetchOptions) {
	r.t.Helper()
	if err := r.spool.Note(archivetest.Seg(after), true); err != nil {
		r.t.Fatal(err)
	}
	o.Spool, o.PGData, o.Archive = r.spool.Dir, r.pgdata, rigArchive
	r.p = fetch.NewPrefetcher(r.a, o)
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel, r.done = cancel, make(chan prefetchEnd, 1)
	r.t.Cleanup(cancel) // a failed test stops it too
	go func() {
		why, err := r.p.Run(ctx)
		r.done <- prefetchEnd{why, err}
	}()
}

// stop cancels the prefetcher and returns why it says it stopped.
func (r *prefetchRig) stop() prefetchEnd {
	r.cancel()
	return <-r.done
}

// fetch does what walship fetch does with a prefetch spool: take, else the
// archive; then the note. It returns the archive's error, if it was asked.
func (r *prefetchRig) fetch(n uint64) (fromSpool bool, err error) {
	took, terr := r.spool.Take(archivetest.Seg(n), r.dest)
	if terr != nil {
		r.t.Logf("spool file not taken: %v", terr)
	}
	if !took {
		_, err = fetch.Fetch(context.Background(), r.a, archivetest.Seg(n), r.dest, fetch.Options{Attempts: 2})
	}
	if nerr := r.spool.Note(archivetest.Seg(n), took || err == nil); nerr != nil {
		r.t.Fatal(nerr)
	}
	return took, err
}

// assertSegment checks that dest holds segment n as archived.
func (r *prefetchRig) assertSegment(n uint64) {
	r.t.Helper()
	want, _ := os.ReadFile(testenv.WriteSegment(r.t, r.t.TempDir(), archivetest.Seg(n), archivetest.Sys, nil))
	got, err := os.ReadFile(r.dest)
	if err != nil || !bytes.Equal(got, want) {
		r.t.Fatalf("%s handed over is not the archived segment (%v)", archivetest.Seg(n), err)
	}
}

// assertCleared checks a stopped prefetcher left no segment, no state and
// no download behind, and holds no lock.
func (r *prefetchRig) assertCleared() {
	r.t.Helper()
	ents, err := os.ReadDir(r.spool.Dir)
	if err != nil {
		r.t.Fatal(err)
	}
	for _, e := range ents {
		switch e.Name() {
		case ".walship-agent.lock", ".walship-prefetch-note.json":
		default:
			r.t.Errorf("a stopped prefetcher left %s in its spool", e.Name())
		}
	}
	if r.spool.Running() {
		r.t.Error("a stopped prefetcher still holds the spool's lock")
	}
}

// TestPrefetchBoundedAndVerified: the prefetcher keeps the segments after
// the one taken last, no more than its byte bound allows, each the
// archived bytes; a take moves the window and hands each file over once.
func TestPrefetchBoundedAndVerified(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		mem := memory.New()
		r := newPrefetchRig(t, mem, mem, 2, 20)
		// 16 ahead but 3 MiB: three 1 MiB segments.
		r.start(2, fetch.PrefetchOptions{Ahead: 16, MaxBytes: 3 << 20, Parallel: 2})
		archivetest.Eventually(t, "three segments prefetched", 10*time.Second, func() bool { return r.p.Stats().Downloads.Load() >= 3 })
		got := archivetest.SpoolNames(t, r.spool.Dir)
		if len(got) != 3 || !got[archivetest.Seg(3)] || !got[archivetest.Seg(4)] || !got[archivetest.Seg(5)] {
			t.Fatalf("spool holds %v, want 3, 4 and 5 within 3 MiB", got)
		}
		if n := r.p.Stats().Downloads.Load(); n != 3 {
			t.Fatalf("%d downloads within a 3 MiB bound, want 3", n)
		}
		want := t.TempDir()
		for _, n := range []uint64{3, 4, 5} {
			orig, _ := os.ReadFile(testenv.WriteSegment(t, want, archivetest.Seg(n), archivetest.Sys, nil))
			if b, err := os.ReadFile(filepath.Join(r.spool.Dir, archivetest.Seg(n))); err != nil || !bytes.Equal(b, orig) {
				t.Fatalf("%s in the spool is not the archived segment (%v)", archivetest.Seg(n), err)
			}
		}
		if took, err := r.fetch(3); !took || err != nil {
			t.Fatalf("take 3: %v %v", took, err)
		}
		r.assertSegment(3)
		archivetest.Eventually(t, "the window to move to 4..6", 10*time.Second, func() bool { return archivetest.SpoolNames(t, r.spool.Dir)[archivetest.Seg(6)] })
		if got := archivetest.SpoolNames(t, r.spool.Dir); len(got) != 3 || got[archivetest.Seg(3)] {
			t.Fatalf("after taking 3 the spool holds %v, want 4, 5 and 6", got)
		}
		if took, _ := r.spool.Take(archivetest.Seg(3), r.dest); took {
			t.Fatal("a segment was handed over twice")
		}
		// PostgreSQL jumps ahead (a timeline switch, or it asked the archive
		// itself): what it passed is removed, the window follows.
		if took, err := r.fetch(10); took || err != nil {
			t.Fatalf("fetch 10 (not prefetched): %v %v", took, err)
		}
		r.assertSegment(10)
		archivetest.Eventually(t, "the window to follow to 11..13", 10*time.Second, func() bool {
			got := archivetest.SpoolNames(t, r.spool.Dir)
			return len(got) == 3 && got[archivetest.Seg(11)] && got[archivetest.Seg(12)] && got[archivetest.Seg(13)]
		})
		if end := r.stop(); end.err != nil || end.why != "stopped" {
			t.Fatalf("stop: %+v", end)
		}
		r.assertCleared()
	})
}

// TestPrefetchNeverOffersDamaged: a segment whose archived object fails
// its checksum is never placed in the spool; fetch then gets the archive's
// own error (damaged), not "absent".
func TestPrefetchNeverOffersDamaged(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		mem := memory.New()
		r := newPrefetchRig(t, mem, mem, 2, 8)
		mem.Corrupt(archive.Key(segment.File{Kind: segment.KindSegment, TLI: 1, Seg: 4}), 200)
		r.start(2, fetch.PrefetchOptions{Ahead: 4, Parallel: 1})
		archivetest.Eventually(t, "the damaged segment to fail", 10*time.Second, func() bool { return r.p.Stats().Failures.Load() >= 1 })
		if archivetest.SpoolNames(t, r.spool.Dir)[archivetest.Seg(4)] {
			t.Fatal("the damaged segment was placed in the spool")
		}
		if took, err := r.fetch(3); !took || err != nil {
			t.Fatalf("take 3: %v %v", took, err)
		}
		took, err := r.fetch(4)
		if took || !errors.Is(err, sealed.ErrChecksum) || errors.Is(err, backends.ErrNotFound) {
			t.Fatalf("fetch of the damaged segment: from spool %v, %v; want the archive's checksum error", took, err)
		}
		if _, serr := os.Stat(r.dest); serr != nil {
			t.Fatalf("the good segment 3 handed over before is gone: %v", serr)
		}
		r.stop()
		r.assertCleared()
	})
}

// TestPrefetchBeliefIsNeverAbsent: the prefetcher looked for segment 5
// before it was archived; once it is, fetch gets it from the archive at
// once (the prefetcher's hold on 5 is not consulted), and the prefetcher
// goes on after it.
func TestPrefetchBeliefIsNeverAbsent(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		mem := memory.New()
		r := newPrefetchRig(t, mem, mem, 2, 4)
		r.start(2, fetch.PrefetchOptions{Ahead: 4, Parallel: 1})
		synctest.Wait()
		if r.p.Stats().Missing.Load() == 0 || r.p.Stats().Downloads.Load() != 2 {
			t.Fatalf("after its first pass the prefetcher has %d downloads, %d missing; want 3 and 4 placed, 5 missing",
				r.p.Stats().Downloads.Load(), r.p.Stats().Missing.Load())
		}
		missing := r.p.Stats().Missing.Load()
		archivetest.PushSegments(t, r.a, 5, 9) // archived now; no time passes
		for _, n := range []uint64{3, 4} {
			if took, err := r.fetch(n); !took || err != nil {
				t.Fatalf("take %d: %v %v", n, took, err)
			}
		}
		if took, err := r.fetch(5); took || err != nil {
			t.Fatalf("fetch 5 after it was archived: from spool %v, %v; want it from the archive", took, err)
		}
		r.assertSegment(5)
		if r.p.Stats().Missing.Load() != missing {
			t.Fatal("the prefetcher looked again meanwhile: the test did not hold its belief")
		}
		archivetest.Advance(100 * time.Millisecond)
		if got := archivetest.SpoolNames(t, r.spool.Dir); !got[archivetest.Seg(6)] || !got[archivetest.Seg(9)] {
			t.Fatalf("after 5 was taken the spool holds %v, want 6 to 9", got)
		}
		r.stop()
		r.assertCleared()
	})
}

// TestPrefetchStops: the prefetcher ends, and leaves nothing behind, when
// no fetch came for its idle time, when the data directory leaves
// recovery (promotion removes the signal file), and when the server's
// postmaster is gone.
func TestPrefetchStops(t *testing.T) {
	t.Run("idle", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			mem := memory.New()
			r := newPrefetchRig(t, mem, mem, 2, 6)
			r.start(2, fetch.PrefetchOptions{Idle: time.Minute})
			for i := 0; i < 4; i++ {
				archivetest.Advance(45 * time.Second)
				if !r.spool.Running() {
					t.Fatalf("the prefetcher stopped %ds in although a fetch came every 45s", 45*(i+1))
				}
				if err := r.spool.Note("00000002.history", false); err != nil {
					t.Fatal(err)
				}
			}
			start := time.Now()
			end := <-r.done
			if waited := time.Since(start); end.err != nil || !strings.Contains(end.why, "idle") || waited < time.Minute || waited > time.Minute+time.Second {
				t.Fatalf("after the last fetch: %+v after %s, want idle after 1m", end, waited)
			}
			r.assertCleared()
		})
	})
	t.Run("promoted", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			mem := memory.New()
			r := newPrefetchRig(t, mem, mem, 2, 6)
			r.start(2, fetch.PrefetchOptions{})
			synctest.Wait()
			if len(archivetest.SpoolNames(t, r.spool.Dir)) != 4 {
				t.Fatalf("spool %v, want 3 to 6", archivetest.SpoolNames(t, r.spool.Dir))
			}
			if err := os.Remove(filepath.Join(r.pgdata, "recovery.signal")); err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			end := <-r.done
			if end.err != nil || !strings.Contains(end.why, "recovery ended") || time.Since(start) > time.Second {
				t.Fatalf("after promotion: %+v after %s", end, time.Since(start))
			}
			r.assertCleared()
		})
	})
	t.Run("server gone", func(t *testing.T) {
		// A pid that surely ran and is gone: a child that exited.
		cmd := exec.Command("true")
		if err := cmd.Run(); err != nil {
			t.Skipf("no true(1): %v", err)
		}
		synctest.Test(t, func(t *testing.T) {
			mem := memory.New()
			r := newPrefetchRig(t, mem, mem, 2, 6)
			pid := strconv.Itoa(cmd.Process.Pid)
			if err := os.WriteFile(filepath.Join(r.pgdata, "postmaster.pid"), []byte(pid+"\n"+r.pgdata+"\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			r.start(2, fetch.PrefetchOptions{})
			end := <-r.done
			if end.err != nil || !strings.Contains(end.why, "server is gone") {
				t.Fatalf("with the postmaster gone: %+v", end)
			}
			r.assertCleared()
		})
	})
}

// TestPrefetchOnePerSpool: a second prefetcher on a spool refuses to start
// and leaves the first one's files alone.
func TestPrefetchOnePerSpool(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		mem := memory.New()
		r := newPrefetchRig(t, mem, mem, 2, 6)
		r.start(2, fetch.PrefetchOptions{})
		archivetest.Eventually(t, "3 to 6 prefetched", 10*time.Second, func() bool { return len(archivetest.SpoolNames(t, r.spool.Dir)) == 4 })
		second := fetch.NewPrefetcher(r.a, fetch.PrefetchOptions{Spool: r.spool.Dir, PGData: r.pgdata, Archive: rigArchive})
		if _, err := second.Run(context.Background()); !errors.Is(err, archive.ErrLocal) {
			t.Fatalf("second prefetcher: %v, want ErrLocal (the spool is locked)", err)
		}
		if got := archivetest.SpoolNames(t, r.spool.Dir); len(got) != 4 {
			t.Fatalf("the second prefetcher touched the first one's spool: %v", got)
		}
		if took, err := r.fetch(3); !took || err != nil {
			t.Fatalf("take 3: %v %v", took, err)
		}
		// Another archive's fetch takes nothing from this spool.
		other := fetch.PrefetchSpool{Dir: r.spool.Dir, Archive: "file:///elsewhere"}
		if took, err := other.Take(archivetest.Seg(4), r.dest); took || err != nil {
			t.Fatalf("a fetch of another archive took from the spool: %v %v", took, err)
		}
		// A spool others may write into is not taken from.
		if err := os.Chmod(r.spool.Dir, 0o770); err != nil {
			t.Fatal(err)
		}
		if took, err := r.spool.Take(archivetest.Seg(4), r.dest); took || !errors.Is(err, spool.ErrOwner) {
			t.Fatalf("take from a group-writable spool: %v %v, want spool.ErrOwner", took, err)
		}
		if err := os.Chmod(r.spool.Dir, 0o700); err != nil {
			t.Fatal(err)
		}
		if took, err := r.spool.Take(archivetest.Seg(4), r.dest); !took || err != nil {
			t.Fatalf("take 4: %v %v", took, err)
		}
		r.stop()
		r.assertCleared()
	})
}

// gated holds the Get of one key until its gate is closed.
type gated struct {
	backends.Storage
	key  string
	gate chan struct{}
	held atomic.Bool
}

func (g *gated) Get(ctx context.Context, key string) (io.ReadCloser, backends.ObjectInfo, error) {
	if key == g.key {
		g.held.Store(true)
		select {
		case <-g.gate:
		case <-ctx.Done():
			return nil, backends.ObjectInfo{}, ctx.Err()
		}
	}
	return g.Storage.Get(ctx, key)
}

// TestPrefetchTakeWaitsForDownload: a fetch for the segment the prefetcher
// is downloading waits for it rather than download it twice, and for at
// most PrefetchWait.
func TestPrefetchTakeWaitsForDownload(t *testing.T) {
	for _, release := range []bool{true, false} {
		t.Run(map[bool]string{true: "arrives", false: "stalls"}[release], func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				mem := memory.New()
				store := &gated{Storage: mem, key: archive.Key(segment.File{Kind: segment.KindSegment, TLI: 1, Seg: 3}), gate: make(chan struct{})}
				r := newPrefetchRig(t, store, mem, 2, 6)
				r.start(2, fetch.PrefetchOptions{Parallel: 1})
				synctest.Wait()
				if !store.held.Load() {
					t.Fatal("the prefetcher is not downloading 3")
				}
				if release {
					go func() {
						time.Sleep(2 * time.Second)
						close(store.gate)
					}()
				}
				start := time.Now()
				took, err := r.spool.Take(archivetest.Seg(3), r.dest)
				waited := time.Since(start)
				if release && (!took || err != nil || waited < 2*time.Second || waited > 2*time.Second+50*time.Millisecond) {
					t.Fatalf("take of the segment in flight: %v %v after %s, want it after the 2s download", took, err, waited)
				}
				if !release && (took || err != nil || waited < fetch.PrefetchWait || waited > fetch.PrefetchWait+time.Second) {
					t.Fatalf("take of a stalled download: %v %v after %s, want false after %s", took, err, waited, fetch.PrefetchWait)
				}
				if release {
					r.assertSegment(3)
				}
				r.stop()
				r.assertCleared()
			})
		})
	}
}
