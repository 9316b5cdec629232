// Package kill is the kill -9 tier: walship push (to a directory and to
// versitygw S3), walship backup push (against PostgreSQL 15) and walship
// agent are killed at random moments, each at least
// WALSHIP_KILL_ITERATIONS times (default 100). After every kill the archive
// holds nothing partial under a final name, a re-run succeeds, and once the
// re-run (and, for backups, walship backup delete of the killed one) is done
// no debris is left. The moments are drawn from a seeded generator across
// the whole measured duration of the operation; the seed is printed, and
// WALSHIP_KILL_SEED replays a run. docs/RELIABILITY.md has the figures.
package kill

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/walship/walship/backends"
	"github.com/walship/walship/internal/testenv"
	"github.com/walship/walship/manifest"
	"github.com/walship/walship/sealed"
	"github.com/walship/walship/segment"
)

var (
	walshipBin string
	seed       int64
	summaryMu  sync.Mutex
	summary    []string
)

func TestMain(m *testing.M) {
	os.Exit(testenv.WalshipMain(func(bin string) int {
		walshipBin = bin
		return runTier(m)
	}))
}

// runTier runs the tier's tests with the run's seed, then prints each
// operation's summary line and the tier's duration.
func runTier(m *testing.M) int {
	seed = time.Now().UnixNano()
	if s := os.Getenv("WALSHIP_KILL_SEED"); s != "" {
		var err error
		if seed, err = strconv.ParseInt(s, 10, 64); err != nil {
			fmt.Fprintln(os.Stderr, "WALSHIP_KILL_SEED:", err)
			return 2
		}
	}
	fmt.Printf("kill tier: seed %d (replay with WALSHIP_KILL_SEED=%d), %d kills per operation\n", seed, seed, iterations())
	began := time.Now()
	code := m.Run()
	for _, line := range summary {
		fmt.Println(line)
	}
	fmt.Printf("kill tier: %s in all\n", time.Since(began).Round(time.Second))
	return code
}

// iterations is how many kills each operation gets.
func iterations() int {
	if n, err := strconv.Atoi(os.Getenv("WALSHIP_KILL_ITERATIONS")); err == nil && n > 0 {
		return n
	}
	return 100
}

// rngFor is the test's own generator: the run's seed and the test's name,
// so one test replays alone with -run.
func rngFor(t *testing.T) *rand.Rand {
	h := fnv.New64a()
	h.Write([]byte(t.Name()))
	return rand.New(rand.NewSource(seed ^ int64(h.Sum64())))
}

// tally counts one test's kills and what was found after them.
type tally struct {
	t          *testing.T
	began      time.Time
	kills      int // killed while running
	finished   int // ended before the kill came
	reruns     int
	debris     int // kills that left debris (all of it then removed, or a violation)
	violations int
	what       string // the current iteration, for messages
}

func newTally(t *testing.T) *tally { return &tally{t: t, began: time.Now()} }

// violation records a broken contract; after five the test stops.
func (c *tally) violation(format string, args ...any) {
	c.t.Helper()
	c.violations++
	c.t.Errorf("VIOLATION (seed %d, %s): %s", seed, c.what, fmt.Sprintf(format, args...))
	if c.violations >= 5 {
		c.t.FailNow()
	}
}

func (c *tally) report(extra string) {
	line := fmt.Sprintf("kill tier %s: %d kills (%d left debris), %d ended before their kill, %d re-runs, %d violations, %s%s",
		c.t.Name(), c.kills, c.debris, c.finished, c.reruns, c.violations, time.Since(c.began).Round(100*time.Millisecond), extra)
	c.t.Log(line)
	summaryMu.Lock()
	summary = append(summary, line)
	summaryMu.Unlock()
	if c.kills < iterations() {
		c.t.Errorf("only %d kills, want %d", c.kills, iterations())
	}
}

// proc is a walship process with its output kept.
type proc struct {
	cmd *exec.Cmd
	out testenv.Output
}

func (p *proc) output() string { return p.out.String() }

func walship(w *testenv.Workdir, env []string, args ...string) *proc {
	p := &proc{cmd: w.Command(env, walshipBin, args...)}
	p.cmd.Stdout, p.cmd.Stderr = &p.out, &p.out
	return p
}

// runKilled runs p and kills it with SIGKILL after delay. It reports
// whether the kill found it running; if not, err is how it ended.
func runKilled(p *proc, delay time.Duration) (killed bool, err error) {
	if err := p.cmd.Start(); err != nil {
		return false, err
	}
	timer := time.AfterFunc(delay, func() { _ = p.cmd.Process.Signal(syscall.SIGKILL) })
	err = p.cmd.Wait()
	timer.Stop()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL {
			return true, nil
		}
	}
	return false, err
}

// timed runs p to its end and returns how long it took.
func timed(p *proc) (time.Duration, error) {
	start := time.Now()
	err := p.cmd.Run()
	return time.Since(start), err
}

