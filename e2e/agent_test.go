package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/walship/walship/internal/testenv"
	"github.com/walship/walship/segment"
)

// bgWalship is a walship process running in the background.
type bgWalship struct {
	cmd  *exec.Cmd
	out  testenv.Output
	done chan struct{}
}

func (b *bgWalship) log() string { return b.out.String() }

func startWalship(t *testing.T, w *testenv.Workdir, env []string, args ...string) *bgWalship {
	t.Helper()
	b := &bgWalship{cmd: w.Command(env, walshipBin, args...), done: make(chan struct{})}
	b.cmd.Stdout, b.cmd.Stderr = &b.out, &b.out
	if err := b.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = b.cmd.Wait(); close(b.done) }()
	t.Cleanup(func() { b.stop(syscall.SIGKILL) })
	return b
}

// stop signals the process and waits for it to end.
func (b *bgWalship) stop(sig syscall.Signal) {
	select {
	case <-b.done:
		return
	default:
	}
	_ = b.cmd.Process.Signal(sig)
	select {
	case <-b.done:
	case <-time.After(30 * time.Second):
		_ = b.cmd.Process.Kill()
		<-b.done
	}
}

func metrics(t *testing.T, addr string) map[string]float64 {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		return nil
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	out := map[string]float64{}
	for _, line := range strings.Split(string(body), "\n") {
		if strings.HasPrefix(line, "walship_agent_") {
			f := strings.Fields(line)
			v, _ := strconv.ParseFloat(f[len(f)-1], 64)
			out[strings.TrimPrefix(f[0], "walship_agent_")] = v
		}
	}
	return out
}

func waitFor(t *testing.T, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	testenv.WaitFor(t, what, timeout, cond)
}

