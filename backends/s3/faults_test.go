package s3_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/walship/walship/backends"
	"github.com/walship/walship/backends/retry"
	"github.com/walship/walship/backends/s3"
	"github.com/walship/walship/backends/storagetest"
	"github.com/walship/walship/internal/faultproxy"
	"github.com/walship/walship/internal/testenv"
)

// proxied is a bucket reached through a fault proxy, under the retry
// policy walship uses, and the same bucket reached directly.
func proxied(t *testing.T, o retry.Options) (*retry.Storage, *faultproxy.Proxy, *s3.Storage) {
	t.Helper()
	srv := testenv.StartS3(t)
	p, err := faultproxy.Start(faultproxy.Options{Upstream: srv.Endpoint, SecretKey: srv.SecretKey, Seed: 7})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })
	bucket := testenv.RandName("fault")
	direct := newStore(t, srv, bucket, "")
	if err := direct.CreateBucket(context.Background()); err != nil {
		t.Fatal(err)
	}
	via := *srv
	via.Endpoint = p.URL()
	if o.MinDelay == 0 {
		o.MinDelay = 10 * time.Millisecond
	}
	return retry.New(newStore(t, &via, bucket, ""), o), p, direct
}

func putDirect(t *testing.T, s backends.Storage, key, v string) {
	t.Helper()
	if err := s.Put(context.Background(), key, bytes.NewReader([]byte(v)), int64(len(v))); err != nil {
		t.Fatal(err)
	}
}

func TestConformanceThroughProxy(t *testing.T) {
	srv := testenv.StartS3(t)
	p, err := faultproxy.Start(faultproxy.Options{Upstream: srv.Endpoint, SecretKey: srv.SecretKey})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	bucket := testenv.RandName("confp")
	if err := newStore(t, srv, bucket, "").CreateBucket(context.Background()); err != nil {
		t.Fatal(err)
	}
	via := *srv
	via.Endpoint = p.URL()
	storagetest.Run(t, func(t *testing.T) backends.Storage {
		return retry.New(newStore(t, &via, bucket, testenv.RandName("p")), retry.Options{MinDelay: time.Millisecond})
	}, storagetest.Options{LargeSize: 12 << 20})
	if p.Injected(0) != 0 || p.Count("", "") == 0 {
		t.Fatalf("proxy: %d faults, %d requests", p.Injected(0), p.Count("", ""))
	}
}

// A proxy's HTML 404 to a GET is not S3 saying the key is absent: during a
// recovery that answer would end the recovery early.
func TestHTML404OnGetIsNotAbsent(t *testing.T) {
	s, p, direct := proxied(t, retry.Options{Attempts: 2})
	putDirect(t, direct, "wal/present", "x")
	p.SetRules(faultproxy.Rule{Method: "GET", Fault: faultproxy.HTML404})
	for _, key := range []string{"wal/present", "wal/absent"} {
		_, _, err := s.Get(context.Background(), key)
		if err == nil || errors.Is(err, backends.ErrNotFound) || backends.IsPermanent(err) {
			t.Fatalf("GET %s answered by an HTML 404: %v, want a retryable error, not ErrNotFound", key, err)
		}
	}
	if p.Injected(faultproxy.HTML404) != 4 {
		t.Fatalf("%d HTML 404s injected, want 4 (2 keys, 2 tries)", p.Injected(faultproxy.HTML404))
	}
	// S3's own NoSuchKey still means absent.
	p.SetRules()
	if _, _, err := s.Get(context.Background(), "wal/absent"); !errors.Is(err, backends.ErrNotFound) {
		t.Fatalf("real NoSuchKey: %v", err)
	}
}

// A HEAD has no body, so a 404 to it cannot be told from a proxy's: it is
// ErrNotFound (documented). Nothing that decides "absent" for a reader or
// a conditional write relies on HEAD alone.
func TestHEAD404IsNotFound(t *testing.T) {
	s, p, _ := proxied(t, retry.Options{Attempts: 1})
	p.SetRules(faultproxy.Rule{Method: "HEAD", Fault: faultproxy.HTML404})
	if _, err := s.Stat(context.Background(), "wal/x"); !errors.Is(err, backends.ErrNotFound) {
		t.Fatalf("HEAD 404: %v", err)
	}
}

