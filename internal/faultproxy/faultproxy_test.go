package faultproxy_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"

	"github.com/walship/walship/internal/faultproxy"
)

// body is what the upstream serves for every GET: 64 KiB of a pattern.
var body = bytes.Repeat([]byte("0123456789abcdef"), 4096)

type upstream struct {
	mu  sync.Mutex
	got []*http.Request
}

func (u *upstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	_, _ = io.Copy(io.Discard, r.Body)
	u.mu.Lock()
	u.got = append(u.got, r.Clone(context.WithoutCancel(r.Context()))) // kept past the handler
	u.mu.Unlock()
	w.Header().Set("Content-Type", "application/octet-stream")
	if r.Method == http.MethodGet {
		_, _ = w.Write(body)
	}
}

func (u *upstream) requests() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return len(u.got)
}

func start(t *testing.T, rules ...faultproxy.Rule) (*faultproxy.Proxy, *upstream) {
	t.Helper()
	up := &upstream{}
	srv := httptest.NewServer(up)
	t.Cleanup(srv.Close)
	p, err := faultproxy.Start(faultproxy.Options{Upstream: srv.URL, SecretKey: "secret", Seed: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })
	p.SetRules(rules...)
	return p, up
}

// get fetches path through the proxy with a fresh connection each time
// and returns the answer's status (0 if there was none) and body.
func get(ctx context.Context, t *testing.T, p *faultproxy.Proxy, method, path string) (int, []byte, error) {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, method, p.URL()+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := client.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, b, err
}

func TestNoRulePassesThrough(t *testing.T) {
	p, up := start(t)
	status, b, err := get(context.Background(), t, p, "GET", "/bucket/wal/a")
	if err != nil || status != http.StatusOK || !bytes.Equal(b, body) {
		t.Fatalf("plain GET: %v, status %d, %d bytes", err, status, len(b))
	}
	if p.Injected(0) != 0 || p.Count("GET", "wal/a") != 1 || up.requests() != 1 {
		t.Fatalf("injected %d, counted %d, upstream saw %d", p.Injected(0), p.Count("GET", "wal/a"), up.requests())
	}
}

func TestErrorAnswers(t *testing.T) {
	for _, tc := range []struct {
		kind   faultproxy.Kind
		status int
		want   string
		absent string
	}{
		{faultproxy.ServerError, 500, "<Code>InternalError</Code>", ""},
		{faultproxy.SlowDown, 503, "<Code>SlowDown</Code>", ""},
		{faultproxy.HTML404, 404, "<html>", "NoSuchKey"},
	} {
		t.Run(tc.kind.String(), func(t *testing.T) {
			p, up := start(t, faultproxy.Rule{Method: "GET", Fault: tc.kind})
			status, b, err := get(context.Background(), t, p, "GET", "/bucket/k")
			if err != nil || status != tc.status || !strings.Contains(string(b), tc.want) {
				t.Fatalf("%v: status %d, body %q", err, status, b)
			}
			if tc.absent != "" && strings.Contains(string(b), tc.absent) {
				t.Fatalf("body has %q", tc.absent)
			}
			if up.requests() != 0 {
				t.Fatal("an error answer was forwarded")
			}
			if p.Injected(tc.kind) != 1 {
				t.Fatalf("injected %d", p.Injected(tc.kind))
			}
		})
	}
}

func TestServerErrorAfterForwards(t *testing.T) {
	p, up := start(t, faultproxy.Rule{Method: "PUT", Fault: faultproxy.ServerErrorAfter})
	status, _, err := get(context.Background(), t, p, "PUT", "/bucket/k")
	if err != nil || status != http.StatusInternalServerError || up.requests() != 1 {
		t.Fatalf("%v, status %d, upstream saw %d", err, status, up.requests())
	}
}

func TestResetAndTruncateMidBody(t *testing.T) {
	for _, tc := range []struct {
		kind  faultproxy.Kind
		check func(error) bool
	}{
		{faultproxy.Reset, func(err error) bool { return errors.Is(err, syscall.ECONNRESET) }},
		{faultproxy.Truncate, func(err error) bool { return errors.Is(err, io.ErrUnexpectedEOF) }},
	} {
		t.Run(tc.kind.String(), func(t *testing.T) {
			p, _ := start(t, faultproxy.Rule{Method: "GET", Fault: tc.kind, After: 1000})
			status, b, err := get(context.Background(), t, p, "GET", "/bucket/k")
			if err == nil || !tc.check(err) {
				t.Fatalf("read: %v", err)
			}
			if status != http.StatusOK || len(b) > 1000 || !bytes.Equal(b, body[:len(b)]) {
				t.Fatalf("status %d, %d bytes before the fault", status, len(b))
			}
		})
	}
}

func TestResetBeforeAnswer(t *testing.T) {
	p, up := start(t, faultproxy.Rule{Method: "PUT", Fault: faultproxy.Reset, After: -1})
	_, _, err := get(context.Background(), t, p, "PUT", "/bucket/k")
	if err == nil || up.requests() != 1 {
		t.Fatalf("%v, upstream saw %d", err, up.requests())
	}
}