// agentFollower: an archive-only standby fed by walship agent under
// continuous load; the agent is killed and restarted; a segment the
// standby needs is deleted and the agent reports the rebuild
// (TestPGVersions runs it on every major). On the filesystem the standby's
// restore_command is walship fetch with WALSHIP_SPOOL in its environment;
// on S3 it is what restore --spool writes (mv from the spool, else walship
// fetch).
func agentFollower(t *testing.T, w *testenv.Workdir, target archiveTarget) {
	restoreSpool := strings.HasPrefix(target.url, "s3://")
	env := target.env
	primary, _ := archivingPrimary(t, w, target)
	pgbench := primary.Tool("pgbench")
	w.Run(t, nil, pgbench, append(primary.ConnArgs(), "-i", "-s", "2", "-q", "postgres")...)
	id := strings.TrimSpace(mustWalship(t, w, pgEnv(primary, env), "backup", "push", "--archive", target.url, "--checkpoint", "fast"))
	mustWalship(t, w, env, "slot", "create", "--archive", target.url, "--ttl", "1h", "dr1")

	spool := w.Mkdir(t, "spool")
	sb := testenv.EmptyCluster(t, w, "follower")
	restoreArgs := []string{"restore", "--archive", target.url, "--pgdata", sb.Data, "--standby", "--archive-mode", "off",
		"--slot", "dr1", "--tablespace-mapping", filepath.Join(w.Dir, "ts1") + "=" + filepath.Join(w.Dir, "follower-ts1")}
	if restoreSpool {
		mustWalship(t, w, env, append(restoreArgs, "--spool", spool)...)
		conf, err := os.ReadFile(filepath.Join(sb.Data, "postgresql.auto.conf"))
		if err != nil || !strings.Contains(string(conf), "restore_command = '[ -f "+spool+"/%f ] && [ ! -h "+spool+"/%f ] && mv -f "+spool+"/%f %p 2>/dev/null || ") {
			t.Fatalf("restore --spool wrote no mv-first restore_command (%v):\n%s", err, conf)
		}
		sb.Env = env
	} else {
		mustWalship(t, w, env, restoreArgs...)
		sb.Env = append([]string{"WALSHIP_SPOOL=" + spool}, env...)
	}
	sb.Configure(t, map[string]string{"wal_retrieve_retry_interval": "100ms"})

	metricsAddr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	agentArgs := []string{"agent", "--archive", target.url, "--spool", spool, "--slot", "dr1",
		"--standby", fmt.Sprintf("host=%s port=%d user=postgres dbname=postgres", w.Dir, sb.Port),
		"--poll-min", "50ms", "--poll-max", "500ms", "--heartbeat", "500ms", "--ahead", "8", "--metrics-addr", metricsAddr, "--log-level", "debug"}
	agent := startWalship(t, w, env, agentArgs...)

	// Continuous load with switches: segments keep arriving.
	load := func(seconds int) float64 {
		cmd := w.Command(nil, pgbench, append(primary.ConnArgs(), "-n", "-c", "2", "-T", strconv.Itoa(seconds), "postgres")...)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(time.Duration(seconds) * time.Second)
		maxLag := 0.0
		for time.Now().Before(deadline) {
			primary.SQL(t, "SELECT pg_switch_wal()")
			if m := metrics(t, metricsAddr); m != nil && m["lag_segments"] > maxLag {
				maxLag = m["lag_segments"]
			}
			time.Sleep(500 * time.Millisecond) // pacing the load, not synchronisation
		}
		_ = cmd.Wait()
		t.Logf("largest lag seen while loading: %.0f segments", maxLag)
		return maxLag
	}
	caughtUp := func(what string) {
		t.Helper()
		switchAndWait(t, primary)
		end := primary.SQL(t, "SELECT pg_current_wal_lsn()")
		sb.WaitSQL(t, "SELECT pg_last_wal_replay_lsn() >= '"+end+"'::pg_lsn - 16777216", "t", 2*time.Minute)
		t.Logf("%s: standby caught up to %s", what, end)
	}
	// The standby starts behind: the agent fills the spool from the
	// slot's position (the backup's start) while the primary writes.
	load(6)
	waitFor(t, "the agent to fill the spool", time.Minute, func() bool {
		m := metrics(t, metricsAddr)
		return m != nil && m["spool_files"] >= 6
	})
	sb.Start(t)
	load(4)
	caughtUp("with the agent")
	waitFor(t, "metrics: at least 3 segments downloaded and taken from the spool", 30*time.Second, func() bool {
		m := metrics(t, metricsAddr)
		return m != nil && m["downloads_total"] >= 3 && m["taken_total"] >= 3 && m["last_poll_timestamp_seconds"] != 0
	})
	if fromSpool := strings.Count(sb.Log(), "fetched from spool"); !restoreSpool && fromSpool < 3 {
		t.Fatalf("only %d segments came from the spool through walship fetch\n%s\n%s", fromSpool, sb.Log(), agent.log())
	}
	replayLSN, err := segment.ParseLSN(sb.SQL(t, "SELECT pg_last_wal_replay_lsn()"))
	if err != nil {
		t.Fatal(err)
	}
	replaySeg := replayLSN.SegNo(16 << 20)
	waitFor(t, "the slot to follow replay", 30*time.Second, func() bool {
		out, _, _ := runWalship(t, w, env, "slot", "list", "--archive", target.url, "--json")
		var rows []struct{ Position, Replayed string }
		if json.Unmarshal([]byte(out), &rows) != nil || len(rows) != 1 || rows[0].Position == "" {
			return false
		}
		n, err := segment.ParseName(rows[0].Replayed, 16<<20)
		return err == nil && n.SegNo >= replaySeg
	})

	// Kill the agent: the standby keeps replaying through direct fetches.
	agent.stop(syscall.SIGKILL)
	before := strings.Count(sb.Log(), "msg=fetched ")
	load(3)
	caughtUp("without the agent")
	if direct := strings.Count(sb.Log(), "msg=fetched ") - before; direct < 1 {
		t.Fatalf("no direct fetches while the agent was down")
	}

	// Restart: it resumes and the spool feeds the standby again. Wait for
	// its first poll before the load: a loaded machine otherwise lets the
	// standby fetch every new segment itself before the agent has begun.
	agent = startWalship(t, w, env, agentArgs...)
	waitFor(t, "the restarted agent's first poll", 30*time.Second, func() bool {
		m := metrics(t, metricsAddr)
		return m != nil && m["last_poll_timestamp_seconds"] != 0
	})
	if lag := load(5); lag > 6 {
		t.Errorf("a caught-up standby fell %.0f segments behind the archive head under load", lag)
	}
	caughtUp("after the restart")
	waitFor(t, "a segment taken from the spool after the restart", 30*time.Second, func() bool {
		m := metrics(t, metricsAddr)
		return m != nil && m["taken_total"] >= 1
	})
	agent.stop(syscall.SIGTERM)
	if !strings.Contains(agent.log(), "agent stopped") || agent.cmd.ProcessState.ExitCode() != 0 {
		t.Errorf("agent did not stop cleanly on SIGTERM (exit %d):\n%s", agent.cmd.ProcessState.ExitCode(), agent.log())
	}
	if ents, _ := filepath.Glob(filepath.Join(spool, ".0*")); len(ents) != 0 {
		t.Errorf("partial files left in the spool: %v", ents)
	}

	// A segment the standby still needs disappears: the agent says so.
	sb.Stop()
	for i := 0; i < 4; i++ {
		commitBatch(t, primary, 1)
		switchAndWait(t, primary)
	}
	// A newer backup, taken after the segment that goes missing: the
	// one the report must name.
	id2 := strings.TrimSpace(mustWalship(t, w, pgEnv(primary, env), "backup", "push", "--archive", target.url, "--checkpoint", "fast"))
	next := primary.SQL(t, "SELECT pg_walfile_name(pg_current_wal_lsn() - 4 * 16777216)")
	if err := target.store.Delete(context.Background(), "wal/"+next[:8]+"/"+next); err != nil {
		t.Fatal(err)
	}
	agent = startWalship(t, w, env, agentArgs...)
	waitFor(t, "the agent to report the gone segment", time.Minute, func() bool {
		return strings.Contains(agent.log(), "is gone from the archive")
	})
	if !strings.Contains(agent.log(), "walship restore --standby --backup "+id2) {
		t.Errorf("the report does not name the rebuild command with backup %s (not %s, which needs the lost segment):\n%s", id2, id, agent.log())
	}
	waitFor(t, "the metric and the slot to show it", 30*time.Second, func() bool {
		m := metrics(t, metricsAddr)
		return m != nil && m["segment_gone"] == 1
	})
	// The agent writes the slot before it sets the metric; a failed slot
	// write is retried with the next heartbeat.
	var out string
	var code int
	waitFor(t, "walship status to report the gone segment (exit 8)", 30*time.Second, func() bool {
		out, _, code = runWalship(t, w, env, "status", "--archive", target.url)
		return code == 8 && strings.Contains(out, "gone from the archive")
	})
}

