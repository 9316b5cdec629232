package agent_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"testing/synctest"
	"time"

	"github.com/walship/walship/agent"
	"github.com/walship/walship/archive"
	"github.com/walship/walship/backends/memory"
	"github.com/walship/walship/fetch"
	"github.com/walship/walship/internal/archivetest"
	"github.com/walship/walship/internal/testenv"
	"github.com/walship/walship/spool"
)

// stoppedAgentSpool returns a spool an agent filled with 3 and 4 (ahead 2)
// from an archive holding 2 to 9, and the archive. It runs in the caller's
// synctest bubble.
func stoppedAgentSpool(t *testing.T) (*archive.Archive, string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	a := archive.New(memory.New(), slog.New(slog.DiscardHandler))
	archivetest.SlotAt3(t, a)
	spoolDir := t.TempDir()
	ag := agent.New(a, agent.Options{Spool: spoolDir, Slot: "dr", Ahead: 2,
		PollMin: 5 * time.Millisecond, PollMax: 20 * time.Millisecond})
	done := make(chan error, 1)
	go func() { done <- ag.Run(ctx) }()
	archivetest.Eventually(t, "two segments in the spool", 10*time.Second, func() bool { return ag.Stats().Downloads.Load() >= 2 })
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	return a, spoolDir
}

// TestTakeFromSpoolChecksTheFile: fetch --spool takes only a regular file
// of the segment size whose header agrees with its name; anything else
// under a segment's name is left alone, and the archive serves the right
// bytes.
func TestTakeFromSpoolChecksTheFile(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		a, spoolDir := stoppedAgentSpool(t)
		orig := t.TempDir()
		want := func(n uint64) []byte {
			b, err := os.ReadFile(testenv.WriteSegment(t, orig, archivetest.Seg(n), archivetest.Sys, nil))
			if err != nil {
				t.Fatal(err)
			}
			return b
		}
		put := func(name string, b []byte) {
			if err := os.WriteFile(filepath.Join(spoolDir, name), b, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		// 5: a directory; 6: a FIFO (a reader would block); 7: a short file;
		// 8: segment 9's content (wrong header); 9: a symbolic link to a good
		// copy elsewhere; 2: another cluster's segment.
		if err := os.Mkdir(filepath.Join(spoolDir, archivetest.Seg(5)), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := syscall.Mkfifo(filepath.Join(spoolDir, archivetest.Seg(6)), 0o600); err != nil {
			t.Fatal(err)
		}
		put(archivetest.Seg(7), want(7)[:64<<10])
		put(archivetest.Seg(8), want(9))
		if err := os.Symlink(filepath.Join(orig, archivetest.Seg(9)), filepath.Join(spoolDir, archivetest.Seg(9))); err != nil {
			t.Fatal(err)
		}
		foreign, _ := os.ReadFile(testenv.WriteSegment(t, t.TempDir(), archivetest.Seg(2), archivetest.Sys+1, nil))
		put(archivetest.Seg(2), foreign)

		out := t.TempDir()
		dest := filepath.Join(out, "RECOVERYXLOG")
		for _, n := range []uint64{2, 5, 6, 7, 8, 9} {
			took, err := spool.Take(spoolDir, archivetest.Seg(n), dest)
			if took || err == nil {
				t.Errorf("%s: took %v, error %v; want refused with a reason", archivetest.Seg(n), took, err)
			}
			t.Logf("%s refused: %v", archivetest.Seg(n), err)
			if _, err := os.Lstat(dest); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("%s: something was put at dest: %v", archivetest.Seg(n), err)
			}
			if _, err := os.Lstat(filepath.Join(spoolDir, archivetest.Seg(n))); err != nil {
				t.Errorf("%s: a refused file left the spool: %v", archivetest.Seg(n), err)
			}
			// What fetch does next: the archive, with the right bytes.
			if _, err := fetch.Fetch(context.Background(), a, archivetest.Seg(n), dest, fetch.Options{Attempts: 3}); err != nil {
				t.Fatalf("%s from the archive: %v", archivetest.Seg(n), err)
			}
			if got, _ := os.ReadFile(dest); !bytes.Equal(got, want(n)) {
				t.Fatalf("%s: fetched bytes differ from the archived segment", archivetest.Seg(n))
			}
			if err := os.Remove(dest); err != nil {
				t.Fatal(err)
			}
		}
		// What the agent placed is taken, by rename.
		for _, n := range []uint64{3, 4} {
			if took, err := spool.Take(spoolDir, archivetest.Seg(n), dest); !took || err != nil {
				t.Fatalf("%s placed by the agent: took %v, %v", archivetest.Seg(n), took, err)
			}
			if got, _ := os.ReadFile(dest); !bytes.Equal(got, want(n)) {
				t.Fatalf("%s: handed-over bytes differ", archivetest.Seg(n))
			}
			if _, err := os.Lstat(filepath.Join(spoolDir, archivetest.Seg(n))); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("%s still in the spool after the hand-over", archivetest.Seg(n))
			}
		}
		// Not there: not taken, no error.
		if took, err := spool.Take(spoolDir, archivetest.Seg(20), dest); took || err != nil {
			t.Fatalf("absent from the spool: %v %v", took, err)
		}
		// Without the agent's state there is nothing to check a file against.
		if err := os.Remove(filepath.Join(spoolDir, ".walship-agent.json")); err != nil {
			t.Fatal(err)
		}
		put(archivetest.Seg(4), want(4))
		if took, err := spool.Take(spoolDir, archivetest.Seg(4), filepath.Join(out, "x")); took || err == nil {
			t.Fatalf("a spool file with no agent state was taken: %v %v", took, err)
		}
	})
}