func TestOneRequestPerTry(t *testing.T) {
	s, p, direct := proxied(t, retry.Options{Attempts: 3})
	putDirect(t, direct, "wal/k", "data")
	for _, kind := range []faultproxy.Kind{faultproxy.ServerError, faultproxy.SlowDown} {
		p.SetRules(faultproxy.Rule{Method: "GET", Key: "wal/k", Fault: kind})
		before := p.Count("GET", "wal/k")
		_, _, err := s.Get(context.Background(), "wal/k")
		if err == nil || errors.Is(err, backends.ErrNotFound) {
			t.Fatalf("%s on every try: %v", kind, err)
		}
		if n := p.Count("GET", "wal/k") - before; n != 3 {
			t.Fatalf("%s: %d GETs for one Get, want 3 (one per try, no SDK retries)", kind, n)
		}
	}
	// Faults on the first two tries only: the third succeeds.
	p.SetRules(faultproxy.Rule{Method: "GET", Key: "wal/k", Times: 2, Fault: faultproxy.SlowDown})
	rc, _, err := s.Get(context.Background(), "wal/k")
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(rc)
	rc.Close()
	if err != nil || string(b) != "data" {
		t.Fatalf("after two SlowDowns: %q, %v", b, err)
	}
}

func TestStalledBodyAndStalledAnswer(t *testing.T) {
	s, p, direct := proxied(t, retry.Options{Attempts: 2, AttemptTimeout: 500 * time.Millisecond, StallTimeout: 500 * time.Millisecond})
	data := bytes.Repeat([]byte("w"), 256<<10)
	if err := direct.Put(context.Background(), "wal/big", bytes.NewReader(data), int64(len(data))); err != nil {
		t.Fatal(err)
	}
	p.SetRules(faultproxy.Rule{Method: "GET", Fault: faultproxy.Stall, After: 1000})
	start := time.Now()
	rc, _, err := s.Get(context.Background(), "wal/big")
	if err != nil {
		t.Fatal(err)
	}
	_, err = io.ReadAll(rc)
	rc.Close()
	if !errors.Is(err, backends.ErrStalled) || backends.IsPermanent(err) {
		t.Fatalf("stalled body: %v, want a retryable ErrStalled", err)
	}
	if el := time.Since(start); el > 5*time.Second {
		t.Fatalf("stalled body detected after %s", el)
	}

	// No answer at all: the attempt timeout, each try.
	p.SetRules(faultproxy.Rule{Method: "HEAD", Fault: faultproxy.Stall, After: -1})
	start = time.Now()
	_, err = s.Stat(context.Background(), "wal/big")
	if !errors.Is(err, backends.ErrStalled) || p.Injected(faultproxy.Stall) != 3 {
		t.Fatalf("unanswered HEAD: %v (%d stalls)", err, p.Injected(faultproxy.Stall))
	}
	if el := time.Since(start); el > 5*time.Second {
		t.Fatalf("two unanswered tries took %s", el)
	}
}

func TestMidBodyFailuresAreRetryable(t *testing.T) {
	s, p, direct := proxied(t, retry.Options{Attempts: 3})
	data := bytes.Repeat([]byte("0123456789"), 20000)
	if err := direct.Put(context.Background(), "wal/k", bytes.NewReader(data), int64(len(data))); err != nil {
		t.Fatal(err)
	}
	for _, kind := range []faultproxy.Kind{faultproxy.Reset, faultproxy.Truncate} {
		p.SetRules(faultproxy.Rule{Method: "GET", Fault: kind, After: 5000, Times: 1})
		var got []byte
		n, err := retry.Do(context.Background(), s, 0, nil, func(ctx context.Context) error {
			rc, _, err := s.Get(ctx, "wal/k")
			if err != nil {
				return err
			}
			defer rc.Close()
			got, err = io.ReadAll(rc)
			return err
		})
		if err != nil || n != 2 || !bytes.Equal(got, data) {
			t.Fatalf("%s once: %v after %d tries, %d bytes", kind, err, n, len(got))
		}
	}
}

// The proxy stands in for a server that ignores If-None-Match: both
// conditional writes succeed and the second replaces the first.
func TestStripIfNoneMatchMakesWritesUnconditional(t *testing.T) {
	s, p, direct := proxied(t, retry.Options{Attempts: 1})
	ctx := context.Background()
	if err := s.PutIfAbsent(ctx, "probe", bytes.NewReader([]byte("1")), 1); err != nil {
		t.Fatal(err)
	}
	if err := s.PutIfAbsent(ctx, "probe", bytes.NewReader([]byte("2")), 1); !errors.Is(err, backends.ErrExists) {
		t.Fatalf("server enforces If-None-Match: %v, want ErrExists", err)
	}
	p.SetRules(faultproxy.Rule{Fault: faultproxy.StripIfNoneMatch})
	if err := s.PutIfAbsent(ctx, "probe", bytes.NewReader([]byte("3")), 1); err != nil {
		t.Fatalf("stripped and signed again: %v", err)
	}
	rc, _, err := direct.Get(ctx, "probe")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(rc)
	rc.Close()
	if string(b) != "3" || p.Injected(faultproxy.StripIfNoneMatch) != 1 {
		t.Fatalf("stored %q after %d strips", b, p.Injected(faultproxy.StripIfNoneMatch))
	}
}