// spoolSeg names synthetic segment n (1 MiB segments, timeline 1).
func spoolSeg(n uint64) string { return segment.Name{TLI: 1, SegNo: n}.String(1 << 20) }

const spoolSysID = 7300000000000000042

// TestAgentSpoolTrust runs the walship binary the way a standby uses it,
// against a filesystem archive of synthetic segments (no PostgreSQL): the
// agent's published poll dies with the agent (SIGTERM, kill -9) and goes
// stale when it hangs (SIGSTOP); the agent refuses to run as root or as
// another user than the spool's owner; fetch --spool refuses a relative
// spool and takes only a good file, falling back to the archive otherwise.
func TestAgentSpoolTrust(t *testing.T) {
	w := testenv.NewWorkdir(t)
	target := fsTarget(t, w)
	segs := w.Mkdir(t, "segs")
	push := func(n uint64) {
		t.Helper()
		p := testenv.WriteSegment(t, segs, spoolSeg(n), spoolSysID, nil)
		w.Chown(t, p)
		mustWalship(t, w, nil, "push", "--archive", target.url, p)
	}
	for n := uint64(2); n <= 4; n++ {
		push(n)
	}
	// A slot never advanced: the agent follows new WAL from the head.
	mustWalship(t, w, nil, "slot", "create", "--archive", target.url, "dr")
	dest := filepath.Join(w.Dir, "RECOVERYXLOG")
	fetch := func(spool string, n uint64) (int, string) {
		_ = os.Remove(dest)
		_, errs, code := runWalship(t, w, nil, "fetch", "--archive", target.url, "--spool", spool, "--log-level", "debug", spoolSeg(n), dest)
		return code, errs
	}
	fromPoll := "per the agent's last poll"
	agent := func(spool string, pollMin, pollMax string) *bgWalship {
		return startWalship(t, w, nil, "agent", "--archive", target.url, "--spool", spool, "--slot", "dr",
			"--poll-min", pollMin, "--poll-max", pollMax, "--log-level", "debug")
	}
	// caughtUp waits until the agent's poll answers for segment n.
	caughtUp := func(spool string, n uint64, ag *bgWalship) {
		t.Helper()
		waitFor(t, "fetch answering absent from the agent's poll", 30*time.Second, func() bool {
			code, errs := fetch(spool, n)
			return code == 1 && strings.Contains(errs, fromPoll)
		})
	}
	next := uint64(5)

	// A stopped or killed agent: the next fetch of a segment pushed
	// meanwhile comes from the archive at once. The poll interval is long
	// (1s doubling to 1m), so a poll left behind would still look fresh.
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL} {
		spool := w.Mkdir(t, "spool-"+sig.String())
		ag := agent(spool, "1s", "1m")
		caughtUp(spool, next, ag)
		ag.stop(sig)
		if sig == syscall.SIGTERM && ag.cmd.ProcessState.ExitCode() != 0 {
			t.Fatalf("agent exit %d on SIGTERM:\n%s", ag.cmd.ProcessState.ExitCode(), ag.log())
		}
		push(next)
		code, errs := fetch(spool, next)
		if code != 0 || strings.Contains(errs, fromPoll) {
			t.Fatalf("after %s, fetch of a segment pushed meanwhile: exit %d\n%s", sig, code, errs)
		}
		next++
	}

	// A hung agent still holds its lock; its poll is trusted for two poll
	// intervals (here at most 2 x 400ms), then fetch asks the archive.
	spool := w.Mkdir(t, "spool-stopped")
	ag := agent(spool, "100ms", "400ms")
	caughtUp(spool, next, ag)
	if err := ag.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	stopped := time.Now()
	push(next)
	waitFor(t, "fetch to stop trusting the hung agent's poll", 20*time.Second, func() bool {
		code, _ := fetch(spool, next)
		return code == 0
	})
	if took := time.Since(stopped); took > 5*time.Second {
		t.Errorf("a hung agent's poll was trusted for %s, poll-max 400ms", took)
	} else {
		t.Logf("a hung agent's poll (poll-max 400ms) was trusted for %s after SIGSTOP", took.Round(time.Millisecond))
	}
	_ = ag.cmd.Process.Signal(syscall.SIGCONT)
	ag.stop(syscall.SIGTERM)
	next++

	spoolRefusals(t, w, target, spool, fetch)
	spoolBadFiles(t, w, spool, segs, push, fetch, next)
}

