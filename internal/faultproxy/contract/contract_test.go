package contract

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/walship/walship/backends"
	"github.com/walship/walship/backends/s3"
	"github.com/walship/walship/internal/faultproxy"
	"github.com/walship/walship/internal/testenv"
	"github.com/walship/walship/sealed"
)

const sysID = 7300000000000000001

var walshipBin string

func TestMain(m *testing.M) {
	os.Exit(testenv.WalshipMain(func(bin string) int {
		walshipBin = bin
		return m.Run()
	}))
}

// rig is an archive in versitygw reached by walship through the proxy, and
// the same bucket reached directly to check what the server really holds.
type rig struct {
	proxy  *faultproxy.Proxy
	direct *s3.Storage
	prefix string
	env    []string
	dir    string // working directory: segments and fetched files
}

func newRig(t *testing.T, seed uint64, extraEnv ...string) *rig {
	t.Helper()
	srv := testenv.StartS3(t)
	p, err := faultproxy.Start(faultproxy.Options{Upstream: srv.Endpoint, SecretKey: srv.SecretKey, Seed: seed})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })
	bucket := testenv.RandName("contract")
	creds := []string{"AWS_ACCESS_KEY_ID=" + srv.AccessKey, "AWS_SECRET_ACCESS_KEY=" + srv.SecretKey,
		"AWS_EC2_METADATA_DISABLED=true", "AWS_CONFIG_FILE=/dev/null", "AWS_SHARED_CREDENTIALS_FILE=/dev/null"}
	for _, kv := range creds {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
	prefix := testenv.RandName("p")
	direct, err := s3.New(context.Background(), s3.Config{Bucket: bucket, Prefix: prefix, Endpoint: srv.Endpoint,
		Region: srv.Region, PathStyle: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := direct.CreateBucket(context.Background()); err != nil {
		t.Fatal(err)
	}
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "WALSHIP_") {
			env = append(env, kv)
		}
	}
	env = append(env, "WALSHIP_ARCHIVE=s3://"+bucket+"/"+prefix, "WALSHIP_S3_ENDPOINT="+p.URL(),
		"WALSHIP_S3_PATH_STYLE=true", "WALSHIP_S3_REGION="+srv.Region, "WALSHIP_STALL_TIMEOUT=1s")
	env = append(env, extraEnv...)
	return &rig{proxy: p, direct: direct, prefix: prefix, env: env, dir: t.TempDir()}
}

type result struct {
	code    int
	elapsed time.Duration
	stderr  string
}

// run runs walship in the rig's directory. A run that outlives cap is
// killed and fails the test: a command that does not return is the bug.
func (r *rig) run(t *testing.T, limit time.Duration, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	cmd := exec.CommandContext(ctx, walshipBin, args...)
	cmd.Dir, cmd.Env = r.dir, r.env
	res, err := runCmd(cmd)
	var ee *exec.ExitError
	switch {
	case err == nil:
	case ctx.Err() != nil:
		t.Fatalf("walship %v did not return within %s:\n%s", args, limit, res.stderr)
	case errors.As(err, &ee):
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			t.Fatalf("walship %v died by %s", args, ws.Signal())
		}
	default:
		t.Fatal(err)
	}
	return res
}

// runCmd runs cmd and returns its exit status, how long it took and its
// stderr; err is nil, an *exec.ExitError (whose status res has) or why it
// did not run.
func runCmd(cmd *exec.Cmd) (res result, err error) {
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	start := time.Now()
	err = cmd.Run()
	res = result{elapsed: time.Since(start), stderr: stderr.String()}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		res.code = ee.ExitCode()
	}
	return res, err
}

func segName(n int) string { return fmt.Sprintf("00000001%08X%08X", n/4096, n%4096) }

func key(name string) string { return "wal/00000001/" + name }

