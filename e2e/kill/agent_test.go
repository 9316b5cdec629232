package kill

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/walship/walship/archive"
	"github.com/walship/walship/internal/testenv"
	"github.com/walship/walship/sealed"
)

const (
	agentSegSize = 1 << 20
	agentBatch   = 4 // segments archived before each kill
)

func TestKillAgentFilesystem(t *testing.T) { onFilesystem(t, killAgent) }

func TestKillAgentS3(t *testing.T) { onS3(t, killAgent) }

// follower is an archive being followed by walship agent into a spool,
// and the standby's side of the spool (which takes the files).
type follower struct {
	t      *testing.T
	w      *testenv.Workdir
	tg     target
	a      *archive.Archive
	p      *pusher
	spool  string
	want   map[string][]byte // every segment archived, by name
	taken  map[string]bool   // segments the "standby" took from the spool
	batch  []string          // the names archived last
	agentA []string
}

func newFollower(t *testing.T, w *testenv.Workdir, tg target, k *checker) *follower {
	f := &follower{
		t: t, w: w, tg: tg, a: archive.New(tg.store, slog.New(slog.DiscardHandler)), p: newPusher(t, w, tg, k),
		spool: w.Mkdir(t, "spool"), want: map[string][]byte{}, taken: map[string]bool{},
	}
	f.agentA = []string{"agent", "--archive", tg.url, "--spool", f.spool, "--slot", "dr1", "--ahead", "8", "--parallel", "4",
		"--poll-min", "20ms", "--poll-max", "200ms", "--heartbeat", "200ms", "--log-level", "debug"}
	f.archiveBatch(t.Context())
	for _, args := range [][]string{
		{"slot", "create", "--archive", tg.url, "--ttl", "1h", "dr1"},
		{"slot", "advance", "--archive", tg.url, "dr1", f.batch[0]},
	} {
		pr := walship(w, tg.env, args...)
		if err := pr.cmd.Run(); err != nil {
			t.Fatalf("walship %s: %v\n%s", strings.Join(args, " "), err, pr.output())
		}
	}
	return f
}

// archiveBatch archives the next agentBatch segments (in this process:
// the agent is what is under test).
func (f *follower) archiveBatch(ctx context.Context) {
	f.batch = nil
	for i := 0; i < agentBatch; i++ {
		name := segName(f.p.next, agentSegSize)
		f.p.next++
		b := makeSegment(name, agentSegSize, f.p.rng)
		path := filepath.Join(f.p.walDir, name)
		if err := os.WriteFile(path, b, 0o600); err != nil {
			f.t.Fatal(err)
		}
		if _, err := f.a.Push(ctx, path, sealed.Compression{Codec: sealed.CodecZstd}); err != nil {
			f.t.Fatal(err)
		}
		_ = os.Remove(path)
		f.want[name] = b
		f.p.k.want["wal/00000001/"+name] = b
		f.batch = append(f.batch, name)
	}
	if f.tg.root != "" {
		// Written by root here; the agent runs as the server's user.
		keys := []string{"identity.json", "heads/00000001.json", "wal/00000001"}
		for _, name := range f.batch {
			keys = append(keys, "wal/00000001/"+name)
		}
		for _, key := range keys {
			for p := filepath.Join(f.tg.root, key); p != f.tg.root; p = filepath.Dir(p) {
				f.w.Chown(f.t, p)
			}
		}
	}
}

func (f *follower) agent() *proc { return walship(f.w, f.tg.env, f.agentA...) }

// spoolViolations checks the spool: every file named like a segment holds
// exactly that archived segment, the agent's state parses; with strict,
// nothing else is there but the agent's lock (no temporary files).
func (f *follower) spoolViolations(strict bool) []string {
	ents, err := os.ReadDir(f.spool)
	if err != nil {
		return []string{err.Error()}
	}
	var bad []string
	for _, e := range ents {
		name := e.Name()
		p := filepath.Join(f.spool, name)
		switch {
		case name == ".walship-agent.json":
			if b, err := os.ReadFile(p); err != nil || !json.Valid(b) {
				bad = append(bad, fmt.Sprintf("agent state %q (%v)", b, err))
			}
		case name == ".walship-agent.lock": // the agent's lock, kept between runs
		case strings.HasPrefix(name, "."):
			if strict {
				bad = append(bad, "temporary file "+name)
			}
		default:
			b, err := os.ReadFile(p)
			want, ok := f.want[name]
			if err != nil || !ok || !bytes.Equal(b, want) {
				bad = append(bad, fmt.Sprintf("%s: %d bytes, not the archived segment (%v)", name, len(b), err))
			}
		}
	}
	return bad
}