// spoolRefusals: the agent refuses root and a spool of another user; fetch
// and agent refuse a relative spool. Each is one line and status 2.
func spoolRefusals(t *testing.T, w *testenv.Workdir, target archiveTarget, spool string, fetch func(string, uint64) (int, string)) {
	oneLine := func(what, errs, want string, code int) {
		t.Helper()
		if code != 2 || !strings.Contains(errs, want) || strings.Count(strings.TrimSpace(errs), "\n") != 0 {
			t.Errorf("%s: exit %d, want 2 and one line with %q:\n%s", what, code, want, errs)
		}
	}
	if os.Geteuid() == 0 {
		cmd := exec.Command(walshipBin, "agent", "--archive", target.url, "--spool", spool, "--slot", "dr")
		var errb bytes.Buffer
		cmd.Stderr = &errb
		_ = cmd.Run()
		oneLine("agent as root", errb.String(), "must not run as root", cmd.ProcessState.ExitCode())
		// A spool root owns, and an agent run as the standby's user.
		rootSpool := t.TempDir()
		_ = os.Chmod(filepath.Dir(rootSpool), 0o755)
		_, errs, code := runWalship(t, w, nil, "agent", "--archive", target.url, "--spool", rootSpool, "--slot", "dr")
		oneLine("agent on a spool another user owns", errs, "is owned by root", code)
	}
	code, errs := fetch("relative/spool", 9)
	oneLine("fetch --spool relative", errs, "want an absolute directory", code)
	_, errs, code = runWalship(t, w, []string{"WALSHIP_SPOOL=relative/spool"}, "fetch", "--archive", target.url, spoolSeg(9), "x")
	oneLine("WALSHIP_SPOOL relative", errs, "want an absolute directory", code)
	_, errs, code = runWalship(t, w, nil, "agent", "--archive", target.url, "--spool", "relative/spool", "--slot", "dr")
	oneLine("agent --spool relative", errs, "want an absolute directory", code)
}

// spoolBadFiles: what fetch finds in the spool under a segment's name and
// must not hand over (a directory, a file root wrote 0600, a short file, a
// wrong header): fetch serves the archived segment instead.
func spoolBadFiles(t *testing.T, w *testenv.Workdir, spool, segs string, push func(uint64), fetch func(string, uint64) (int, string), next uint64) {
	bad := map[uint64]func(p string){
		next: func(p string) {
			if err := os.Mkdir(p, 0o700); err != nil {
				t.Fatal(err)
			}
			w.Chown(t, p)
		},
		next + 1: func(p string) { testenv.WriteSegment(t, spool, filepath.Base(p), spoolSysID, nil) }, // root's, 0600 (when root)
		next + 2: func(p string) {
			if err := os.WriteFile(p, make([]byte, 8192), 0o600); err != nil {
				t.Fatal(err)
			}
			w.Chown(t, p)
		},
		next + 3: func(p string) {
			testenv.WriteSegment(t, spool, filepath.Base(p), spoolSysID, func(b []byte) { b[8]++ })
			w.Chown(t, p)
		},
	}
	for n, make := range bad {
		push(n)
		make(filepath.Join(spool, spoolSeg(n)))
		code, errs := fetch(spool, n)
		if code != 0 || !strings.Contains(errs, "not taken") || !strings.Contains(errs, "msg=fetched ") {
			t.Errorf("%s, a bad file in the spool: exit %d\n%s", spoolSeg(n), code, errs)
			continue
		}
		got, err := os.ReadFile(filepath.Join(w.Dir, "RECOVERYXLOG"))
		want, _ := os.ReadFile(filepath.Join(segs, spoolSeg(n)))
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("%s: fetch wrote other bytes than the archived segment (%v)", spoolSeg(n), err)
		}
	}
}
