// Package schedule runs jobs from cron expressions: never one job twice at
// once, a failure logged and counted and the daemon going on, and on stop
// the running jobs given a deadline to finish. Expressions are parsed and
// their next times computed by robfig/cron/v3; the loop that waits for
// them takes an injectable clock, so that timing is tested without sleeping.
package schedule

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/robfig/cron/v3"
)

// ErrNoJob is RunOnce's error for a name not configured.
var ErrNoJob = errors.New("no such job")

// Job is one scheduled piece of work.
type Job struct {
	Name string
	Cron string // "0 2 * * *", "@daily", "@every 6h"
	Run  func(ctx context.Context) error
}

// Clock is time for the scheduler.
type Clock interface {
	Now() time.Time
	After(d time.Duration) <-chan time.Time
}

type realClock struct{}

func (realClock) Now() time.Time                         { return time.Now() }
func (realClock) After(d time.Duration) <-chan time.Time { return time.After(d) }

// Stats is one job's record.
type Stats struct {
	Name         string        `json:"name"`
	Cron         string        `json:"cron"`
	Next         time.Time     `json:"next"`
	Running      bool          `json:"running"`
	Runs         int           `json:"runs"`
	Failures     int           `json:"failures"`
	Skipped      int           `json:"skipped"` // due while still running
	LastSuccess  time.Time     `json:"last_success"`
	LastDuration time.Duration `json:"last_duration"`
	LastError    string        `json:"last_error,omitempty"`
}

type entry struct {
	job   Job
	sched cron.Schedule
	stats Stats
}

// Scheduler runs jobs.
type Scheduler struct {
	clock Clock
	log   *slog.Logger
	// StopTimeout is how long running jobs may go on after Run's context
	// ends; then their own contexts are cancelled.
	StopTimeout time.Duration

	mu      sync.Mutex
	entries []*entry
	wg      sync.WaitGroup
}

// New parses every job's expression; a bad one is an error naming it.
func New(jobs []Job, clock Clock, log *slog.Logger) (*Scheduler, error) {
	if clock == nil {
		clock = realClock{}
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Scheduler{clock: clock, log: log, StopTimeout: 10 * time.Minute}
	seen := map[string]bool{}
	for _, j := range jobs {
		if j.Name == "" || seen[j.Name] {
			return nil, fmt.Errorf("schedule: job names must be unique and not empty (%q)", j.Name)
		}
		seen[j.Name] = true
		sc, err := parseCron(j.Cron)
		if err != nil {
			return nil, fmt.Errorf("schedule: job %s: cron %q: %w", j.Name, j.Cron, err)
		}
		s.entries = append(s.entries, &entry{job: j, sched: sc, stats: Stats{Name: j.Name, Cron: j.Cron}})
	}
	return s, nil
}

// Stats returns every job's record, by name.
func (s *Scheduler) Stats() []Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Stats, 0, len(s.entries))
	for _, e := range s.entries {
		out = append(out, e.stats)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Run starts jobs when due until ctx ends, then waits for running jobs up
// to StopTimeout, cancels them, and waits for them to return.
func (s *Scheduler) Run(ctx context.Context) error {
	jobCtx, cancelJobs := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelJobs()
	now := s.clock.Now()
	s.mu.Lock()
	for _, e := range s.entries {
		e.stats.Next = e.sched.Next(now)
	}
	s.mu.Unlock()
	for {
		s.mu.Lock()
		var soonest time.Time
		for _, e := range s.entries {
			if soonest.IsZero() || e.stats.Next.Before(soonest) {
				soonest = e.stats.Next
			}
		}
		s.mu.Unlock()
		var timer <-chan time.Time
		if !soonest.IsZero() {
			timer = s.clock.After(max(soonest.Sub(s.clock.Now()), 0))
		}
		select {
		case <-ctx.Done():
			return s.stop(cancelJobs)
		case <-timer:
		}
		now := s.clock.Now()
		s.mu.Lock()
		for _, e := range s.entries {
			if e.stats.Next.After(now) {
				continue
			}
			e.stats.Next = e.sched.Next(now)
			if e.stats.Running {
				e.stats.Skipped++
				s.log.Warn("job still running; this run skipped", "job", e.job.Name, "next", e.stats.Next)
				continue
			}
			e.stats.Running = true
			s.wg.Add(1)
			go s.run(jobCtx, e)
		}
		s.mu.Unlock()
	}
}

// stop waits for running jobs, at most StopTimeout, then cancels them.
func (s *Scheduler) stop(cancelJobs context.CancelFunc) error {
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-s.clock.After(s.StopTimeout):
		s.log.Warn("running jobs did not finish in time; cancelling them", "timeout", s.StopTimeout)
		cancelJobs()
		<-done
		return fmt.Errorf("schedule: jobs cancelled after %s", s.StopTimeout)
	}
}

func (s *Scheduler) run(ctx context.Context, e *entry) {
	defer s.wg.Done()
	err := s.exec(ctx, e)
	s.mu.Lock()
	e.stats.Running = false
	s.mu.Unlock()
	_ = err // logged and counted by exec
}

// exec runs a job once and records the outcome.
func (s *Scheduler) exec(ctx context.Context, e *entry) error {
	start := s.clock.Now()
	s.log.Info("job started", "job", e.job.Name)
	err := e.job.Run(ctx)
	took := s.clock.Now().Sub(start)
	s.mu.Lock()
	e.stats.Runs++
	e.stats.LastDuration = took
	if err != nil {
		e.stats.Failures++
		e.stats.LastError = err.Error()
	} else {
		e.stats.LastSuccess = s.clock.Now()
		e.stats.LastError = ""
	}
	s.mu.Unlock()
	if err != nil {
		s.log.Error("job failed", "job", e.job.Name, "seconds", took.Seconds(), "error", err)
	} else {
		s.log.Info("job done", "job", e.job.Name, "seconds", took.Seconds())
	}
	return err
}

// RunOnce runs the named job now, for cron-less setups.
func (s *Scheduler) RunOnce(ctx context.Context, name string) error {
	for _, e := range s.entries {
		if e.job.Name == name {
			return s.exec(ctx, e)
		}
	}
	return fmt.Errorf("%w: %s", ErrNoJob, name)
}

// parseCron is cron.ParseStandard, except that "@every D" must name at
// least one second: the library silently turns 0s, -5s and 300ms into
// "every second", which would run a backup in a loop.
func parseCron(expr string) (cron.Schedule, error) {
	if d, ok := strings.CutPrefix(strings.TrimSpace(expr), "@every "); ok {
		dur, err := time.ParseDuration(strings.TrimSpace(d))
		if err != nil {
			return nil, fmt.Errorf("@every: %w", err)
		}
		if dur < time.Second {
			return nil, fmt.Errorf("@every %s: the interval must be at least 1s", dur)
		}
	}
	return cron.ParseStandard(expr)
}
