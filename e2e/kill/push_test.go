package kill

import (
	"context"
	"errors"
	"fmt"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/walship/walship/internal/testenv"
)

// pushSegSize: big enough that reading, sealing and writing are a real part
// of a push, small enough for hundreds of pushes in seconds.
const pushSegSize = 4 << 20

func TestKillPushFilesystem(t *testing.T) { onFilesystem(t, killPush) }

func TestKillPushS3(t *testing.T) { onS3(t, killPush) }

// pusher makes segments in a pg_wal directory and pushes them.
type pusher struct {
	t      *testing.T
	w      *testenv.Workdir
	tg     target
	k      *checker
	rng    *rand.Rand
	walDir string
	next   uint64
}

func newPusher(t *testing.T, w *testenv.Workdir, tg target, k *checker) *pusher {
	return &pusher{t: t, w: w, tg: tg, k: k, rng: rngFor(t), walDir: w.Mkdir(t, "pg_wal"), next: 1}
}

// segment writes the next segment and returns its path and archive key.
func (p *pusher) segment() (string, string) {
	name := segName(p.next, pushSegSize)
	p.next++
	b := makeSegment(name, pushSegSize, p.rng)
	path := filepath.Join(p.walDir, name)
	if err := os.WriteFile(path, b, 0o600); err != nil {
		p.t.Fatal(err)
	}
	p.w.Chown(p.t, path)
	key := "wal/00000001/" + name
	p.k.want[key] = b
	return path, key
}

func (p *pusher) push(path string) *proc {
	return walship(p.w, p.tg.env, "push", "--archive", p.tg.url, path)
}

// timedPush pushes a new segment to its end and returns how long it took;
// a push that fails fails the test.
func (p *pusher) timedPush() time.Duration {
	path, _ := p.segment()
	pr := p.push(path)
	d, err := timed(pr)
	if err != nil {
		p.t.Fatalf("push: %v\n%s", err, pr.output())
	}
	return d
}

func killPush(t *testing.T, w *testenv.Workdir, tg target) {
	ctx := context.Background()
	c := newTally(t)
	k := newChecker(tg)
	p := newPusher(t, w, tg, k)
	op := p.timedPush
	op() // the first push claims the archive's identity
	var longest time.Duration
	for i := 0; c.kills < iterations() && i < 3*iterations(); i++ {
		if i%remeasureEvery == 0 {
			longest = measure(t, 5, op)
		}
		path, key := p.segment()
		delay := randDelay(p.rng, longest)
		c.what = fmt.Sprintf("iteration %d: push %s killed after %v", i, filepath.Base(path), delay)
		pr := p.push(path)
		killed, err := runKilled(pr, delay)
		switch {
		case killed:
			c.kills++
		case err != nil:
			c.violation("push ended by itself with %v before its kill:\n%s", err, pr.output())
		default:
			c.finished++
		}
		k.check(ctx, c) // nothing partial under a final name
		if len(tg.tempFiles(t)) > 0 {
			c.debris++
		}
		if killed {
			pr = p.push(path)
			if err := pr.cmd.Run(); err != nil {
				c.violation("re-run of the push: %v\n%s", err, pr.output())
			}
			c.reruns++
		}
		if _, err := tg.store.Stat(ctx, key); err != nil {
			c.violation("after the re-run %s is not archived: %v", key, err)
		}
		k.check(ctx, c)
		if left := tg.tempFiles(t); len(left) > 0 {
			c.violation("debris after the re-run: %v", left)
		}
	}
	// Every segment pushed is archived, whole, and nothing else is.
	n := 0
	for key := range k.want {
		if _, err := tg.store.Stat(ctx, key); err != nil {
			c.violation("%s is not archived at the end: %v", key, err)
		}
		n++
	}
	c.what = "the end"
	k.check(ctx, c)
	c.report(fmt.Sprintf(", %d segments of %d MiB", n, pushSegSize>>20))
}