// stored is what the server holds under the segment's key, decompressed
// and verified, or an error.
func (r *rig) stored(name string) ([]byte, error) {
	rc, _, err := r.direct.Get(context.Background(), key(name))
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	sr, err := sealed.NewReader(rc)
	if err != nil {
		return nil, err
	}
	defer sr.Close()
	return io.ReadAll(sr)
}

func (r *rig) write(t *testing.T, name string, mutate func([]byte)) ([]byte, string) {
	t.Helper()
	p := testenv.WriteSegment(t, r.dir, name, sysID, mutate)
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b, p
}

// pushed writes segment name into the rig's directory, pushes it through
// the proxy and returns its bytes; a push that fails fails the test.
func (r *rig) pushed(t *testing.T, name string) []byte {
	t.Helper()
	b, path := r.write(t, name, nil)
	if res := r.run(t, time.Minute, "push", path); res.code != 0 {
		t.Fatalf("push %s: %d\n%s", name, res.code, res.stderr)
	}
	return b
}

type figures struct {
	runs, failed, falseSuccess, falseAbsent int
	worst                                   time.Duration
}

func (f *figures) took(d time.Duration) { f.worst = max(f.worst, d) }

func (f figures) log(t *testing.T, p *faultproxy.Proxy) {
	t.Logf("FIGURES %s: runs=%d faults_injected=%d failed_runs=%d false_successes=%d false_absent=%d worst_return=%s",
		t.Name(), f.runs, p.Injected(0), f.failed, f.falseSuccess, f.falseAbsent, f.worst.Round(10*time.Millisecond))
	if f.falseSuccess != 0 || f.falseAbsent != 0 {
		t.Errorf("%d false successes, %d false absents: both must be 0", f.falseSuccess, f.falseAbsent)
	}
}

// pushFaults hit every kind of request a push makes: the identity and head
// reads, the previous segment's HEAD, the segment's and head's PUTs.
var pushFaults = []faultproxy.Rule{
	{Method: "PUT", Probability: 0.08, Fault: faultproxy.ServerError},
	{Method: "PUT", Probability: 0.08, Fault: faultproxy.ServerErrorAfter},
	{Method: "PUT", Probability: 0.08, Fault: faultproxy.SlowDown},
	{Method: "PUT", Probability: 0.05, Fault: faultproxy.Reset, After: -1},
	{Method: "PUT", Probability: 0.03, Fault: faultproxy.Stall, After: -1},
	{Method: "PUT", Probability: 0.05, Fault: faultproxy.Latency, Delay: 200 * time.Millisecond},
	{Method: "GET", Probability: 0.05, Fault: faultproxy.ServerError},
	{Method: "GET", Probability: 0.05, Fault: faultproxy.Reset, After: 10},
	{Method: "GET", Probability: 0.05, Fault: faultproxy.Truncate, After: 10},
	{Method: "GET", Probability: 0.03, Fault: faultproxy.Stall, After: 10},
	{Method: "GET", Probability: 0.03, Fault: faultproxy.HTML404},
	// A re-push compares with the archived object's sealed header, whose
	// CRC catches a byte flipped in transit.
	{Method: "GET", Key: "/wal/", Probability: 0.1, Fault: faultproxy.Corrupt, After: 20},
	{Method: "HEAD", Probability: 0.05, Fault: faultproxy.SlowDown},
}

