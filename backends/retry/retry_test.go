package retry

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/walship/walship/backends"
	"github.com/walship/walship/backends/memory"
	"github.com/walship/walship/backends/storagetest"
)

// flaky wraps a store and fails calls as told.
type flaky struct {
	backends.Storage
	mu       sync.Mutex
	calls    map[string]int
	failures int   // the first failures calls of each op fail with err
	err      error // what they fail with
	block    bool  // failing calls block until their context ends instead
	midBody  bool  // Get succeeds but its body fails after 3 bytes
	listFail int   // List fails after this many keys on its first call (0: never)
}

func newFlaky() *flaky {
	return &flaky{Storage: memory.New(), calls: map[string]int{}, err: errors.New("connection reset by peer")}
}

func (f *flaky) count(op string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls[op]
}

func (f *flaky) fail(ctx context.Context, op string) error {
	f.mu.Lock()
	f.calls[op]++
	n := f.calls[op]
	f.mu.Unlock()
	if n > f.failures {
		return nil
	}
	if f.block {
		<-ctx.Done()
		return fmt.Errorf("%s: %w", op, ctx.Err())
	}
	return fmt.Errorf("%s: %w", op, f.err)
}

func (f *flaky) Stat(ctx context.Context, key string) (backends.ObjectInfo, error) {
	if err := f.fail(ctx, "stat"); err != nil {
		return backends.ObjectInfo{}, err
	}
	return f.Storage.Stat(ctx, key)
}

func (f *flaky) Put(ctx context.Context, key string, body io.ReadSeeker, size int64) error {
	if err := f.fail(ctx, "put"); err != nil {
		return err
	}
	return f.Storage.Put(ctx, key, body, size)
}

func (f *flaky) Get(ctx context.Context, key string) (io.ReadCloser, backends.ObjectInfo, error) {
	if f.midBody {
		f.mu.Lock()
		f.calls["get"]++
		f.mu.Unlock()
		rc, info, err := f.Storage.Get(ctx, key)
		if err != nil {
			return nil, info, err
		}
		return &brokenBody{rc: rc, left: 3}, info, nil
	}
	if err := f.fail(ctx, "get"); err != nil {
		return nil, backends.ObjectInfo{}, err
	}
	return f.Storage.Get(ctx, key)
}

func (f *flaky) List(ctx context.Context, prefix string, fn func(backends.ObjectInfo) error) error {
	f.mu.Lock()
	f.calls["list"]++
	first := f.calls["list"] == 1
	f.mu.Unlock()
	n := 0
	return f.Storage.List(ctx, prefix, func(o backends.ObjectInfo) error {
		if first && f.listFail > 0 && n == f.listFail {
			return errors.New("connection reset by peer")
		}
		n++
		return fn(o)
	})
}

type brokenBody struct {
	rc   io.ReadCloser
	left int
}

func (b *brokenBody) Read(p []byte) (int, error) {
	if b.left == 0 {
		return 0, io.ErrUnexpectedEOF
	}
	n, err := b.rc.Read(p[:min(len(p), b.left)])
	b.left -= n
	return n, err
}

func (b *brokenBody) Close() error { return b.rc.Close() }

// quick is a policy whose waits are recorded, not slept.
func quick(inner backends.Storage, o Options) (*Storage, *[]time.Duration) {
	o.Seed = 42
	s := New(inner, o)
	var waits []time.Duration
	var mu sync.Mutex
	s.wait = func(ctx context.Context, d time.Duration) error {
		mu.Lock()
		waits = append(waits, d)
		mu.Unlock()
		return ctx.Err()
	}
	return s, &waits
}

func put(t *testing.T, s backends.Storage, key, v string) {
	t.Helper()
	if err := s.Put(context.Background(), key, bytes.NewReader([]byte(v)), int64(len(v))); err != nil {
		t.Fatal(err)
	}
}

func TestConformance(t *testing.T) {
	storagetest.Run(t, func(t *testing.T) backends.Storage {
		return New(memory.New(), Options{Seed: 1, MinDelay: time.Millisecond})
	}, storagetest.Options{})
}

func TestRetriesTransientThenSucceeds(t *testing.T) {
	f := newFlaky()
	put(t, f.Storage, "k", "v")
	f.failures = 2
	s, waits := quick(f, Options{Attempts: 4})
	if _, err := s.Stat(context.Background(), "k"); err != nil {
		t.Fatal(err)
	}
	if f.count("stat") != 3 || len(*waits) != 2 {
		t.Fatalf("%d calls, %d waits; want 3 and 2", f.count("stat"), len(*waits))
	}
}

func TestGivesUpAfterAttempts(t *testing.T) {
	f := newFlaky()
	f.failures = 100
	s, _ := quick(f, Options{Attempts: 3})
	_, err := s.Stat(context.Background(), "k")
	if err == nil || backends.IsPermanent(err) || f.count("stat") != 3 {
		t.Fatalf("%v after %d calls; want a retryable error after 3", err, f.count("stat"))
	}
}