// ready reports whether every archived segment not yet taken is in the
// spool, verified.
func (f *follower) ready() bool {
	for name, want := range f.want {
		if f.taken[name] {
			continue
		}
		b, err := os.ReadFile(filepath.Join(f.spool, name))
		if err != nil || !bytes.Equal(b, want) {
			return false
		}
	}
	return true
}

// take is the standby taking every segment from the spool (as
// restore_command's mv does).
func (f *follower) take() {
	sink := filepath.Join(f.w.Dir, "taken")
	_ = os.MkdirAll(sink, 0o700)
	ents, _ := os.ReadDir(f.spool)
	for _, e := range ents {
		if _, ok := f.want[e.Name()]; ok {
			if err := os.Rename(filepath.Join(f.spool, e.Name()), filepath.Join(sink, e.Name())); err == nil {
				f.taken[e.Name()] = true
				_ = os.Remove(filepath.Join(sink, e.Name()))
			}
		}
	}
}

// waitUntil polls cond until it holds or timeout passes.
func waitUntil(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(10 * time.Millisecond) // paces the polls; cond is the real check
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		<-tick.C
	}
	return true
}

// stop sends SIGTERM and returns how the agent ended.
func stop(pr *proc, done <-chan error) error {
	_ = pr.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-done:
		return err
	case <-time.After(15 * time.Second):
		_ = pr.cmd.Process.Kill()
		return fmt.Errorf("still running 15s after SIGTERM (then killed: %w)", <-done)
	}
}

func start(pr *proc) (<-chan error, error) {
	if err := pr.cmd.Start(); err != nil {
		return nil, err
	}
	done := make(chan error, 1)
	go func() { done <- pr.cmd.Wait() }()
	return done, nil
}

// serve is the standby's side while an agent runs: wait until the spool
// holds every segment not yet taken, and take them all. With noticed, it
// then waits until the agent has seen them go (its slot says replay
// reached the last one): only files an agent placed itself tell it about
// replay, so this holds for a run that brought them all.
func (f *follower) serve(ctx context.Context, timeout time.Duration, noticed bool) error {
	if !waitUntil(timeout, f.ready) {
		var missing []string
		for name := range f.want {
			if _, err := os.Stat(filepath.Join(f.spool, name)); err != nil && !f.taken[name] {
				missing = append(missing, name)
			}
		}
		sort.Strings(missing)
		return fmt.Errorf("the agent did not bring %v into the spool in %v", missing, timeout)
	}
	f.take()
	if !noticed {
		return nil
	}
	last := f.batch[len(f.batch)-1]
	var replayed string
	if !waitUntil(timeout, func() bool {
		s, err := f.a.GetSlot(ctx, "dr1")
		replayed = s.Replayed
		return err == nil && s.Replayed == last
	}) {
		return fmt.Errorf("the agent's slot says replay reached %q, not %s, %v after the spool was emptied", replayed, last, timeout)
	}
	return nil
}

