package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/walship/walship/archive"
	"github.com/walship/walship/backends"
	"github.com/walship/walship/backends/fs"
	"github.com/walship/walship/internal/testenv"
	"github.com/walship/walship/sealed"
	"github.com/walship/walship/segment"
)

// killSegSize: big enough that reading, sealing and storing are a real
// part of a call, small enough for a hundred backlogs in well under three
// minutes (PostgreSQL accepts 1 MiB and up).
const killSegSize = 2 << 20

const killSysID = 7300000000000000099

// TestKillParallelPush kills walship push -9 at random moments while it
// pushes a backlog ahead (and, now and then, while PostgreSQL's later calls
// run), WALSHIP_KILL_ITERATIONS times (default 100). After every kill, every
// proof in pg_wal/walship-ahead names an object that is in the archive and
// holds exactly that segment's bytes; the calls PostgreSQL then makes, in
// order and retried like PostgreSQL retries, all succeed and archive every
// segment whole; and once the backlog is drained no proof and no temporary
// file is left. The seed is logged; WALSHIP_KILL_SEED replays a run.
func TestKillParallelPush(t *testing.T) {
	k := newKillRig(t)
	k.backlog(1)
	k.drain(0) // the first push claims the archive's identity
	var longest time.Duration
	for i := 0; k.kills < k.iterations; i++ {
		if i%25 == 0 {
			longest = k.measure()
		}
		names := k.backlog(2 + k.rng.Intn(8))
		delay := time.Duration(k.rng.Int63n(int64(longest) + 1))
		k.what = fmt.Sprintf("iteration %d: push %s with %d ready killed after %v", i, names[0], len(names), delay)
		if k.push(names[0], delay) {
			k.kills++
		} else {
			k.finished++
		}
		k.checkProofs()
		k.drain(0.2)
		k.checkArchived(names)
		k.checkClean()
		k.forget(names)
	}
	t.Logf("seed %d: %d pushes of a backlog killed (%d finished before their kill), %d later calls killed, %d calls answered by a proof",
		k.seed, k.kills, k.finished, k.laterKills, k.proven)
	if k.proven == 0 {
		t.Error("no call was ever answered by a proof: nothing went ahead")
	}
}

type killRig struct {
	t          *testing.T
	rng        *rand.Rand
	seed       int64
	iterations int
	wal        string // the pg_wal directory
	archiveURL string
	store      backends.Storage
	next       uint64
	want       map[string][]byte // segment name -> bytes, while in pg_wal
	what       string
	kills      int // pushes of a backlog killed
	finished   int // pushes of a backlog that ended before their kill
	laterKills int // PostgreSQL's later calls killed
	proven     int
}

func newKillRig(t *testing.T) *killRig {
	seed := time.Now().UnixNano()
	if s := os.Getenv("WALSHIP_KILL_SEED"); s != "" {
		var err error
		if seed, err = strconv.ParseInt(s, 10, 64); err != nil {
			t.Fatalf("WALSHIP_KILL_SEED=%q: %v", s, err)
		}
	}
	t.Logf("seed %d (WALSHIP_KILL_SEED=%d replays this run)", seed, seed)
	n := 100
	if s := os.Getenv("WALSHIP_KILL_ITERATIONS"); s != "" {
		var err error
		if n, err = strconv.Atoi(s); err != nil || n < 1 {
			t.Fatalf("WALSHIP_KILL_ITERATIONS=%q: want a positive number", s)
		}
	}
	root := t.TempDir()
	k := &killRig{t: t, rng: rand.New(rand.NewSource(seed)), seed: seed, iterations: n,
		wal: filepath.Join(root, "pg_wal"), next: 1, want: map[string][]byte{}}
	dir := filepath.Join(root, "archive")
	for _, d := range []string{filepath.Join(k.wal, "archive_status"), dir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	st, err := fs.New(dir)
	if err != nil {
		t.Fatal(err)
	}
	k.store, k.archiveURL = st, "file://"+dir
	return k
}

// backlog writes n new segments and marks them ready, as PostgreSQL does.
func (k *killRig) backlog(n int) []string {
	var names []string
	for range n {
		name := segment.Name{TLI: 1, SegNo: k.next}.String(killSegSize)
		b := killSegment(k.next, k.rng)
		k.next++
		if err := os.WriteFile(filepath.Join(k.wal, name), b, 0o600); err != nil {
			k.t.Fatal(err)
		}
		if err := os.WriteFile(k.status(name, "ready"), nil, 0o600); err != nil {
			k.t.Fatal(err)
		}
		k.want[name] = b
		names = append(names, name)
	}
	return names
}

func (k *killRig) status(name, kind string) string {
	return filepath.Join(k.wal, "archive_status", name+"."+kind)
}

// killSegment is a PostgreSQL 15 segment: a long page header, then pages
// of which some are random (sealing them takes time, their objects are big)
// and the rest repetitive, like WAL.
func killSegment(no uint64, rng *rand.Rand) []byte {
	b := make([]byte, killSegSize)
	testenv.PutLongHeader(b, 1, no, killSysID)
	for off := 8192; off < killSegSize; off += 8192 {
		page := b[off : off+8192]
		if rng.Intn(3) == 0 {
			rng.Read(page)
		} else {
			for i := range page {
				page[i] = byte(i*int(no) + off>>13)
			}
		}
	}
	return b
}

// push runs one call for name, killed after delay (never, if negative).
// It reports whether the kill ended it.
func (k *killRig) push(name string, delay time.Duration) bool {
	cmd := exec.Command(walshipBin, "push", "--archive", k.archiveURL, "--parallel", "3", filepath.Join("pg_wal", name))
	cmd.Dir = filepath.Dir(k.wal)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		k.t.Fatal(err)
	}
	var timer *time.Timer
	if delay >= 0 {
		timer = time.AfterFunc(delay, func() { _ = cmd.Process.Signal(syscall.SIGKILL) })
	}
	err := cmd.Wait()
	if timer != nil {
		timer.Stop()
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL {
			return true
		}
	}
	if err != nil {
		k.t.Fatalf("%s: push %s failed by itself: %v\n%s", k.what, name, err, out.String())
	}
	if strings.Contains(out.String(), "pushed ahead by an earlier call") {
		k.proven++
	}
	return false
}