// A FIFO named like WAL is refused at once with a local file error, exit
// 5; so are a directory and a socket.
func TestPushRefusesAFIFO(t *testing.T) {
	w := testenv.NewWorkdir(t)
	tg := fsTarget(t, w)
	dir := w.Mkdir(t, "pg_wal")
	fifo := filepath.Join(dir, "000000010000000000000042")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	sub := filepath.Join(dir, "000000010000000000000043")
	if err := os.Mkdir(sub, 0o700); err != nil {
		t.Fatal(err)
	}
	w.Chown(t, dir)
	for path, kind := range map[string]string{fifo: "named pipe", sub: "directory"} {
		pr := walship(w, tg.env, "push", "--archive", tg.url, path)
		began := time.Now()
		done, err := start(pr)
		if err != nil {
			t.Fatal(err)
		}
		select {
		case err = <-done:
		case <-time.After(10 * time.Second):
			_ = pr.cmd.Process.Kill()
			t.Fatalf("push of a %s still running after 10s (then killed: %v)", kind, <-done)
		}
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 5 {
			t.Errorf("push of a %s: %v, want exit status 5\n%s", kind, err, pr.output())
		}
		out := strings.TrimSpace(pr.output())
		if strings.Count(out, "\n") != 0 || !strings.Contains(out, kind) {
			t.Errorf("push of a %s: want one line naming it, got:\n%s", kind, out)
		}
		t.Logf("push of a %s refused in %v: %s", kind, time.Since(began).Round(time.Millisecond), out)
	}
}

// SIGTERM at any moment of a push ends it promptly: it dies by SIGTERM
// (what PostgreSQL expects of an interrupted archive_command) having
// removed its temporary file, or it had finished with 0. Either way
// nothing partial is archived and the re-run succeeds.
func TestPushSIGTERMFilesystem(t *testing.T) { onFilesystem(t, pushSIGTERM) }

func TestPushSIGTERMS3(t *testing.T) { onS3(t, pushSIGTERM) }

func pushSIGTERM(t *testing.T, w *testenv.Workdir, tg target) {
	ctx := context.Background()
	c := newTally(t)
	k := newChecker(tg)
	p := newPusher(t, w, tg, k)
	op := p.timedPush
	op()
	var longest time.Duration
	n, terms, worst := iterations()/2, 0, time.Duration(0)
	for i := 0; i < n; i++ {
		if i%remeasureEvery == 0 {
			longest = measure(t, 5, op)
		}
		path, _ := p.segment()
		delay := randDelay(p.rng, longest)
		c.what = fmt.Sprintf("iteration %d: push %s sent SIGTERM after %v", i, filepath.Base(path), delay)
		pr := p.push(path)
		done, err := start(pr)
		if err != nil {
			t.Fatal(err)
		}
		select {
		case err = <-done:
		case <-time.After(delay):
			_ = pr.cmd.Process.Signal(syscall.SIGTERM)
			sent := time.Now()
			select {
			case err = <-done:
				worst = max(worst, time.Since(sent))
			case <-time.After(5 * time.Second):
				_ = pr.cmd.Process.Kill()
				err = <-done
				c.violation("still running 5s after SIGTERM")
			}
		}
		var ee *exec.ExitError
		switch {
		case err == nil:
		case errors.As(err, &ee) && ee.Sys().(syscall.WaitStatus).Signaled() && ee.Sys().(syscall.WaitStatus).Signal() == syscall.SIGTERM:
			terms++
		default:
			c.violation("ended with %v, want 0 or death by SIGTERM:\n%s", err, pr.output())
		}
		k.check(ctx, c)
		if left := tg.tempFiles(t); len(left) > 0 {
			c.violation("a push stopped by SIGTERM left %v", left)
		}
		if err := p.push(path).cmd.Run(); err != nil {
			c.violation("re-run: %v", err)
		}
		c.reruns++
	}
	if terms == 0 {
		t.Errorf("no push was still running when its SIGTERM came: the test tested nothing")
	}
	line := fmt.Sprintf("kill tier %s: %d pushes sent SIGTERM, %d died by it, the rest had finished; slowest end after the signal %v; %d violations",
		t.Name(), n, terms, worst.Round(time.Millisecond), c.violations)
	t.Log(line)
	summaryMu.Lock()
	summary = append(summary, line)
	summaryMu.Unlock()
}
