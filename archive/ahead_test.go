package archive_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/walship/walship/archive"
	"github.com/walship/walship/backends"
	"github.com/walship/walship/backends/memory"
	"github.com/walship/walship/sealed"
	"github.com/walship/walship/segment"
)

const here = "file:///archive-a"

// walDir is a pg_wal-like directory: segments (1 MiB, as testenv writes
// them) and archive_status/*.ready.
type walDir struct {
	t   *testing.T
	dir string
}

func newWalDir(t *testing.T) *walDir {
	d := &walDir{t: t, dir: t.TempDir()}
	if err := os.Mkdir(filepath.Join(d.dir, "archive_status"), 0o700); err != nil {
		t.Fatal(err)
	}
	return d
}

func seg(n int) string { return segment.Name{TLI: 1, SegNo: uint64(n)}.String(1 << 20) }

// ready writes segment name and marks it ready, as PostgreSQL does.
func (d *walDir) ready(name string, sys uint64, mutate func([]byte)) string {
	p := makeSegment(d.t, d.dir, name, sys, mutate)
	d.mark(name)
	return p
}

func (d *walDir) mark(name string) {
	if err := os.WriteFile(filepath.Join(d.dir, "archive_status", name+".ready"), nil, 0o600); err != nil {
		d.t.Fatal(err)
	}
}

// done is what PostgreSQL does once a push of name returned 0.
func (d *walDir) done(name string) {
	st := filepath.Join(d.dir, "archive_status", name)
	if err := os.Rename(st+".ready", st+".done"); err != nil {
		d.t.Fatal(err)
	}
}

func (d *walDir) path(name string) string { return filepath.Join(d.dir, name) }

func (d *walDir) proofs() []string {
	es, _ := os.ReadDir(filepath.Join(d.dir, archive.ProofDirName))
	var out []string
	for _, e := range es {
		out = append(out, e.Name())
	}
	sort.Strings(out)
	return out
}

// counting counts the stores' writes per key.
type counting struct {
	backends.Storage
	mu   sync.Mutex
	puts map[string]int
}

func newCounting() *counting { return &counting{Storage: memory.New(), puts: map[string]int{}} }

func (c *counting) PutIfAbsent(ctx context.Context, key string, body io.ReadSeeker, size int64) error {
	c.mu.Lock()
	c.puts[key]++
	c.mu.Unlock()
	return c.Storage.PutIfAbsent(ctx, key, body, size)
}

func (c *counting) count(key string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.puts[key]
}

func opts(parallel int) archive.AheadOptions {
	return archive.AheadOptions{Compression: zstd, Parallel: parallel, Window: 4, Location: here}
}

