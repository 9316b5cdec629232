// Package retry is the one retry and deadline policy for every Storage call,
// composed in one place as a decorator (restic's backend decorators are the
// model). New wraps any backends.Storage: each call is tried at most Attempts
// times with jittered exponential backoff between tries, each try has a
// deadline, and every Get body is watched so that a read making no progress
// fails with backends.ErrStalled instead of hanging. Permanent errors,
// ErrNotFound and ErrExists are returned at once. Do retries a whole read (a
// Get and the reading of its body, which can fail mid-way) under the same
// policy and makes the calls inside it single tries, so nothing is retried
// at two levels. Backends keep their own clients to one try per request.
package retry

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/walship/walship/backends"
)

// Options is the policy. Zero fields take the documented defaults.
type Options struct {
	// Attempts is the number of tries per call, the first included;
	// 0 means 5.
	Attempts int
	// MinDelay and MaxDelay bound the backoff: before try n+1 walship
	// waits MinDelay·2^(n-1), capped at MaxDelay, jittered to between
	// half and all of it. 0 means 200ms and 5s.
	MinDelay, MaxDelay time.Duration
	// AttemptTimeout bounds one try: Stat; Delete (plus 10ms a key); Put
	// and PutIfAbsent (plus 1s per MiB sent); Get until the response
	// arrives; List between two keys. 0 means 30s.
	AttemptTimeout time.Duration
	// StallTimeout fails a Get body read that delivers no byte for this
	// long with backends.ErrStalled. 0 means 30s.
	StallTimeout time.Duration
	// Seed seeds the jitter; 0 seeds at random.
	Seed uint64
	// Log receives one warning per failed try that is retried; nil
	// means slog.Default().
	Log *slog.Logger
}