// measure runs op n times and returns the median duration: kills are
// drawn from [0, that]. Runs vary around it, so their ends are hit too.
// The tests measure once after a warm-up run (the first push claims the
// archive's identity), then again every remeasureEvery iterations, as the
// machine's load changes.
func measure(t *testing.T, n int, op func() time.Duration) time.Duration {
	t.Helper()
	var d []time.Duration
	for i := 0; i < n; i++ {
		d = append(d, op())
	}
	sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
	t.Logf("measured %v; kills drawn from [0, %v]", d, d[len(d)/2])
	return d[len(d)/2]
}

const remeasureEvery = 25

// untilKilled is the tier's loop: op runs once as a warm-up, then
// iteration(i, delay) until c counts iterations() kills or 3×iterations()
// tries are spent. delay is drawn with rng from [0, the median of samples
// runs of op], op being measured again every remeasureEvery iterations.
func (c *tally) untilKilled(rng *rand.Rand, samples int, op func() time.Duration, iteration func(i int, delay time.Duration)) {
	c.t.Helper()
	op()
	var longest time.Duration
	for i := 0; c.kills < iterations() && i < 3*iterations(); i++ {
		if i%remeasureEvery == 0 {
			longest = measure(c.t, samples, op)
		}
		iteration(i, randDelay(rng, longest))
	}
}

func randDelay(rng *rand.Rand, limit time.Duration) time.Duration {
	return time.Duration(rng.Int63n(int64(limit) + 1))
}

// target is an archive as walship's command line and the test see it.
type target struct {
	url   string
	env   []string
	store backends.Storage
	root  string // the directory of a filesystem archive; "" on S3
}

func fsTarget(t *testing.T, w *testenv.Workdir) target {
	a := testenv.FSArchive(t, w)
	return target{url: a.URL, store: a.Store, root: a.Root}
}

func s3Target(t *testing.T) target {
	a := testenv.S3Archive(t, "kill", "c1")
	return target{url: a.URL, env: a.Env, store: a.Store}
}

// onFilesystem runs test with a new work directory and an archive in it.
func onFilesystem(t *testing.T, test func(*testing.T, *testenv.Workdir, target)) {
	w := testenv.NewWorkdir(t)
	test(t, w, fsTarget(t, w))
}

// onS3 runs test with a new work directory and an archive in a new bucket
// of the shared versitygw.
func onS3(t *testing.T, test func(*testing.T, *testenv.Workdir, target)) {
	test(t, testenv.NewWorkdir(t), s3Target(t))
}

