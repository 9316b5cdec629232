package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/walship/walship/backup"
	"github.com/walship/walship/config"
	"github.com/walship/walship/drill"
	"github.com/walship/walship/postgres"
	"github.com/walship/walship/retention"
	"github.com/walship/walship/schedule"
	"github.com/walship/walship/verify"
)

func scheduleCommand(env *appEnv) *cli.Command {
	return &cli.Command{
		Name:  "schedule",
		Usage: "run the jobs of the config file's schedule: section from their cron expressions (a daemon)",
		Description: "Job kinds: backup (backup push; type: full or incremental, default backup.type),\n" +
			"retention (retention apply with the retention: policy), verify (verify, or --quick with\n" +
			"quick: true), drill (restore the newest backup into a scratch directory, start PostgreSQL on\n" +
			"a scratch port with recovery_target = immediate, check that it answers a query, clean up).\n" +
			"A job never runs twice at once; a failing job is logged and counted and the daemon goes on;\n" +
			"SIGTERM lets the running job finish (schedule.stop_timeout). `walship schedule run JOB` runs\n" +
			"one job once. Exit statuses: 0 stopped; 2 usage; run: the job's.",
		Flags: globalFlags(),
		Subcommands: []*cli.Command{{
			Name: "run", Usage: "run one job once, now", ArgsUsage: "JOB", Flags: globalFlags(),
			Action: func(c *cli.Context) error {
				s, _, err := env.scheduler(c, 1)
				if err != nil {
					return err
				}
				if err := s.RunOnce(c.Context, c.Args().First()); err != nil {
					code := exitCode(opBackup, err)
					if errors.Is(err, schedule.ErrNoJob) {
						code = exitUsage
					}
					return &exitError{code: code, err: err, logged: !errors.Is(err, schedule.ErrNoJob)}
				}
				return nil
			},
		}},
		Action: func(c *cli.Context) error {
			env.daemon = true
			s, cfg, err := env.scheduler(c, 0)
			if err != nil {
				return err
			}
			if cfg.Schedule.MetricsAddr != "" {
				stop, err := serveScheduleMetrics(cfg.Schedule.MetricsAddr, s)
				if err != nil {
					return &exitError{code: exitUsage, err: err}
				}
				defer stop()
			}
			env.logger().Info("scheduler started", "jobs", len(cfg.Schedule.Jobs))
			if err := s.Run(c.Context); err != nil {
				return &exitError{code: exitArchive, err: err}
			}
			env.logger().Info("scheduler stopped")
			return nil
		},
	}
}

// scheduler builds the jobs the configuration names.
func (e *appEnv) scheduler(c *cli.Context, nargs int) (*schedule.Scheduler, config.Config, error) {
	a, err := e.openArchive(c, nargs)
	if err != nil {
		return nil, e.cfg, err
	}
	cfg := e.cfg
	if len(cfg.Schedule.Jobs) == 0 {
		return nil, cfg, usageErr("no jobs: put them under schedule.jobs in the config file (--config)")
	}
	comp, err := cfg.CompressionSetting()
	if err != nil {
		return nil, cfg, &exitError{code: exitUsage, err: err}
	}
	restoreCmd, err := e.restoreCommandLine()
	if err != nil {
		return nil, cfg, err
	}
	log := e.logger()
	var jobs []schedule.Job
	for _, j := range cfg.Schedule.Jobs {
		var run func(ctx context.Context) error
		switch j.Kind {
		case "backup":
			run = func(ctx context.Context) error {
				conn, err := postgres.Connect(ctx, j.PG)
				if err != nil {
					return err
				}
				defer conn.Close(context.WithoutCancel(ctx))
				typ := j.Type
				if typ == "" {
					typ = cfg.Backup.Type
				}
				_, err = backup.Push(ctx, a, conn, backup.Options{Compression: comp, FastCheckpoint: j.Checkpoint == "fast", Log: log,
					Incremental: typ == config.BackupIncremental})
				return err
			}
		case "retention":
			if cfg.Retention.KeepLast == 0 && cfg.Retention.KeepWithin == 0 {
				return nil, cfg, usageErr("job %s: %v (retention: keep_last / keep_within in the config file)", j.Name, retention.ErrNoPolicy)
			}
			run = func(ctx context.Context) error {
				r := cfg.Retention
				_, _, err := retention.Run(ctx, a, retention.Policy{KeepLast: r.KeepLast, KeepWithin: r.KeepWithin, Grace: r.Grace}, time.Now(), true, log)
				return err
			}
		case "verify":
			run = func(ctx context.Context) error {
				r, err := verify.Run(ctx, a, verify.Options{Quick: j.Quick})
				if err != nil {
					return err
				}
				return r.Err()
			}
		case "drill":
			run = func(ctx context.Context) error {
				res, err := drill.Run(ctx, a, drill.Options{PGBin: j.PGBin, Scratch: j.Scratch, Timeout: j.Timeout,
					RestoreCommand: restoreCmd, Query: drillQuery, Log: log})
				if err != nil {
					return err
				}
				log.Info("restore drill passed", "backup", res.Backup, "restore_seconds", res.Restore.Seconds(),
					"recovery_seconds", res.Recovery.Seconds(), "total_seconds", res.Total.Seconds(), "answer", res.Answer)
				return nil
			}
		}
		jobs = append(jobs, schedule.Job{Name: j.Name, Cron: j.Cron, Run: run})
	}
	s, err := schedule.New(jobs, nil, log)
	if err != nil {
		return nil, cfg, &exitError{code: exitUsage, err: err}
	}
	s.StopTimeout = cfg.Schedule.StopTimeout
	return s, cfg, nil
}

// drillQuery succeeds once the restored server is out of recovery and
// answers.
func drillQuery(ctx context.Context, conn string) (string, error) {
	row, err := postgres.Query(ctx, conn, "SELECT pg_is_in_recovery(), current_setting('server_version'), (SELECT count(*) FROM pg_database)")
	if err != nil {
		return "", err
	}
	if row[0] != "f" {
		return "", fmt.Errorf("still in recovery")
	}
	return fmt.Sprintf("PostgreSQL %s, %s databases", row[1], row[2]), nil
}

// serveScheduleMetrics exposes per job its last success time, last
// duration and failures.
func serveScheduleMetrics(addr string, s *schedule.Scheduler) (func(), error) {
	reg := &metricSet{}
	for _, st := range s.Stats() {
		name := st.Name
		get := func() schedule.Stats {
			for _, x := range s.Stats() {
				if x.Name == name {
					return x
				}
			}
			return schedule.Stats{}
		}
		reg.gauge("walship_schedule_last_success_timestamp_seconds", "When the job last succeeded (0: never).", func() float64 {
			if t := get().LastSuccess; !t.IsZero() {
				return float64(t.UnixNano()) / 1e9
			}
			return 0
		}, "job", name)
		reg.gauge("walship_schedule_last_duration_seconds", "How long the job's last run took.",
			func() float64 { return get().LastDuration.Seconds() }, "job", name)
		reg.counter("walship_schedule_failures_total", "Failed runs of the job.",
			func() float64 { return float64(get().Failures) }, "job", name)
		reg.counter("walship_schedule_skipped_total", "Runs skipped because the job was still running.",
			func() float64 { return float64(get().Skipped) }, "job", name)
	}
	return listenMetrics(addr, reg)
}

func listenMetrics(addr string, reg *metricSet) (func(), error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics address %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", reg)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
	}, nil
}