// Push exits 0 only when the object is intact in the server; otherwise it
// fails with 3, and PostgreSQL runs it again. Never 4 for a file that is
// identical to what is archived.
func TestContractPushUnderFaults(t *testing.T) {
	r := newRig(t, 11)
	r.proxy.SetRules(pushFaults...)
	var f figures
	const segments = 40
	local := map[string][]byte{}
	for i := 1; i <= segments; i++ {
		name := segName(i)
		b, path := r.write(t, name, nil)
		local[name] = b
		pushes := []string{path}
		if i%3 == 0 {
			// A re-push of an archived segment, as after a crash.
			pushes = append(pushes, filepath.Join(r.dir, segName(i-2)))
		}
		for _, p := range pushes {
			for try := 1; ; try++ {
				res := r.run(t, 2*time.Minute, "push", "--timeout", "60s", p)
				f.runs++
				f.took(res.elapsed)
				if res.code == 0 {
					if got, err := r.stored(filepath.Base(p)); err != nil || !bytes.Equal(got, local[filepath.Base(p)]) {
						f.falseSuccess++
						t.Errorf("push %s exited 0 but the server holds %d bytes (%v)", p, len(got), err)
					}
					break
				}
				if res.code != 3 {
					t.Fatalf("push %s: status %d, want 0 or 3:\n%s", p, res.code, res.stderr)
				}
				f.failed++
				if try == 10 {
					t.Fatalf("push %s failed 10 times:\n%s", p, res.stderr)
				}
			}
		}
	}
	f.log(t, r.proxy)
	if r.proxy.Injected(0) < segments {
		t.Fatalf("only %d faults injected", r.proxy.Injected(0))
	}
}

var fetchFaults = []faultproxy.Rule{
	{Method: "GET", Probability: 0.07, Fault: faultproxy.ServerError},
	{Method: "GET", Probability: 0.07, Fault: faultproxy.SlowDown},
	{Method: "GET", Probability: 0.07, Fault: faultproxy.Reset, After: 100},
	{Method: "GET", Probability: 0.07, Fault: faultproxy.Truncate, After: 100},
	{Method: "GET", Probability: 0.04, Fault: faultproxy.Stall, After: 100},
	{Method: "GET", Probability: 0.07, Fault: faultproxy.Corrupt, After: 300},
	{Method: "GET", Probability: 0.05, Fault: faultproxy.HTML404},
	{Method: "GET", Probability: 0.05, Fault: faultproxy.Latency, Delay: 200 * time.Millisecond},
}

// Fetch never exits 0 with wrong bytes, and never 1 unless the file is
// absent.
func TestContractFetchUnderFaults(t *testing.T) {
	r := newRig(t, 12)
	const present = 12
	local := map[string][]byte{}
	for i := 1; i <= present; i++ {
		name := segName(i)
		local[name] = r.pushed(t, name)
	}
	r.proxy.SetRules(fetchFaults...)
	var f figures
	for i := range 60 {
		name := segName(1 + i%present)
		if i%4 == 3 {
			name = segName(1000 + i) // absent
		}
		dest := filepath.Join(r.dir, "RECOVERYXLOG")
		_ = os.Remove(dest)
		res := r.run(t, 2*time.Minute, "fetch", "--timeout", "60s", name, dest)
		f.runs++
		f.took(res.elapsed)
		got, readErr := os.ReadFile(dest)
		want, isPresent := local[name]
		switch res.code {
		case 0:
			if !isPresent || readErr != nil || !bytes.Equal(got, want) {
				f.falseSuccess++
				t.Errorf("fetch %s exited 0 with %d wrong bytes (present %v)", name, len(got), isPresent)
			}
		case 1:
			if isPresent {
				f.falseAbsent++
				t.Errorf("fetch %s exited 1 (absent) but it is archived:\n%s", name, res.stderr)
			}
		case 3, 4:
			f.failed++
		default:
			t.Errorf("fetch %s: status %d:\n%s", name, res.code, res.stderr)
		}
		if res.code != 0 && readErr == nil {
			t.Errorf("failed fetch %s left a file at DEST", name)
		}
	}
	f.log(t, r.proxy)
}

