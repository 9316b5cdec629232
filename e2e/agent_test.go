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
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/walship/walship/internal/testenv"
	"github.com/walship/walship/segment"
)

// bgWalship is a walship process running in the background.
type bgWalship struct {
	cmd  *exec.Cmd
	mu   sync.Mutex
	out  bytes.Buffer
	done chan struct{}
}

func (b *bgWalship) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.out.Write(p)
}

func (b *bgWalship) log() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.out.String()
}

func startWalship(t *testing.T, w *testenv.Workdir, env []string, args ...string) *bgWalship {
	t.Helper()
	b := &bgWalship{cmd: w.Command(env, walshipBin, args...), done: make(chan struct{})}
	b.cmd.Stdout, b.cmd.Stderr = b, b
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

// TestAgentFollower: an archive-only standby fed by walship agent under
// continuous load; the agent is killed and restarted; a segment the
// standby needs is deleted and the agent reports the rebuild.
// On the filesystem the standby's restore_command is walship fetch with
// WALSHIP_SPOOL in its environment; on S3 it is what restore --spool writes
// (mv from the spool, else walship fetch).
func TestAgentFollowerFilesystem(t *testing.T) {
	w := testenv.NewWorkdir(t)
	agentFollower(t, w, fsTarget(t, w), false)
}

func TestAgentFollowerS3(t *testing.T) {
	w := testenv.NewWorkdir(t)
	agentFollower(t, w, s3Target(t), true)
}

func agentFollower(t *testing.T, w *testenv.Workdir, target archiveTarget, restoreSpool bool) {
	env := target.env
	primary, _ := archivingPrimary(t, w, target)
	pgbench := filepath.Join(primary.Bin, "pgbench")
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
		if err != nil || !strings.Contains(string(conf), "restore_command = 'mv -f "+spool+"/%f %p 2>/dev/null || ") {
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

	// Restart: it resumes and the spool feeds the standby again.
	agent = startWalship(t, w, env, agentArgs...)
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