func TestStallHoldsUntilClientGivesUp(t *testing.T) {
	p, _ := start(t, faultproxy.Rule{Method: "GET", Fault: faultproxy.Stall, After: 100})
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	status, b, err := get(ctx, t, p, "GET", "/bucket/k")
	if !errors.Is(err, context.DeadlineExceeded) || status != http.StatusOK || len(b) != 100 {
		t.Fatalf("stalled read: %v, %d bytes", err, len(b))
	}
	if el := time.Since(start); el < 300*time.Millisecond {
		t.Fatalf("returned after %s, before the client gave up", el)
	}
}

func TestCorruptFlipsOneByte(t *testing.T) {
	p, _ := start(t, faultproxy.Rule{Method: "GET", Fault: faultproxy.Corrupt, After: 5000})
	_, b, err := get(context.Background(), t, p, "GET", "/bucket/k")
	if err != nil || len(b) != len(body) {
		t.Fatal(err)
	}
	var diff []int
	for i := range b {
		if b[i] != body[i] {
			diff = append(diff, i)
		}
	}
	if len(diff) != 1 || diff[0] != 5000 {
		t.Fatalf("differing bytes at %v", diff)
	}
}

func TestLatency(t *testing.T) {
	p, _ := start(t, faultproxy.Rule{Fault: faultproxy.Latency, Delay: 200 * time.Millisecond})
	start := time.Now()
	_, b, err := get(context.Background(), t, p, "GET", "/bucket/k")
	if err != nil || !bytes.Equal(b, body) {
		t.Fatal(err)
	}
	if el := time.Since(start); el < 200*time.Millisecond {
		t.Fatalf("answered in %s", el)
	}
}

func TestEveryTimesProbabilityAndKey(t *testing.T) {
	p, _ := start(t,
		faultproxy.Rule{Method: "GET", Key: "wal/", Every: 3, Fault: faultproxy.ServerError},
		faultproxy.Rule{Method: "GET", Key: "once", Times: 1, Fault: faultproxy.SlowDown},
	)
	status := func(path string) int {
		code, _, err := get(context.Background(), t, p, "GET", path)
		if err != nil {
			t.Fatal(err)
		}
		return code
	}
	var got []int
	for range 6 {
		got = append(got, status("/bucket/wal/x"))
	}
	if want := []int{200, 200, 500, 200, 200, 500}; !slices.Equal(got, want) {
		t.Fatalf("every 3rd: %v, want %v", got, want)
	}
	if s1, s2 := status("/bucket/once"), status("/bucket/once"); s1 != 503 || s2 != 200 {
		t.Fatalf("times 1: %d then %d", s1, s2)
	}
	if p.Injected(faultproxy.ServerError) != 2 || p.Injected(faultproxy.SlowDown) != 1 || p.Injected(0) != 3 {
		t.Fatalf("counts: %d, %d, %d", p.Injected(faultproxy.ServerError), p.Injected(faultproxy.SlowDown), p.Injected(0))
	}

	// Probability with a seed: the same seed injects into the same requests.
	run := func() []int {
		p, _ := start(t, faultproxy.Rule{Probability: 0.5, Fault: faultproxy.ServerError})
		var s []int
		for range 40 {
			status, _, err := get(context.Background(), t, p, "GET", "/bucket/k")
			if err != nil {
				t.Fatal(err)
			}
			s = append(s, status)
		}
		if n := p.Injected(0); n < 8 || n > 32 {
			t.Fatalf("probability 0.5 injected %d of 40", n)
		}
		return s
	}
	if a, b := run(), run(); !slices.Equal(a, b) {
		t.Fatal("the same seed injected different faults")
	}
}

func TestStripIfNoneMatchSignsAgain(t *testing.T) {
	p, up := start(t, faultproxy.Rule{Fault: faultproxy.StripIfNoneMatch})
	payload := []byte("segment")
	sum := sha256.Sum256(payload)
	hash := hex.EncodeToString(sum[:])
	send := func(conditional bool) {
		req, _ := http.NewRequestWithContext(context.Background(), http.MethodPut, p.URL()+"/bucket/k", bytes.NewReader(payload))
		req.Header.Set("X-Amz-Content-Sha256", hash)
		if conditional {
			req.Header.Set("If-None-Match", "*")
		}
		creds := aws.Credentials{AccessKeyID: "AK", SecretAccessKey: "secret"}
		if err := v4.NewSigner().SignHTTP(context.Background(), creds, req, hash, "s3", "us-east-1", time.Now()); err != nil {
			t.Fatal(err)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	send(true)
	send(false)
	up.mu.Lock()
	first, second := up.got[0], up.got[1]
	up.mu.Unlock()
	if first.Header.Get("If-None-Match") != "" {
		t.Fatal("If-None-Match reached the server")
	}
	auth := first.Header.Get("Authorization")
	if strings.Contains(auth, "if-none-match") || !strings.Contains(auth, "Credential=AK/") {
		t.Fatalf("not signed again without the header: %s", auth)
	}
	if p.Injected(faultproxy.StripIfNoneMatch) != 1 || second.Header.Get("Authorization") == "" {
		t.Fatalf("a request without the header counted as stripped (%d)", p.Injected(faultproxy.StripIfNoneMatch))
	}
}