// A proxy's HTML 404 is never "absent", not for an archived file and not
// for a missing one: during a point-in-time recovery that would end the
// recovery early. There it is 131 (3 + 128), which stops PostgreSQL.
func TestContractHTML404IsNeverAbsent(t *testing.T) {
	r := newRig(t, 13)
	r.pushed(t, segName(1))
	r.proxy.SetRules(faultproxy.Rule{Method: "GET", Key: "/wal/", Fault: faultproxy.HTML404})
	var f figures
	for _, name := range []string{segName(1), segName(2)} {
		res := r.run(t, time.Minute, "fetch", name, filepath.Join(r.dir, "x"))
		f.runs++
		f.took(res.elapsed)
		if res.code != 3 {
			t.Errorf("fetch %s behind an HTML 404: status %d, want 3:\n%s", name, res.code, res.stderr)
		}
	}
	if err := os.WriteFile(filepath.Join(r.dir, "recovery.signal"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	res := r.run(t, time.Minute, "fetch", segName(2), filepath.Join(r.dir, "x"))
	f.runs++
	if res.code != 131 {
		t.Errorf("during a recovery: status %d, want 131:\n%s", res.code, res.stderr)
	}
	f.log(t, r.proxy)
}

// Every command returns within its deadline when the server stalls: a
// body that stops after its headers, or no answer at all.
func TestContractStallsReturnWithinBound(t *testing.T) {
	r := newRig(t, 14)
	r.pushed(t, segName(1))
	_, path2 := r.write(t, segName(2), nil)
	var f figures
	cases := []struct {
		name  string
		rule  faultproxy.Rule
		args  []string
		bound time.Duration
	}{
		// 5 tries of 1s each, and the backoff between them.
		{"fetch, body stalls", faultproxy.Rule{Method: "GET", Key: "/wal/", Fault: faultproxy.Stall, After: 100},
			[]string{"fetch", segName(1), "x"}, 15 * time.Second},
		{"fetch, no answer", faultproxy.Rule{Method: "GET", Key: "/wal/", Fault: faultproxy.Stall, After: -1},
			[]string{"fetch", segName(1), "x"}, 15 * time.Second},
		{"fetch, --timeout first", faultproxy.Rule{Method: "GET", Key: "/wal/", Fault: faultproxy.Stall, After: 100},
			[]string{"fetch", "--timeout", "2s", segName(1), "x"}, 4 * time.Second},
		{"push, identity read stalls", faultproxy.Rule{Method: "GET", Key: "identity.json", Fault: faultproxy.Stall, After: 20},
			[]string{"push", path2}, 15 * time.Second},
		{"push, --timeout first", faultproxy.Rule{Method: "GET", Key: "identity.json", Fault: faultproxy.Stall, After: 20},
			[]string{"push", "--timeout", "2s", path2}, 4 * time.Second},
		{"push, PUT unanswered", faultproxy.Rule{Method: "PUT", Key: "/wal/", Fault: faultproxy.Stall, After: -1},
			[]string{"push", path2}, 20 * time.Second},
		{"status, listing stalls", faultproxy.Rule{Method: "GET", Query: "list-type", Fault: faultproxy.Stall, After: 30},
			[]string{"status", "--timeout", "3s"}, 5 * time.Second},
	}
	for _, tc := range cases {
		r.proxy.SetRules(tc.rule)
		before := r.proxy.Injected(0)
		res := r.run(t, time.Minute, tc.args...)
		f.runs++
		f.took(res.elapsed)
		if res.code != 3 {
			t.Errorf("%s: status %d, want 3:\n%s", tc.name, res.code, res.stderr)
		}
		if res.elapsed > tc.bound {
			t.Errorf("%s: returned after %s, bound %s", tc.name, res.elapsed, tc.bound)
		}
		if r.proxy.Injected(0) == before {
			t.Errorf("%s: no stall injected", tc.name)
		}
		if strings.Contains(strings.Join(tc.args, " "), "--timeout") && !strings.Contains(res.stderr, "timeout passed") {
			t.Errorf("%s: the error does not say the timeout passed:\n%s", tc.name, res.stderr)
		}
		t.Logf("%s: status %d after %s", tc.name, res.code, res.elapsed.Round(10*time.Millisecond))
	}
	f.log(t, r.proxy)
}

// One fetch makes at most the policy's attempts GETs of the file: retries
// happen in one place, not in the SDK, Fetch and the caller each.
func TestContractOneFetchAtMostAttemptsGETs(t *testing.T) {
	r := newRig(t, 15, "WALSHIP_S3_MAX_ATTEMPTS=3")
	b := r.pushed(t, segName(1))
	for _, tc := range []struct {
		rule faultproxy.Rule
		code int
	}{
		{faultproxy.Rule{Method: "GET", Key: key(segName(1)), Fault: faultproxy.ServerError}, 3},
		{faultproxy.Rule{Method: "GET", Key: key(segName(1)), Fault: faultproxy.Reset, After: 500}, 3},
		{faultproxy.Rule{Method: "GET", Key: key(segName(1)), Fault: faultproxy.Corrupt, After: 500}, 4},
		{faultproxy.Rule{Method: "GET", Key: key(segName(1)), Fault: faultproxy.Corrupt, After: 500, Times: 2}, 0},
	} {
		r.proxy.SetRules(tc.rule)
		before := r.proxy.Count("GET", key(segName(1)))
		dest := filepath.Join(r.dir, "RECOVERYXLOG")
		_ = os.Remove(dest)
		res := r.run(t, time.Minute, "fetch", segName(1), dest)
		gets := r.proxy.Count("GET", key(segName(1))) - before
		if res.code != tc.code || gets != 3 {
			t.Errorf("%s: status %d after %d GETs, want %d after 3:\n%s", tc.rule.Fault, res.code, gets, tc.code, res.stderr)
		}
		if res.code == 0 {
			if got, _ := os.ReadFile(dest); !bytes.Equal(got, b) {
				t.Error("fetched bytes differ")
			}
		}
	}
}

// Against a server that ignores If-None-Match (the proxy strips it), push
// still refuses a different file under an archived name (4) and accepts
// the same file (0), and warns at start.
func TestContractIfNoneMatchIgnored(t *testing.T) {
	r := newRig(t, 16)
	r.proxy.SetRules(faultproxy.Rule{Fault: faultproxy.StripIfNoneMatch})
	name := segName(3)
	first, path := r.write(t, name, nil)
	res := r.run(t, time.Minute, "push", path)
	if res.code != 0 {
		t.Fatalf("first push: %d\n%s", res.code, res.stderr)
	}
	rc, _, err := r.direct.Get(context.Background(), "identity.json")
	if err != nil {
		t.Fatal(err)
	}
	var id map[string]any
	err = json.NewDecoder(rc).Decode(&id)
	rc.Close()
	if err != nil || id["conditional_writes"] != false {
		t.Fatalf("identity.json conditional_writes = %v (%v), want false", id["conditional_writes"], err)
	}
	r.write(t, name, func(b []byte) { b[7000] ^= 0x55 })
	res = r.run(t, time.Minute, "push", path)
	if res.code != 4 || !strings.Contains(res.stderr, "does not enforce conditional writes") {
		t.Fatalf("different file: status %d, want 4, with the warning:\n%s", res.code, res.stderr)
	}
	if got, err := r.stored(name); err != nil || !bytes.Equal(got, first) {
		t.Fatalf("the archived segment changed (%v)", err)
	}
	r.write(t, name, nil)
	if res = r.run(t, time.Minute, "push", path); res.code != 0 {
		t.Fatalf("same file again: %d\n%s", res.code, res.stderr)
	}
	dest := filepath.Join(r.dir, "RECOVERYXLOG")
	if res = r.run(t, time.Minute, "fetch", name, dest); res.code != 0 {
		t.Fatalf("fetch: %d\n%s", res.code, res.stderr)
	}
	if got, _ := os.ReadFile(dest); !bytes.Equal(got, first) {
		t.Fatal("fetched bytes differ from the first file")
	}
	if n := r.proxy.Injected(faultproxy.StripIfNoneMatch); n < 2 {
		t.Fatalf("If-None-Match stripped %d times", n)
	}
	_ = backends.ErrExists
}