func TestPermanentErrorsAreNotRetried(t *testing.T) {
	for _, e := range []error{backends.ErrNotFound, backends.ErrExists, backends.Permanent(errors.New("access denied")),
		backends.ErrBadKey, context.Canceled} {
		f := newFlaky()
		f.failures, f.err = 100, e
		s, waits := quick(f, Options{Attempts: 5})
		if _, err := s.Stat(context.Background(), "k"); !errors.Is(err, e) {
			t.Errorf("%v: got %v", e, err)
		}
		if f.count("stat") != 1 || len(*waits) != 0 {
			t.Errorf("%v: %d calls, want 1", e, f.count("stat"))
		}
	}
}

func TestBackoffGrowsWithJitterAndCap(t *testing.T) {
	f := newFlaky()
	f.failures = 100
	s, waits := quick(f, Options{Attempts: 8, MinDelay: 100 * time.Millisecond, MaxDelay: time.Second})
	_, _ = s.Stat(context.Background(), "k")
	if len(*waits) != 7 {
		t.Fatalf("%d waits, want 7", len(*waits))
	}
	for i, d := range *waits {
		full := min(100*time.Millisecond<<i, time.Second)
		if d < full/2 || d > full {
			t.Errorf("wait %d = %s, want in [%s, %s]", i+1, d, full/2, full)
		}
	}
}

func TestAttemptTimeoutIsRetryable(t *testing.T) {
	f := newFlaky()
	put(t, f.Storage, "k", "v")
	f.failures, f.block = 1, true
	s, _ := quick(f, Options{Attempts: 2, AttemptTimeout: 50 * time.Millisecond})
	start := time.Now()
	if _, err := s.Stat(context.Background(), "k"); err != nil {
		t.Fatalf("second try: %v", err)
	}
	if f.count("stat") != 2 || time.Since(start) > 5*time.Second {
		t.Fatalf("%d calls in %s", f.count("stat"), time.Since(start))
	}
	f.calls, f.failures = map[string]int{}, 100
	_, err := s.Stat(context.Background(), "k")
	if !errors.Is(err, backends.ErrStalled) || errors.Is(err, context.DeadlineExceeded) || backends.IsPermanent(err) {
		t.Fatalf("timed-out tries: %v, want ErrStalled and retryable", err)
	}
}

func TestCallerDeadlineIsNotRetried(t *testing.T) {
	f := newFlaky()
	f.failures, f.block = 100, true
	s, _ := quick(f, Options{Attempts: 5, AttemptTimeout: time.Hour})
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err := s.Stat(ctx, "k")
	if !errors.Is(err, context.DeadlineExceeded) || f.count("stat") != 1 {
		t.Fatalf("%v after %d calls", err, f.count("stat"))
	}
}

// stallStore serves bodies that deliver some bytes, then block until the
// request's context ends, as a stalled S3 body does.
type stallStore struct{ backends.Storage }

func (s stallStore) Get(ctx context.Context, key string) (io.ReadCloser, backends.ObjectInfo, error) {
	return &stallBody{ctx: ctx, data: []byte("head")}, backends.ObjectInfo{Key: key, Size: 100}, nil
}

type stallBody struct {
	ctx  context.Context //nolint:containedctx // blocks until the request's context ends, as a stalled S3 body does
	data []byte
}

func (b *stallBody) Read(p []byte) (int, error) {
	if len(b.data) > 0 {
		n := copy(p, b.data)
		b.data = b.data[n:]
		return n, nil
	}
	<-b.ctx.Done()
	return 0, b.ctx.Err()
}

func (b *stallBody) Close() error { return nil }

func TestStalledBodyFailsRetryable(t *testing.T) {
	s, _ := quick(stallStore{memory.New()}, Options{StallTimeout: 100 * time.Millisecond})
	rc, _, err := s.Get(context.Background(), "k")
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	start := time.Now()
	b, err := io.ReadAll(rc)
	if string(b) != "head" || !errors.Is(err, backends.ErrStalled) || backends.IsPermanent(err) {
		t.Fatalf("read %q, %v; want the head, then a retryable ErrStalled", b, err)
	}
	if el := time.Since(start); el < 100*time.Millisecond || el > 5*time.Second {
		t.Fatalf("stall detected after %s", el)
	}
}

func TestSlowConsumerIsNotAStall(t *testing.T) {
	mem := memory.New()
	put(t, mem, "k", "abcdef")
	s, _ := quick(mem, Options{StallTimeout: 20 * time.Millisecond})
	rc, _, err := s.Get(context.Background(), "k")
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	one := make([]byte, 1)
	var got []byte
	for {
		// The consumer waits longer than the stall timeout between
		// reads; the watchdog only runs inside Read.
		timer := time.NewTimer(50 * time.Millisecond)
		<-timer.C
		n, err := rc.Read(one)
		got = append(got, one[:n]...)
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("slow reader failed: %v", err)
		}
		if len(got) >= 3 {
			rest, err := io.ReadAll(rc)
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, rest...)
			break
		}
	}
	if string(got) != "abcdef" {
		t.Fatalf("got %q", got)
	}
}

