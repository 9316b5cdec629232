// Package archivetest holds the fixtures the agent's and the fetch tests
// share: 1 MiB segments of one cluster pushed into an archive, a slot, and
// a wait for a condition on the fake clock of a testing/synctest bubble.
package archivetest

import (
	"context"
	"os"
	"testing"
	"testing/synctest"
	"time"

	"github.com/walship/walship/archive"
	"github.com/walship/walship/internal/testenv"
	"github.com/walship/walship/sealed"
	"github.com/walship/walship/segment"
)

// Sys is the system identifier of the segments these helpers write.
const Sys = 7300000000000000009

// Seg names segment n of timeline 1 at 1 MiB segments.
func Seg(n uint64) string { return segment.Name{TLI: 1, SegNo: n}.String(1 << 20) }

// PushSegments archives segments from to to (inclusive) into a.
func PushSegments(t *testing.T, a *archive.Archive, from, to uint64) {
	dir := t.TempDir()
	for n := from; n <= to; n++ {
		if _, err := a.Push(context.Background(), testenv.WriteSegment(t, dir, Seg(n), Sys, nil), sealed.Compression{Codec: sealed.CodecZstd}); err != nil {
			t.Fatal(err)
		}
	}
}

// SlotAt3 archives segments 2 to 9 and a slot "dr" that needs 3 onward.
func SlotAt3(t *testing.T, a *archive.Archive) {
	t.Helper()
	ctx := context.Background()
	PushSegments(t, a, 2, 9)
	if _, err := a.CreateSlot(ctx, "dr", time.Hour); err != nil {
		t.Fatal(err)
	}
	if _, err := a.UpdateSlot(ctx, "dr", archive.SlotUpdate{Position: Seg(3), Reset: true}); err != nil {
		t.Fatal(err)
	}
}

// SpoolNames lists the names in a spool that are not dot files.
func SpoolNames(t *testing.T, dir string) map[string]bool {
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

// step is how far Eventually moves the bubble's clock between looks.
const step = time.Millisecond

// Advance moves a synctest bubble's fake clock on by d and lets every
// goroutine of the bubble run until it is durably blocked again: the
// way a test inside a bubble lets time pass. No real time is spent, so no
// load can change what the test sees. Call it from the bubble's root
// goroutine only (synctest.Wait's rule).
func Advance(d time.Duration) {
	time.Sleep(d) // the bubble's fake clock: returns when the bubble reaches that time
	synctest.Wait()
}

// Eventually waits, inside a synctest bubble, until cond holds: it lets
// every goroutine of the bubble run until it is durably blocked
// (synctest.Wait), looks, and otherwise advances the bubble's fake clock
// by a millisecond, for at most within of fake time. A condition that
// holds once the bubble settles costs no fake time at all; none costs real
// time waiting, so a loaded machine cannot make it time out.
func Eventually(t testing.TB, what string, within time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		synctest.Wait()
		if cond() {
			return
		}
		if !time.Now().Before(deadline) {
			t.Fatalf("not within %s (the bubble's clock): %s", within, what)
		}
		time.Sleep(step)
	}
}