// measure times unkilled calls that each take a backlog of 8 along, and
// returns the longest of three: kills fall anywhere from the start to
// the end of such a call.
func (k *killRig) measure() time.Duration {
	var longest time.Duration
	for range 3 {
		names := k.backlog(8)
		start := time.Now()
		k.push(names[0], -1)
		longest = max(longest, time.Since(start))
		k.drain(0)
		k.checkArchived(names)
		k.forget(names)
	}
	return longest
}

// drain makes the calls PostgreSQL makes: the oldest ready segment, until
// none is left; a call that fails is made again. Each call is killed with
// probability p at a random moment of it, and the proofs checked after.
func (k *killRig) drain(p float64) {
	for tries := 0; ; tries++ {
		name := k.oldestReady()
		if name == "" {
			return
		}
		if tries > 1000 {
			k.t.Fatalf("%s: the backlog does not drain", k.what)
		}
		delay := time.Duration(-1)
		if k.rng.Float64() < p {
			delay = time.Duration(k.rng.Int63n(int64(150 * time.Millisecond)))
		}
		if k.push(name, delay) {
			k.laterKills++
			k.checkProofs()
			continue
		}
		if err := os.Rename(k.status(name, "ready"), k.status(name, "done")); err != nil {
			k.t.Fatal(err)
		}
	}
}

func (k *killRig) oldestReady() string {
	es, err := os.ReadDir(filepath.Join(k.wal, "archive_status"))
	if err != nil {
		k.t.Fatal(err)
	}
	var ready []string
	for _, e := range es {
		if n, ok := strings.CutSuffix(e.Name(), ".ready"); ok {
			ready = append(ready, n)
		}
	}
	sort.Strings(ready)
	if len(ready) == 0 {
		return ""
	}
	return ready[0]
}

// checkProofs: every proof under its final name vouches for an object
// that is in the archive and holds exactly its segment's bytes.
func (k *killRig) checkProofs() {
	es, err := os.ReadDir(filepath.Join(k.wal, archive.ProofDirName))
	if err != nil && !os.IsNotExist(err) {
		k.t.Fatal(err)
	}
	for _, e := range es {
		name, ok := strings.CutSuffix(e.Name(), ".proof")
		if !ok || strings.HasPrefix(name, ".") {
			continue
		}
		if err := k.archived(name); err != nil {
			k.t.Fatalf("%s: a proof for %s, but %v", k.what, name, err)
		}
	}
}

// archived says whether the archive holds name whole, with its bytes.
func (k *killRig) archived(name string) error {
	want, ok := k.want[name]
	if !ok {
		return fmt.Errorf("%s is no segment of this run", name)
	}
	key := archive.SegmentKey(segment.Name{TLI: 1, SegNo: mustSegNo(k.t, name)}, killSegSize)
	rc, _, err := k.store.Get(context.Background(), key)
	if err != nil {
		return fmt.Errorf("%s is not in the archive: %w", key, err)
	}
	defer rc.Close()
	r, err := sealed.NewReader(rc)
	if err != nil {
		return fmt.Errorf("%s: %w", key, err)
	}
	defer r.Close()
	got, err := io.ReadAll(r)
	if err != nil {
		return fmt.Errorf("%s: %w", key, err)
	}
	if !bytes.Equal(got, want) {
		return fmt.Errorf("%s holds other bytes", key)
	}
	return nil
}

func mustSegNo(t *testing.T, name string) uint64 {
	f, err := segment.ParseFile(name)
	if err != nil {
		t.Fatal(err)
	}
	n, err := f.SegNo(killSegSize)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func (k *killRig) checkArchived(names []string) {
	for _, n := range names {
		if err := k.archived(n); err != nil {
			k.t.Fatalf("%s: after the calls PostgreSQL made: %v", k.what, err)
		}
	}
}

// checkClean: with the backlog drained, no proof and no temporary file is
// left beside the segments.
func (k *killRig) checkClean() {
	es, _ := os.ReadDir(filepath.Join(k.wal, archive.ProofDirName))
	var left []string
	for _, e := range es {
		left = append(left, e.Name())
	}
	// A killed call's temporary proof is swept by the next call that
	// looks ahead; the last call of a backlog may have been a quick one.
	left = slices.DeleteFunc(left, func(n string) bool { return strings.HasPrefix(n, ".") })
	if len(left) > 0 {
		k.t.Fatalf("%s: proofs left after the backlog drained: %v", k.what, left)
	}
}

// forget removes archived segments from pg_wal, as checkpoints do.
func (k *killRig) forget(names []string) {
	for _, n := range names {
		_ = os.Remove(filepath.Join(k.wal, n))
		_ = os.Remove(k.status(n, "done"))
		delete(k.want, n)
	}
}