// tempFiles lists the debris in a filesystem archive: every file named
// .tmp-*, wherever it is, unless its name says it is being written by a
// process that is still running (PostgreSQL's archiver pushes WAL while a
// backup test looks; a backup's server side may still be switching WAL).
func (tg target) tempFiles(t *testing.T) []string {
	t.Helper()
	if tg.root == "" {
		return nil
	}
	var out []string
	err := filepath.WalkDir(tg.root, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && strings.HasPrefix(d.Name(), ".tmp-") && !writerRunning(d.Name()) {
			rel, _ := filepath.Rel(tg.root, p)
			out = append(out, rel)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// writerRunning reports whether a temporary file's name (.tmp-<tag>.<pid>.
// <random>.<host>) names a process that runs.
func writerRunning(name string) bool {
	parts := strings.SplitN(strings.TrimPrefix(name, ".tmp-"), ".", 4)
	if len(parts) != 4 {
		return false
	}
	pid, err := strconv.Atoi(parts[1])
	if err != nil || pid <= 0 {
		return false
	}
	return syscall.Kill(pid, 0) == nil
}

// checker verifies an archive's objects, each once unless it changes.
type checker struct {
	tg   target
	seen map[string]backends.ObjectInfo // verified, as they were then
	// want is the content of files the test pushed, by key.
	want map[string][]byte
	// complete are the complete backups the last check found.
	complete []string
}

func newChecker(tg target) *checker {
	return &checker{tg: tg, seen: map[string]backends.ObjectInfo{}, want: map[string][]byte{}}
}

// check lists the archive and verifies every object under a final name:
// sealed objects unseal (to what the test pushed, where it knows), JSON
// objects parse, and a backup with a manifest has every chunk it names at
// its stored size with the checksum it names. It returns the ids of
// backups without a manifest.
func (k *checker) check(ctx context.Context, c *tally) (incomplete []string) {
	c.t.Helper()
	objs := map[string]backends.ObjectInfo{}
	err := k.tg.store.List(ctx, "", func(o backends.ObjectInfo) error { objs[o.Key] = o; return nil })
	if err != nil {
		c.violation("list the archive: %v", err)
		return nil
	}
	unchanged := func(key string) bool {
		old, ok := k.seen[key]
		return ok && old.Size == objs[key].Size && old.Modified.Equal(objs[key].Modified)
	}
	k.complete = nil
	backups := map[string]bool{} // id: has a manifest
	for key := range objs {
		if id, rest, ok := backupKey(key); ok {
			backups[id] = backups[id] || rest == "manifest.json"
		}
	}
	for key, o := range objs {
		if _, rest, ok := backupKey(key); (ok && rest == "manifest.json") || unchanged(key) {
			continue
		}
		if err := k.object(ctx, key); err != nil {
			c.violation("%s under its final name: %v", key, err)
			continue
		}
		k.seen[key] = o
	}
	for id, complete := range backups {
		mk := manifest.Prefix + id + "/manifest.json"
		switch {
		case !complete:
			incomplete = append(incomplete, id)
		case unchanged(mk):
			k.complete = append(k.complete, id)
		default:
			if err := k.backup(ctx, id, objs); err != nil {
				c.violation("backup %s has a manifest, but %v", id, err)
				continue
			}
			k.seen[mk] = objs[mk]
			k.complete = append(k.complete, id)
		}
	}
	sort.Strings(k.complete)
	for key := range k.seen {
		if _, ok := objs[key]; !ok {
			delete(k.seen, key)
		}
	}
	sort.Strings(incomplete)
	return incomplete
}

func backupKey(key string) (id, rest string, ok bool) {
	tail, found := strings.CutPrefix(key, manifest.Prefix)
	if !found {
		return "", "", false
	}
	return strings.Cut(tail, "/")
}

func (k *checker) get(ctx context.Context, key string) ([]byte, error) {
	rc, _, err := k.tg.store.Get(ctx, key)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	return io.ReadAll(rc)
}

// object verifies one object that is not a backup's manifest.
func (k *checker) object(ctx context.Context, key string) error {
	b, err := k.get(ctx, key)
	if err != nil {
		return err
	}
	switch {
	case strings.HasSuffix(key, ".json"): // identity, heads, slots, gaps, backup leases
		if !json.Valid(b) {
			return fmt.Errorf("is not valid JSON: %q", b)
		}
	case strings.HasPrefix(key, "wal/"), strings.HasPrefix(key, "history/"), strings.HasPrefix(key, manifest.Prefix):
		raw, _, err := sealed.Unseal(b)
		if err != nil {
			return fmt.Errorf("does not unseal: %w", err)
		}
		if want, ok := k.want[key]; ok && !bytes.Equal(raw, want) {
			return fmt.Errorf("holds %d bytes that differ from the %d pushed", len(raw), len(want))
		}
	}
	return nil
}

// backup checks a backup whose manifest exists against what is stored:
// every chunk it names is there at its stored size, and its sealed header
// (whose body the object check verified) has the size and checksum the
// manifest names.
func (k *checker) backup(ctx context.Context, id string, objs map[string]backends.ObjectInfo) error {
	m, err := manifest.Get(ctx, k.tg.store, id)
	if err != nil {
		return fmt.Errorf("its manifest does not read: %w", err)
	}
	chunks := []manifest.Chunk{m.ServerManifest}
	for _, a := range m.Archives {
		chunks = append(chunks, a.Chunks...)
	}
	if len(chunks) < 2 {
		return fmt.Errorf("it names no data")
	}
	for _, ch := range chunks {
		o, ok := objs[ch.Key]
		if !ok {
			return fmt.Errorf("chunk %s is missing", ch.Key)
		}
		if o.Size != ch.StoredSize {
			return fmt.Errorf("chunk %s has %d bytes, the manifest says %d", ch.Key, o.Size, ch.StoredSize)
		}
		if _, verified := k.seen[ch.Key]; !verified {
			return fmt.Errorf("chunk %s did not verify", ch.Key)
		}
		rc, _, err := k.tg.store.Get(ctx, ch.Key)
		if err != nil {
			return fmt.Errorf("chunk %s: %w", ch.Key, err)
		}
		h, err := sealed.ReadHeader(rc)
		rc.Close()
		if err != nil {
			return fmt.Errorf("chunk %s: %w", ch.Key, err)
		}
		if h.Size != ch.Size || hex.EncodeToString(h.SHA256[:]) != ch.SHA256 {
			return fmt.Errorf("chunk %s holds other bytes than the manifest names", ch.Key)
		}
	}
	return nil
}

const sysID = 7300000000000000077

// makeSegment is a PostgreSQL 15 segment of segSize bytes named name: a
// long page header that agrees with it, then random bytes in the first
// half (WAL compresses about that well).
func makeSegment(name string, segSize int, rng *rand.Rand) []byte {
	f, err := segment.ParseFile(name)
	if err != nil {
		panic(err)
	}
	no, _ := f.SegNo(uint64(segSize))
	b := make([]byte, segSize)
	testenv.PutLongHeader(b, f.TLI, no, sysID)
	rng.Read(b[64 : segSize/2])
	return b
}

func segName(n uint64, segSize int) string {
	return segment.Name{TLI: 1, SegNo: n}.String(uint64(segSize))
}
