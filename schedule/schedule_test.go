package schedule

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/walship/walship/internal/testenv"
)

// fakeClock fires timers when advanced.
type fakeClock struct {
	mu     sync.Mutex
	now    time.Time
	timers []fakeTimer
}

type fakeTimer struct {
	at time.Time
	c  chan time.Time
}

func (f *fakeClock) Now() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.now
}

func (f *fakeClock) After(d time.Duration) <-chan time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	c := make(chan time.Time, 1)
	if d <= 0 {
		c <- f.now
		return c
	}
	f.timers = append(f.timers, fakeTimer{f.now.Add(d), c})
	return c
}

func (f *fakeClock) waiting() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.timers)
}

// Advance moves time on and fires the timers that are due.
func (f *fakeClock) Advance(d time.Duration) {
	f.mu.Lock()
	f.now = f.now.Add(d)
	var keep []fakeTimer
	for _, t := range f.timers {
		if !t.at.After(f.now) {
			t.c <- f.now
		} else {
			keep = append(keep, t)
		}
	}
	f.timers = keep
	f.mu.Unlock()
}

func start(t *testing.T, clock *fakeClock, jobs []Job) (*Scheduler, context.CancelFunc, chan error) {
	s, err := New(jobs, clock, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	testenv.WaitFor(t, "the scheduler to wait", 5*time.Second, func() bool { return clock.waiting() > 0 })
	return s, cancel, done
}

func stat(s *Scheduler, name string) Stats {
	for _, st := range s.Stats() {
		if st.Name == name {
			return st
		}
	}
	return Stats{}
}

func TestRunsWhenDueNeverTwiceAtOnce(t *testing.T) {
	clock := &fakeClock{now: time.Date(2026, 11, 26, 1, 59, 0, 0, time.UTC)}
	release := make(chan struct{})
	var mu sync.Mutex
	started := 0
	slow := Job{Name: "backup", Cron: "0 2 * * *", Run: func(ctx context.Context) error {
		mu.Lock()
		started++
		mu.Unlock()
		<-release
		return nil
	}}
	failing := Job{Name: "verify", Cron: "@every 30m", Run: func(ctx context.Context) error { return errors.New("boom") }}
	s, cancel, done := start(t, clock, []Job{slow, failing})
	defer cancel()

	if st := stat(s, "backup"); !st.Next.Equal(time.Date(2026, 11, 26, 2, 0, 0, 0, time.UTC)) {
		t.Fatalf("next backup %v", st.Next)
	}
	clock.Advance(time.Minute) // 02:00: backup starts
	testenv.WaitFor(t, "the backup to start", 5*time.Second, func() bool { return stat(s, "backup").Running })
	clock.Advance(24 * time.Hour) // next 02:00 while the first still runs: skipped
	testenv.WaitFor(t, "the overlapping run to be skipped", 5*time.Second, func() bool { return stat(s, "backup").Skipped == 1 })
	mu.Lock()
	if started != 1 {
		t.Fatalf("backup started %d times", started)
	}
	mu.Unlock()
	close(release)
	testenv.WaitFor(t, "the backup to finish", 5*time.Second, func() bool { return stat(s, "backup").Runs == 1 })
	if st := stat(s, "backup"); st.LastSuccess.IsZero() || st.Failures != 0 {
		t.Fatalf("backup stats %+v", st)
	}
	// The failing job ran at least once, was counted, and the daemon goes on.
	testenv.WaitFor(t, "the failing job to be counted", 5*time.Second, func() bool { return stat(s, "verify").Failures >= 1 })
	if st := stat(s, "verify"); st.LastError != "boom" || !st.LastSuccess.IsZero() {
		t.Fatalf("verify stats %+v", st)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestStopLetsTheRunningJobFinishThenCancels(t *testing.T) {
	clock := &fakeClock{now: time.Date(2026, 11, 26, 0, 0, 0, 0, time.UTC)}
	finish := make(chan struct{})
	var sawCancel bool
	job := Job{Name: "drill", Cron: "@every 1m", Run: func(ctx context.Context) error {
		select {
		case <-finish:
			return nil
		case <-ctx.Done():
			sawCancel = true
			return ctx.Err()
		}
	}}
	s, cancel, done := start(t, clock, []Job{job})
	s.StopTimeout = time.Minute
	clock.Advance(time.Minute)
	testenv.WaitFor(t, "the job to run", 5*time.Second, func() bool { return stat(s, "drill").Running })
	before := clock.waiting()
	cancel() // SIGTERM: the job goes on
	testenv.WaitFor(t, "the stop deadline timer", 5*time.Second, func() bool { return clock.waiting() > before })
	select {
	case err := <-done:
		t.Fatalf("Run returned (%v) while the job was running", err)
	default:
	}
	clock.Advance(time.Minute) // the deadline passes: the job is cancelled
	if err := <-done; err == nil || !sawCancel {
		t.Fatalf("after the deadline: %v, job saw cancel: %v", err, sawCancel)
	}
}

func TestBadCronAndRunOnce(t *testing.T) {
	if _, err := New([]Job{{Name: "x", Cron: "every day", Run: func(context.Context) error { return nil }}}, nil, nil); err == nil {
		t.Fatal("bad cron accepted")
	}
	for _, bad := range []string{"@every 0s", "@every -5s", "@every 300ms", "@every soon", "@every"} {
		if _, err := New([]Job{{Name: "x", Cron: bad, Run: func(context.Context) error { return nil }}}, nil, nil); err == nil {
			t.Errorf("cron %q accepted", bad)
		}
	}
	if _, err := New([]Job{{Name: "x", Cron: "@every 1s", Run: func(context.Context) error { return nil }}}, nil, nil); err != nil {
		t.Errorf("@every 1s refused: %v", err)
	}
	if _, err := New([]Job{{Name: "x", Cron: "@daily"}, {Name: "x", Cron: "@daily"}}, nil, nil); err == nil {
		t.Fatal("duplicate names accepted")
	}
	ran := false
	s, err := New([]Job{{Name: "retention", Cron: "@daily", Run: func(context.Context) error { ran = true; return nil }}}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.RunOnce(context.Background(), "retention"); err != nil || !ran {
		t.Fatalf("run once: %v %v", err, ran)
	}
	if err := s.RunOnce(context.Background(), "nope"); !errors.Is(err, ErrNoJob) {
		t.Fatalf("unknown job: %v", err)
	}
}