// Defaults is the policy with every zero field filled in.
func (o Options) Defaults() Options {
	if o.Attempts <= 0 {
		o.Attempts = 5
	}
	if o.MinDelay <= 0 {
		o.MinDelay = 200 * time.Millisecond
	}
	if o.MaxDelay <= 0 {
		o.MaxDelay = 5 * time.Second
	}
	o.MaxDelay = max(o.MaxDelay, o.MinDelay)
	if o.AttemptTimeout <= 0 {
		o.AttemptTimeout = 30 * time.Second
	}
	if o.StallTimeout <= 0 {
		o.StallTimeout = 30 * time.Second
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
	return o
}

// Storage is a Storage with the policy applied to every call.
type Storage struct {
	inner backends.Storage
	o     Options

	mu  sync.Mutex
	rng *rand.Rand
	// wait sleeps between tries; tests replace it.
	wait func(ctx context.Context, d time.Duration) error
}

// New wraps inner with the policy o.
func New(inner backends.Storage, o Options) *Storage {
	o = o.Defaults()
	seed := o.Seed
	if seed == 0 {
		seed = rand.Uint64()
	}
	return &Storage{inner: inner, o: o, rng: rand.New(rand.NewPCG(seed, seed^0x5eed)), wait: sleep}
}

// Options is the policy in force, defaults filled in.
func (s *Storage) Options() Options { return s.o }

// Unwrap is the wrapped store.
func (s *Storage) Unwrap() backends.Storage { return s.inner }

func (s *Storage) String() string { return s.inner.String() }

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// delay is the jittered backoff after the n-th failed try.
func (s *Storage) delay(n int) time.Duration {
	d := s.o.MinDelay << min(n-1, 30)
	if d <= 0 || d > s.o.MaxDelay {
		d = s.o.MaxDelay
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return d/2 + time.Duration(s.rng.Int64N(int64(d/2)+1))
}

// singleKey marks a context inside Do: calls make one try each.
type singleKey struct{}

func single(ctx context.Context) bool { return ctx.Value(singleKey{}) != nil }

// Retryable is the default classification: every error that is not
// permanent (backends.IsPermanent) may succeed on another try.
func Retryable(err error) bool { return !backends.IsPermanent(err) }

// loop runs try until it succeeds, fails for good, or the tries run out.
// The error of the last try is returned, with the count of tries.
func (s *Storage) loop(ctx context.Context, op, key string, tries int, retryable func(error) bool, try func() error) (int, error) {
	if single(ctx) {
		tries = 1
	}
	for n := 1; ; n++ {
		err := try()
		if err == nil {
			return n, nil
		}
		if n >= tries || ctx.Err() != nil || !retryable(err) {
			if n > 1 {
				err = fmt.Errorf("%w (gave up after %d tries)", err, n)
			}
			return n, err
		}
		d := s.delay(n)
		attrs := []any{"op", op, "try", n, "of", tries, "in_ms", d.Milliseconds(), "error", err}
		if key != "" { // a whole read (Do) names its key in the error
			attrs = append([]any{"key", key}, attrs...)
		}
		s.o.Log.Warn("storage request failed; trying again", attrs...)
		if werr := s.wait(ctx, d); werr != nil {
			// Only werr wrapped: the caller's context ended, whatever the try's error was.
			return n, fmt.Errorf("%w (while waiting to retry after: %v)", werr, err) //nolint:errorlint // see above
		}
	}
}

// errAttempt and errStall are the causes with which a try's context is
// cancelled by the policy's own timers.
var (
	errAttempt = errors.New("no answer within the attempt timeout")
	errStall   = errors.New("no data within the stall timeout")
)

// outcome turns the error of a try whose context the policy cancelled into
// a retryable ErrStalled: the context errors themselves are permanent, as
// they are when the caller's context ends.
func outcome(ctx, actx context.Context, op, key string, d time.Duration, err error) error {
	if err == nil || ctx.Err() != nil {
		return err
	}
	// err (a context error) is only text: wrapped, it would read as the
	// caller's own cancellation, which is permanent.
	switch cause := context.Cause(actx); {
	case errors.Is(cause, errAttempt):
		return fmt.Errorf("%s %q: %w: no answer within %s (%v)", op, key, backends.ErrStalled, d, err) //nolint:errorlint // see above
	case errors.Is(cause, errStall):
		return fmt.Errorf("%s %q: %w: no data for %s (%v)", op, key, backends.ErrStalled, d, err) //nolint:errorlint // see above
	}
	return err
}

// timed runs one try under the attempt deadline d.
func (s *Storage) timed(ctx context.Context, op, key string, d time.Duration, fn func(context.Context) error) error {
	actx, cancel := context.WithTimeoutCause(ctx, d, errAttempt)
	defer cancel()
	return outcome(ctx, actx, op, key, d, fn(actx))
}

func (s *Storage) call(ctx context.Context, op, key string, d time.Duration, fn func(context.Context) error) error {
	_, err := s.loop(ctx, op, key, s.o.Attempts, Retryable, func() error { return s.timed(ctx, op, key, d, fn) })
	return err
}

func (s *Storage) putTimeout(size int64) time.Duration {
	return s.o.AttemptTimeout + time.Duration(size>>20)*time.Second
}

// PutIfAbsent implements backends.Storage. A try that failed may still
// have stored the object (a 500 or a reset after the server acted); the
// next try then finds it and gets ErrExists. So after such a failure an
// ErrExists is checked: an object with exactly the bytes of body is this
// call's own, and the call succeeds; anything else stays ErrExists.
func (s *Storage) PutIfAbsent(ctx context.Context, key string, body io.ReadSeeker, size int64) error {
	d := s.putTimeout(size)
	uncertain := false
	_, err := s.loop(ctx, "put", key, s.o.Attempts, Retryable, func() error {
		err := s.timed(ctx, "put", key, d, func(ctx context.Context) error {
			return s.inner.PutIfAbsent(ctx, key, body, size)
		})
		if uncertain && errors.Is(err, backends.ErrExists) {
			same, cerr := s.holds(ctx, key, body, size)
			switch {
			case cerr != nil:
				return cerr // retried: the next try compares again
			case same:
				return nil
			}
		}
		if err != nil && !backends.IsPermanent(err) {
			uncertain = true
		}
		return err
	})
	return err
}

// holds reports whether key holds exactly the size bytes of body, with one
// try of the read.
func (s *Storage) holds(ctx context.Context, key string, body io.ReadSeeker, size int64) (bool, error) {
	rc, info, err := s.Get(context.WithValue(ctx, singleKey{}, true), key)
	if errors.Is(err, backends.ErrNotFound) {
		// Gone since: not an answer; the next try writes again.
		return false, fmt.Errorf("compare with the existing %q: it vanished", key)
	}
	if err != nil {
		return false, fmt.Errorf("compare with the existing %q: %w", key, err)
	}
	defer rc.Close()
	if info.Size != size {
		return false, nil
	}
	if _, err := body.Seek(0, io.SeekStart); err != nil {
		return false, backends.Permanent(err)
	}
	a, b := make([]byte, 32<<10), make([]byte, 32<<10)
	for left := size; left > 0; {
		n := int(min(left, int64(len(a))))
		if _, err := io.ReadFull(rc, a[:n]); err != nil {
			return false, fmt.Errorf("compare with the existing %q: %w", key, err)
		}
		if _, err := io.ReadFull(body, b[:n]); err != nil {
			return false, backends.Permanent(fmt.Errorf("compare with the existing %q: read the body: %w", key, err))
		}
		if !bytes.Equal(a[:n], b[:n]) {
			return false, nil
		}
		left -= int64(n)
	}
	return true, nil
}

// Put implements backends.Storage.
func (s *Storage) Put(ctx context.Context, key string, body io.ReadSeeker, size int64) error {
	return s.call(ctx, "put", key, s.putTimeout(size), func(ctx context.Context) error {
		return s.inner.Put(ctx, key, body, size)
	})
}

// Stat implements backends.Storage.
func (s *Storage) Stat(ctx context.Context, key string) (backends.ObjectInfo, error) {
	var info backends.ObjectInfo
	err := s.call(ctx, "stat", key, s.o.AttemptTimeout, func(ctx context.Context) error {
		var err error
		info, err = s.inner.Stat(ctx, key)
		return err
	})
	return info, err
}

// Delete implements backends.Storage.
func (s *Storage) Delete(ctx context.Context, keys ...string) error {
	if len(keys) == 0 {
		return nil
	}
	d := s.o.AttemptTimeout + time.Duration(len(keys))*10*time.Millisecond
	return s.call(ctx, "delete", keys[0], d, func(ctx context.Context) error {
		return s.inner.Delete(ctx, keys...)
	})
}

// List implements backends.Storage. A listing that fails part-way is
// listed again from the start, and the keys fn already had are skipped
// (keys come in order), so fn sees each key once. Only the time the store
// takes between two keys counts against the attempt timeout, not fn's.
func (s *Storage) List(ctx context.Context, prefix string, fn func(backends.ObjectInfo) error) error {
	var last string
	seen := false
	var fnErr error
	d := s.o.AttemptTimeout
	_, err := s.loop(ctx, "list", prefix, s.o.Attempts, Retryable, func() error {
		actx, cancel := context.WithCancelCause(ctx)
		defer cancel(nil)
		t := time.AfterFunc(d, func() { cancel(errAttempt) })
		defer t.Stop()
		err := s.inner.List(actx, prefix, func(o backends.ObjectInfo) error {
			if !t.Stop() {
				return errAttempt // fired: actx is cancelled; outcome reports it
			}
			defer t.Reset(d)
			if seen && o.Key <= last {
				return nil
			}
			if err := fn(o); err != nil {
				fnErr = err
				return err
			}
			last, seen = o.Key, true
			return nil
		})
		if fnErr != nil {
			return backends.Permanent(fnErr) // not retried; returned as is below
		}
		return outcome(ctx, actx, "list", prefix, d, err)
	})
	if fnErr != nil {
		return fnErr
	}
	return err
}

// Get implements backends.Storage. The attempt timeout covers the wait for
// the response; the body is then watched: a Read that gets no byte for the
// stall timeout fails with backends.ErrStalled, and any failure mid-body is
// returned to the reader as it is (retryable unless the caller's context
// ended). Use Do to retry the Get together with the reading of its body.
func (s *Storage) Get(ctx context.Context, key string) (io.ReadCloser, backends.ObjectInfo, error) {
	var rc io.ReadCloser
	var info backends.ObjectInfo
	d := s.o.AttemptTimeout
	_, err := s.loop(ctx, "get", key, s.o.Attempts, Retryable, func() error {
		actx, cancel := context.WithCancelCause(ctx)
		t := time.AfterFunc(d, func() { cancel(errAttempt) })
		r, i, err := s.inner.Get(actx, key)
		t.Stop()
		if err == nil && actx.Err() != nil {
			// The timer fired as the answer came: the body is unusable.
			_ = r.Close()
			err = context.Cause(actx)
		}
		if err != nil {
			err = outcome(ctx, actx, "get", key, d, err)
			cancel(nil)
			return err
		}
		rc, info = newWatched(ctx, actx, cancel, r, key, s.o.StallTimeout), i
		return nil
	})
	return rc, info, err
}

// watched is a Get body under the stall watchdog. The watchdog runs only
// while a Read is in progress: a slow consumer is not a stalled store.
// A Get body outlives Get, and Read takes no context: it holds both.
type watched struct {
	ctx    context.Context //nolint:containedctx // the caller's; Read takes none
	actx   context.Context //nolint:containedctx // this try's, cancelled by the watchdog; Read takes none
	cancel context.CancelCauseFunc
	r      io.ReadCloser
	key    string
	d      time.Duration
	timer  *time.Timer
}

func newWatched(ctx, actx context.Context, cancel context.CancelCauseFunc, r io.ReadCloser, key string, d time.Duration) *watched {
	w := &watched{ctx: ctx, actx: actx, cancel: cancel, r: r, key: key, d: d}
	w.timer = time.AfterFunc(d, func() { cancel(errStall) })
	w.timer.Stop()
	return w
}

func (w *watched) Read(p []byte) (int, error) {
	if err := w.actx.Err(); err != nil {
		return 0, w.fail(err)
	}
	w.timer.Reset(w.d)
	n, err := w.r.Read(p)
	w.timer.Stop()
	if err != nil && err != io.EOF {
		return n, w.fail(err)
	}
	return n, err
}

func (w *watched) fail(err error) error {
	if w.ctx.Err() == nil && errors.Is(context.Cause(w.actx), errStall) {
		return fmt.Errorf("get %q: read body: %w: no data for %s", w.key, backends.ErrStalled, w.d)
	}
	return fmt.Errorf("get %q: read body: %w", w.key, err)
}

func (w *watched) Close() error {
	w.timer.Stop()
	err := w.r.Close()
	w.cancel(nil)
	return err
}

// Do runs op, a whole read such as a Get and the reading of its body, as
// one retried operation under the policy of s (found through Unwrap; a
// store without one gets the default policy): at most the policy's
// Attempts tries, or limit if that is smaller and above 0, with the
// policy's backoff, until op succeeds, fails with an error retryable
// rejects (nil means Retryable), or the context ends. Calls to the store
// inside op make one try each, so Do makes at most Attempts requests for
// each call in op. It returns the number of tries made.
func Do(ctx context.Context, s backends.Storage, limit int, retryable func(error) bool, op func(context.Context) error) (int, error) {
	p := policyOf(s)
	tries := p.o.Attempts
	if limit > 0 {
		tries = min(tries, limit)
	}
	if retryable == nil {
		retryable = Retryable
	}
	inner := context.WithValue(ctx, singleKey{}, true)
	return p.loop(ctx, "read", "", tries, retryable, func() error { return op(inner) })
}

var defaultPolicy = sync.OnceValue(func() *Storage { return New(nil, Options{}) })

func policyOf(s backends.Storage) *Storage {
	for s != nil {
		if r, ok := s.(*Storage); ok {
			return r
		}
		u, ok := s.(interface{ Unwrap() backends.Storage })
		if !ok {
			break
		}
		s = u.Unwrap()
	}
	return defaultPolicy()
}

// ReadAll reads the whole of a small object, at most limit bytes, retrying
// the Get together with the reading of its body under the policy of s (see
// Do): a body that stalls or breaks mid-way is read again.
func ReadAll(ctx context.Context, s backends.Storage, key string, limit int64) ([]byte, backends.ObjectInfo, error) {
	var b []byte
	var info backends.ObjectInfo
	_, err := Do(ctx, s, 0, nil, func(ctx context.Context) error {
		rc, i, err := s.Get(ctx, key)
		if err != nil {
			return err
		}
		defer rc.Close()
		b, err = io.ReadAll(io.LimitReader(rc, limit))
		info = i
		return err
	})
	return b, info, err
}