func TestListResumesWithoutRepeats(t *testing.T) {
	f := newFlaky()
	for _, k := range []string{"a/1", "a/2", "a/3", "a/4"} {
		put(t, f.Storage, k, k)
	}
	f.listFail = 2
	s, _ := quick(f, Options{Attempts: 3})
	var got []string
	if err := s.List(context.Background(), "a/", func(o backends.ObjectInfo) error {
		got = append(got, o.Key)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(got) != "[a/1 a/2 a/3 a/4]" || f.count("list") != 2 {
		t.Fatalf("listed %v in %d calls", got, f.count("list"))
	}
	stop := errors.New("stop")
	f.calls = map[string]int{}
	err := s.List(context.Background(), "a/", func(backends.ObjectInfo) error { return stop })
	if err != stop || f.count("list") != 1 { //nolint:errorlint // the very error, not wrapped
		t.Fatalf("callback error: %v after %d calls, want it as is after 1", err, f.count("list"))
	}
}

func TestDoMakesAtMostAttemptsRequests(t *testing.T) {
	f := newFlaky()
	put(t, f.Storage, "k", "abcdef")
	f.midBody = true
	s, waits := quick(f, Options{Attempts: 4})
	var calls atomic.Int32
	n, err := Do(context.Background(), s, 0, nil, func(ctx context.Context) error {
		calls.Add(1)
		rc, _, err := s.Get(ctx, "k")
		if err != nil {
			return err
		}
		defer rc.Close()
		_, err = io.ReadAll(rc)
		return err
	})
	if !errors.Is(err, io.ErrUnexpectedEOF) || n != 4 || calls.Load() != 4 || f.count("get") != 4 || len(*waits) != 3 {
		t.Fatalf("Do: %v, %d tries, %d ops, %d GETs, %d waits; want 4 of each and 3 waits", err, n, calls.Load(), f.count("get"), len(*waits))
	}

	// Inside Do a call that fails is tried once; Do retries the whole.
	g := newFlaky()
	g.failures = 100
	gs, _ := quick(g, Options{Attempts: 3})
	n, _ = Do(context.Background(), gs, 2, nil, func(ctx context.Context) error {
		_, err := gs.Stat(ctx, "k")
		return err
	})
	if n != 2 || g.count("stat") != 2 {
		t.Fatalf("limit 2: %d tries, %d requests", n, g.count("stat"))
	}
}

func TestDoStopsOnRejectedError(t *testing.T) {
	s, _ := quick(memory.New(), Options{Attempts: 5})
	bad := errors.New("damaged")
	n, err := Do(context.Background(), s, 0, func(err error) bool { return !errors.Is(err, bad) },
		func(context.Context) error { return bad })
	if n != 1 || err != bad { //nolint:errorlint // the very error, not wrapped
		t.Fatalf("%d tries, %v", n, err)
	}
}

// uncertain stores the object and then fails the first PutIfAbsent, as a
// 500 or a reset after the server acted does.
type uncertain struct {
	backends.Storage
	calls atomic.Int32
}

func (u *uncertain) PutIfAbsent(ctx context.Context, key string, body io.ReadSeeker, size int64) error {
	err := u.Storage.PutIfAbsent(ctx, key, body, size)
	if u.calls.Add(1) == 1 && err == nil {
		return errors.New("InternalError: We encountered an internal error")
	}
	return err
}

func TestPutIfAbsentAfterAnUncertainFailure(t *testing.T) {
	ctx := context.Background()
	u := &uncertain{Storage: memory.New()}
	s, _ := quick(u, Options{Attempts: 3})
	data := []byte("chunk bytes")
	if err := s.PutIfAbsent(ctx, "k", bytes.NewReader(data), int64(len(data))); err != nil {
		t.Fatalf("own object found on the retry: %v, want success", err)
	}
	if u.calls.Load() != 2 {
		t.Fatalf("%d tries", u.calls.Load())
	}
	// A different object already there after an uncertain failure: still
	// ErrExists.
	put(t, u.Storage, "other", "someone else's")
	f := &failOnce{Storage: u.Storage}
	s2, _ := quick(f, Options{Attempts: 3})
	if err := s2.PutIfAbsent(ctx, "other", bytes.NewReader(data), int64(len(data))); !errors.Is(err, backends.ErrExists) {
		t.Fatalf("different object: %v, want ErrExists", err)
	}
	// ErrExists at the first try is never checked against the content.
	s3, _ := quick(u.Storage, Options{Attempts: 3})
	if err := s3.PutIfAbsent(ctx, "k", bytes.NewReader(data), int64(len(data))); !errors.Is(err, backends.ErrExists) {
		t.Fatalf("existing at first try: %v, want ErrExists", err)
	}
}

// failOnce fails the first PutIfAbsent before doing anything.
type failOnce struct {
	backends.Storage
	n atomic.Int32
}

func (f *failOnce) PutIfAbsent(ctx context.Context, key string, body io.ReadSeeker, size int64) error {
	if f.n.Add(1) == 1 {
		return errors.New("connection reset by peer")
	}
	return f.Storage.PutIfAbsent(ctx, key, body, size)
}