func killAgent(t *testing.T, w *testenv.Workdir, tg target) {
	ctx := context.Background()
	c := newTally(t)
	k := newChecker(tg)
	f := newFollower(t, w, tg, k)
	rng := rngFor(t)
	// One round: the agent fills the spool with the new batch.
	round := func() time.Duration {
		pr := f.agent()
		began := time.Now()
		done, err := start(pr)
		if err != nil {
			t.Fatal(err)
		}
		if !waitUntil(20*time.Second, f.ready) {
			_ = stop(pr, done)
			t.Fatalf("the agent did not fill the spool:\n%s", pr.output())
		}
		d := time.Since(began)
		if err := f.serve(ctx, 20*time.Second, true); err != nil {
			_ = stop(pr, done)
			t.Fatalf("%v:\n%s", err, pr.output())
		}
		if err := stop(pr, done); err != nil {
			t.Fatalf("agent stopped by SIGTERM: %v\n%s", err, pr.output())
		}
		f.archiveBatch(ctx)
		return d
	}
	c.untilKilled(rng, 3, round, func(i int, delay time.Duration) {
		c.what = fmt.Sprintf("iteration %d: agent killed after %v, batch %s..%s", i, delay, f.batch[0], f.batch[len(f.batch)-1])
		pr := f.agent()
		killed, err := runKilled(pr, delay)
		switch {
		case killed:
			c.kills++
		default:
			c.violation("the agent ended by itself (%v) before its kill:\n%s", err, pr.output())
		}
		killedOut := pr.output()
		for _, v := range f.spoolViolations(false) {
			c.violation("after the kill, in the spool: %s", v)
		}
		if len(f.spoolViolations(true)) > 0 || len(tg.tempFiles(t)) > 0 {
			c.debris++
		}
		k.check(ctx, c)
		f.restart(ctx, c, killedOut)
		c.reruns++
		k.check(ctx, c)
		if left := tg.tempFiles(t); len(left) > 0 {
			c.violation("debris in the archive after the restarted agent: %v", left)
		}
		f.archiveBatch(ctx)
	})
	c.report(fmt.Sprintf(", %d segments followed", len(f.want)))
}

// restart is the re-run after a kill: the agent started again brings
// every segment not taken into the spool, stops with 0 on SIGTERM once it
// follows (has polled the archive: a SIGTERM during its start is another
// matter, see RELIABILITY.md), and leaves a spool of verified segments.
func (f *follower) restart(ctx context.Context, c *tally, killedOut string) {
	began := time.Now().Add(-time.Second) // the slot's heartbeat is stamped to the second on some stores
	pr := f.agent()
	done, err := start(pr)
	if err != nil {
		f.t.Fatal(err)
	}
	if err := f.serve(ctx, 10*time.Second, false); err != nil {
		c.violation("%v; killed run:\n%s\nrestarted:\n%s", err, lastLines(killedOut, 20), lastLines(pr.output(), 30))
	}
	if !waitUntil(10*time.Second, func() bool { return strings.Contains(pr.output(), "polled head") }) {
		c.violation("the restarted agent never polled the archive:\n%s", lastLines(pr.output(), 30))
	}
	// The sweep of a killed writer's temporary files runs after a run's
	// first successful write (backends/fs): wait for the restarted agent's
	// first heartbeat, or a SIGTERM right after its poll stops it before
	// it ever wrote, and the debris check below would judge a promise
	// nobody made.
	if !waitUntil(10*time.Second, func() bool {
		s, err := f.a.GetSlot(ctx, "dr1")
		return err == nil && s.Heartbeat.After(began)
	}) {
		c.violation("the restarted agent never wrote its slot:\n%s", lastLines(pr.output(), 30))
	}
	if err := stop(pr, done); err != nil {
		c.violation("restarted agent stopped by SIGTERM: %v\n%s", err, lastLines(pr.output(), 30))
	}
	for _, v := range f.spoolViolations(true) {
		c.violation("after the restarted agent stopped, in the spool: %s", v)
	}
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// An agent stopped by SIGTERM at any moment of its start (reading the
// identity, locking the spool, the first poll) exits 0, as documented,
// never 3 ("context canceled"). A SIGTERM before the Go runtime installs
// its handler kills it by the signal, which service managers also read
// as a clean stop.
func TestAgentEarlySIGTERM(t *testing.T) {
	w := testenv.NewWorkdir(t)
	tg := fsTarget(t, w)
	f := newFollower(t, w, tg, newChecker(tg))
	rng := rngFor(t)
	bad := 0
	for i := 0; i < 40; i++ {
		pr := f.agent()
		if err := pr.cmd.Start(); err != nil {
			t.Fatal(err)
		}
		timer := time.AfterFunc(randDelay(rng, 30*time.Millisecond), func() { _ = pr.cmd.Process.Signal(syscall.SIGTERM) })
		err := pr.cmd.Wait()
		timer.Stop()
		var ee *exec.ExitError
		switch {
		case err == nil:
		case errors.As(err, &ee) && ee.Sys().(syscall.WaitStatus).Signaled() && ee.Sys().(syscall.WaitStatus).Signal() == syscall.SIGTERM:
		default:
			bad++
			t.Errorf("agent stopped while starting: %v\n%s", err, lastLines(pr.output(), 5))
		}
	}
	t.Logf("40 early SIGTERMs, %d wrong exits", bad)
}
