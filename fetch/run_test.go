package fetch_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/walship/walship/archive"
	"github.com/walship/walship/backends/memory"
	"github.com/walship/walship/fetch"
	"github.com/walship/walship/internal/testenv"
	"github.com/walship/walship/spool"
)

// opener hands Run an archive and counts how often it was asked.
type opener struct {
	a     *archive.Archive
	err   error
	calls int
}

func (o *opener) open(context.Context) (*archive.Archive, error) {
	o.calls++
	return o.a, o.err
}

// agentSpool is a spool as a running agent leaves it: its state (the
// archive's identity and a fresh poll that saw head) and its lock held.
func agentSpool(t *testing.T, head string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "spool")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	st := spool.State{Timeline: 1, SegmentSize: 1 << 20, SystemID: sysID, Head: head, NoHistory: 2,
		Polled: time.Now(), Interval: archive.Duration(time.Minute)}
	if err := spool.WriteState(dir, st); err != nil {
		t.Fatal(err)
	}
	lock, err := spool.Lock(context.Background(), dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lock.Close() })
	return dir
}

// A file in the agent's spool is taken without opening the archive.
func TestRunTakesFromAgentSpoolFirst(t *testing.T) {
	sp := agentSpool(t, "000000010000000000000005")
	want, _ := os.ReadFile(testenv.WriteSegment(t, sp, "000000010000000000000004", sysID, nil))
	o := &opener{err: errors.New("the archive must not be opened")}
	dest := filepath.Join(t.TempDir(), "RECOVERYXLOG")
	out, err := fetch.Run(context.Background(), o.open, "000000010000000000000004", dest, fetch.Plan{Spool: sp, Log: quiet()})
	if err != nil || out.Status != fetch.Delivered || out.Source != fetch.FromAgentSpool || o.calls != 0 {
		t.Fatalf("Run: %+v, %v, archive opened %d times; want delivered from the agent's spool", out, err, o.calls)
	}
	if got, _ := os.ReadFile(dest); !bytes.Equal(got, want) {
		t.Fatal("the file at dest is not the spool's")
	}
}

// A live agent's poll answers "absent" for a segment past its head, but
// never during a point-in-time recovery: there the archive answers.
func TestRunAbsentPerPollOnlyOutsidePITR(t *testing.T) {
	sp := agentSpool(t, "000000010000000000000003")
	a, _ := pushed(t, memory.New(), "000000010000000000000003")
	dest := filepath.Join(t.TempDir(), "RECOVERYXLOG")

	o := &opener{a: a}
	out, err := fetch.Run(context.Background(), o.open, "000000010000000000000004", dest, fetch.Plan{Spool: sp, Log: quiet()})
	if err != nil || out.Status != fetch.Absent || out.Source != fetch.FromAgentSpool || o.calls != 0 {
		t.Fatalf("standby: %+v, %v, archive opened %d times; want absent per the poll", out, err, o.calls)
	}
	o = &opener{a: a}
	out, err = fetch.Run(context.Background(), o.open, "000000010000000000000004", dest, fetch.Plan{Spool: sp, ArchiveRecovery: true, Log: quiet()})
	if err != nil || out.Status != fetch.Absent || out.Source != fetch.FromArchive || o.calls != 1 {
		t.Fatalf("PITR: %+v, %v, archive opened %d times; want absent per the archive", out, err, o.calls)
	}
	if _, err := os.Lstat(dest); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("an absent file left something at dest: %v", err)
	}
}

// A place that is not an archive, or one that cannot be opened, is a
// failure, never "absent".
func TestRunFailureIsNotAbsent(t *testing.T) {
	dest := filepath.Join(t.TempDir(), "RECOVERYXLOG")
	for name, o := range map[string]*opener{
		"no identity": {a: archive.New(memory.New(), quiet())},
		"cannot open": {err: errors.New("no such bucket")},
	} {
		out, err := fetch.Run(context.Background(), o.open, "000000010000000000000004", dest, fetch.Plan{Log: quiet()})
		if err == nil || out.Status != fetch.Failed || fetch.IsAbsent(err) {
			t.Errorf("%s: %+v, %v; want a failure", name, out, err)
		}
	}
}

// After a segment from the archive, Run prepares the prefetch spool, tells
// it where to start and spawns a prefetcher; after a history file it does
// not, and a failing spawn leaves the fetch delivered.
func TestRunStartsPrefetcherAfterSegment(t *testing.T) {
	a, _ := pushed(t, memory.New(), "000000010000000000000004")
	hist := filepath.Join(t.TempDir(), "00000002.history")
	if err := os.WriteFile(hist, []byte("1\t0/5000000\tno recovery target specified\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Push(context.Background(), hist, zstd); err != nil {
		t.Fatal(err)
	}
	pf := &fetch.PrefetchSpool{Dir: filepath.Join(t.TempDir(), fetch.PrefetchDirName), Archive: "mem"}
	var spawned []string
	plan := fetch.Plan{Prefetch: pf, Log: quiet(), Spawn: func(s fetch.PrefetchSpool) error {
		spawned = append(spawned, s.Dir)
		return errors.New("cannot start processes here")
	}}
	out := t.TempDir()
	for _, name := range []string{"00000002.history", "000000010000000000000004"} {
		o := &opener{a: a}
		res, err := fetch.Run(context.Background(), o.open, name, filepath.Join(out, name), plan)
		if err != nil || res.Status != fetch.Delivered || res.Source != fetch.FromArchive {
			t.Fatalf("%s: %+v, %v; want delivered from the archive", name, res, err)
		}
	}
	if len(spawned) != 1 || spawned[0] != pf.Dir {
		t.Fatalf("spawned %v, want one prefetcher on %s (after the segment only)", spawned, pf.Dir)
	}
	if _, err := os.Stat(filepath.Join(pf.Dir, spool.NoteFile)); err != nil {
		t.Fatalf("the prefetcher was not told where to start: %v", err)
	}
}