func equalStrings(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestPushAheadTakesTheReadySegmentsAlong(t *testing.T) {
	ctx := context.Background()
	store := newCounting()
	a := archive.New(store, quiet())
	d := newWalDir(t)
	for n := 1; n <= 6; n++ {
		d.ready(seg(n), sysID, nil)
	}
	res, err := a.PushAhead(ctx, d.path(seg(1)), opts(2))
	if err != nil || res.AlreadyArchived || res.Ahead != 3 {
		t.Fatalf("push: %+v, %v; want 3 ahead (window 4)", res, err)
	}
	for n := 1; n <= 6; n++ {
		_, err := store.Stat(ctx, archive.Key(mustFile(t, seg(n))))
		if want := n <= 4; (err == nil) != want {
			t.Errorf("%s archived: %v, want %v", seg(n), err == nil, want)
		}
	}
	if h, err := a.ReadHead(ctx, 1); err != nil || h.Segment != seg(4) {
		t.Errorf("head %+v, %v; want %s", h, err, seg(4))
	}
	want := []string{seg(2) + ".proof", seg(3) + ".proof", seg(4) + ".proof"}
	if got := d.proofs(); !equalStrings(got, want) {
		t.Fatalf("proofs %v, want %v", got, want)
	}
	// PostgreSQL marks the first done and calls for the next: the proof
	// answers, once.
	d.done(seg(1))
	for _, n := range []int{2, 3, 4} {
		ok, why := archive.TakeProof(d.path(seg(n)), here, time.Now())
		if !ok {
			t.Fatalf("%s: proof not taken: %v", seg(n), why)
		}
		if ok, _ := archive.TakeProof(d.path(seg(n)), here, time.Now()); ok {
			t.Fatalf("%s: a proof was taken twice", seg(n))
		}
		d.done(seg(n))
	}
	if len(d.proofs()) != 0 {
		t.Fatalf("proofs left: %v", d.proofs())
	}
	// The next call takes 5 and 6; every object holds its segment's bytes.
	if res, err := a.PushAhead(ctx, d.path(seg(5)), opts(2)); err != nil || res.Ahead != 1 {
		t.Fatalf("second call: %+v, %v", res, err)
	}
	for n := 1; n <= 6; n++ {
		raw, err := os.ReadFile(d.path(seg(n)))
		if err != nil {
			t.Fatal(err)
		}
		got, hdr, err := sealed.Unseal(get(t, store, archive.Key(mustFile(t, seg(n)))))
		if err != nil || !bytes.Equal(got, raw) || hdr.SHA256 != sha256.Sum256(raw) {
			t.Errorf("%s: archived content differs (%v)", seg(n), err)
		}
		if c := store.count(archive.Key(mustFile(t, seg(n)))); c != 1 {
			t.Errorf("%s stored %d times", seg(n), c)
		}
	}
}

func mustFile(t *testing.T, name string) segment.File {
	t.Helper()
	f, err := segment.ParseFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// Only plain segments of the first one's timeline, consecutive, with a
// .ready file go ahead; history, partial and backup history files go alone
// and take nothing along; --parallel 1 is one segment per call.
func TestPushAheadNeverTakesWhatMustGoAlone(t *testing.T) {
	ctx := context.Background()
	cases := []struct {
		what  string
		setup func(d *walDir) string
		par   int
		want  []string // archived keys besides identity
	}{
		{"parallel 1", func(d *walDir) string {
			d.ready(seg(2), sysID, nil)
			return d.ready(seg(1), sysID, nil)
		}, 1, []string{seg(1)}},
		{"a gap in the ready files", func(d *walDir) string {
			d.ready(seg(2), sysID, nil)
			makeSegment(t, d.dir, seg(3), sysID, nil) // not ready (done, or not finished)
			d.ready(seg(4), sysID, nil)
			return d.ready(seg(1), sysID, nil)
		}, 4, []string{seg(1), seg(2)}},
		{"a timeline switch", func(d *walDir) string {
			d.ready("000000020000000000000002", sysID, func(b []byte) { b[4] = 2 })
			if err := os.WriteFile(d.path("00000002.history"), []byte("1\t0/3000158\tno recovery target specified\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			d.mark("00000002.history")
			return d.ready(seg(1), sysID, nil)
		}, 4, []string{seg(1)}},
		{"a history file goes alone", func(d *walDir) string {
			d.ready(seg(1), sysID, nil)
			p := d.path("00000002.history")
			if err := os.WriteFile(p, []byte("1\t0/3000158\tno recovery target specified\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			d.mark("00000002.history")
			return p
		}, 4, []string{"00000002.history"}},
		{"a partial file goes alone", func(d *walDir) string {
			p := makeSegment(t, d.dir, seg(1)+".partial", sysID, nil)
			d.mark(seg(1) + ".partial")
			d.ready(seg(2), sysID, nil)
			return p
		}, 4, []string{seg(1) + ".partial"}},
		{"not a ready file, only a segment", func(d *walDir) string {
			makeSegment(t, d.dir, seg(2), sysID, nil)
			return d.ready(seg(1), sysID, nil)
		}, 4, []string{seg(1)}},
	}
	for _, c := range cases {
		store := memory.New()
		a := archive.New(store, quiet())
		d := newWalDir(t)
		p := c.setup(d)
		if _, err := a.PushAhead(ctx, p, opts(c.par)); err != nil {
			t.Errorf("%s: %v", c.what, err)
			continue
		}
		var got []string
		_ = store.List(ctx, "", func(o backends.ObjectInfo) error {
			if dir := filepath.Dir(o.Key); dir == "history" || filepath.Dir(dir) == "wal" {
				got = append(got, filepath.Base(o.Key))
			}
			return nil
		})
		sort.Strings(got)
		if !equalStrings(got, c.want) {
			t.Errorf("%s: archived %v, want %v", c.what, got, c.want)
		}
		var proofs []string
		for _, k := range c.want[1:] {
			proofs = append(proofs, k+".proof")
		}
		if got := d.proofs(); !equalStrings(got, proofs) {
			t.Errorf("%s: proofs %v, want %v", c.what, got, proofs)
		}
	}
}

// A segment that cannot go ahead (another file already archived under its
// name, another cluster's segment) gets no proof and stops the head; its
// own call then fails loudly as before. The first one's result is its own.
func TestPushAheadLeavesRefusalsToTheirOwnCall(t *testing.T) {
	ctx := context.Background()
	store := memory.New()
	a := archive.New(store, quiet())
	d := newWalDir(t)
	// seg 3 is archived already with other content.
	other := newWalDir(t)
	if _, err := a.Push(ctx, other.ready(seg(3), sysID, func(b []byte) { b[9000] ^= 1 }), zstd); err != nil {
		t.Fatal(err)
	}
	d.ready(seg(1), sysID, nil)
	d.ready(seg(2), sysID, nil)
	d.ready(seg(3), sysID, nil)
	d.ready(seg(4), sysID+1, nil) // another cluster's
	res, err := a.PushAhead(ctx, d.path(seg(1)), opts(4))
	if err != nil || res.Ahead != 1 {
		t.Fatalf("push: %+v, %v; want success with 1 ahead", res, err)
	}
	if got := d.proofs(); !equalStrings(got, []string{seg(2) + ".proof"}) {
		t.Fatalf("proofs %v", got)
	}
	if h, _ := a.ReadHead(ctx, 1); h.Segment != seg(2) {
		t.Errorf("head at %s, want %s (the run stops at the conflict)", h.Segment, seg(2))
	}
	if _, err := store.Stat(ctx, archive.Key(mustFile(t, seg(4)))); !errors.Is(err, backends.ErrNotFound) {
		t.Errorf("another cluster's segment was archived ahead: %v", err)
	}
	if _, err := a.PushAhead(ctx, d.path(seg(3)), opts(4)); !errors.Is(err, archive.ErrConflict) {
		t.Errorf("own call of the conflicting segment: %v, want ErrConflict", err)
	}
	if _, err := a.PushAhead(ctx, d.path(seg(4)), opts(4)); !errors.Is(err, archive.ErrWrongCluster) {
		t.Errorf("own call of the foreign segment: %v, want ErrWrongCluster", err)
	}
}

// When the first one fails, the call fails and leaves no proof, even for
// segments that reached the archive.
func TestPushAheadFirstFailsNoProofs(t *testing.T) {
	ctx := context.Background()
	store := memory.New()
	a := archive.New(store, quiet())
	d := newWalDir(t)
	other := newWalDir(t)
	if _, err := a.Push(ctx, other.ready(seg(1), sysID, func(b []byte) { b[9000] ^= 1 }), zstd); err != nil {
		t.Fatal(err)
	}
	d.ready(seg(1), sysID, nil)
	d.ready(seg(2), sysID, nil)
	if _, err := a.PushAhead(ctx, d.path(seg(1)), opts(2)); !errors.Is(err, archive.ErrConflict) {
		t.Fatalf("push: %v, want ErrConflict", err)
	}
	if got := d.proofs(); len(got) != 0 {
		t.Fatalf("proofs after a failed call: %v", got)
	}
}

// A call after one that was killed before its proofs were taken: what a
// proof still vouches for is not pushed again, and the head covers it.
func TestPushAheadSkipsWhatIsProven(t *testing.T) {
	ctx := context.Background()
	store := newCounting()
	a := archive.New(store, quiet())
	d := newWalDir(t)
	for n := 1; n <= 4; n++ {
		d.ready(seg(n), sysID, nil)
	}
	if _, err := a.PushAhead(ctx, d.path(seg(1)), archive.AheadOptions{Compression: zstd, Parallel: 2, Window: 3, Location: here}); err != nil {
		t.Fatal(err)
	}
	// PostgreSQL never learnt: it calls for seg 1 again.
	res, err := a.PushAhead(ctx, d.path(seg(1)), opts(2))
	if err != nil || !res.AlreadyArchived || res.Ahead != 3 {
		t.Fatalf("second call: %+v, %v", res, err)
	}
	for n, want := range map[int]int{1: 2, 2: 1, 3: 1, 4: 1} {
		if c := store.count(archive.Key(mustFile(t, seg(n)))); c != want {
			t.Errorf("%s stored %d times, want %d", seg(n), c, want)
		}
	}
	if h, _ := a.ReadHead(ctx, 1); h.Segment != seg(4) {
		t.Errorf("head %s, want %s", h.Segment, seg(4))
	}
	if got := d.proofs(); len(got) != 3 {
		t.Errorf("proofs %v, want 3", got)
	}
}
