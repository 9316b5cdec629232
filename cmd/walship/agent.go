package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/walship/walship/agent"
	"github.com/walship/walship/config"
	"github.com/walship/walship/postgres"
	"github.com/walship/walship/spool"
)

func agentCommand(env *appEnv) *cli.Command {
	return &cli.Command{
		Name:  "agent",
		Usage: "keep a standby's next WAL segments in a spool, ahead of replay (runs until SIGTERM)",
		Description: "Polls the archive's head object for the timeline, downloads the segments the standby\n" +
			"will need next, several at once and a bounded number ahead, verifies each and renames it\n" +
			"into the spool, where walship fetch --spool takes it. Follows timeline switches, learns\n" +
			"replay from --standby (or from the files the standby takes), removes what replay passed, and\n" +
			"writes its slot's position and heartbeat into the archive.\n" +
			"Runs as the standby's user, who must own the spool (never as root); only one agent per spool.\n" +
			"Exit statuses: 0 stopped by SIGTERM/SIGINT; 2 usage, run as root or as another user than the\n" +
			"spool's owner, or a spool others may write into; 3 archive unreachable at start; 5 spool not\n" +
			"usable or another agent on it; 1 no such slot.",
		Flags: append(globalFlags(),
			&cli.StringFlag{Name: "spool", Usage: "spool directory (absolute; outside pg_wal) [$WALSHIP_SPOOL]"},
			&cli.StringFlag{Name: "slot", Usage: "this follower's slot (walship slot create NAME first)"},
			&cli.StringFlag{Name: "standby", Usage: "connection string of the standby, to read its replay position"},
			&cli.IntFlag{Name: "ahead", Usage: "segments kept ready beyond replay (default 16)"},
			&cli.IntFlag{Name: "parallel", Usage: "downloads at once (default 4)"},
			&cli.DurationFlag{Name: "poll-min", Usage: "first wait for new WAL (default 500ms)"},
			&cli.DurationFlag{Name: "poll-max", Usage: "longest wait while nothing arrives (default 30s)"},
			&cli.DurationFlag{Name: "heartbeat", Usage: "how often the slot is written (default 1m)"},
			&cli.StringFlag{Name: "metrics-addr", Usage: "serve Prometheus metrics here, e.g. 127.0.0.1:9187 (default off)"},
		),
		Action: func(c *cli.Context) error { return env.agent(c) },
	}
}

// agent is walship agent: agent.Run on the configured spool and slot
// until a signal stops it, with its metrics served if asked.
func (e *appEnv) agent(c *cli.Context) error {
	e.daemon = true
	a, err := e.openArchive(c, 0)
	if err != nil {
		return err
	}
	cfg, ac := e.cfg, e.cfg.Agent
	if cfg.Spool == "" || ac.Slot == "" {
		return usageErr("agent needs --spool DIR and --slot NAME (or spool: and agent.slot: in the config file)")
	}
	if err := checkAgentSpool(cfg.Spool); err != nil {
		return err
	}
	log := e.logger()
	o, closeStandby, err := agentOptions(cfg, log)
	if err != nil {
		return err
	}
	defer closeStandby()
	ag := agent.New(a, o)
	if ac.MetricsAddr != "" {
		stop, err := serveMetrics(ac.MetricsAddr, ag.Stats())
		if err != nil {
			return &exitError{code: exitUsage, err: err}
		}
		defer stop()
		log.Info("serving metrics", "addr", ac.MetricsAddr)
	}
	log.Info("agent started", "archive", a.Storage().String(), "spool", cfg.Spool, "slot", ac.Slot)
	if err := ag.Run(c.Context); err != nil {
		code := exitCode(opAgent, err)
		if errors.Is(err, spool.ErrOwner) {
			code = exitUsage
		}
		return &exitError{code: code, err: fmt.Errorf("agent: %w", err)}
	}
	log.Info("agent stopped")
	return nil
}

// agentOptions are the agent's options from the configuration; with a
// standby to ask, its replay position, and the function that closes the
// connection to it.
func agentOptions(cfg config.Config, log *slog.Logger) (agent.Options, func(), error) {
	ac := cfg.Agent
	o := agent.Options{
		Spool: cfg.Spool, Slot: ac.Slot, Ahead: ac.Ahead, Parallel: ac.Parallel,
		PollMin: ac.PollMin, PollMax: ac.PollMax, Heartbeat: ac.Heartbeat, Log: log,
	}
	if ac.Standby == "" {
		return o, func() {}, nil
	}
	sb, err := postgres.NewStandby(ac.Standby)
	if err != nil {
		return o, nil, &exitError{code: exitUsage, err: err}
	}
	o.Position = func(ctx context.Context) (agent.Position, error) {
		ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		r, err := sb.Replay(ctx)
		return agent.Position{Timeline: r.Timeline, Replay: r.ReplayLSN, Redo: r.RedoLSN}, err
	}
	return o, func() { sb.Close(context.Background()) }, nil
}

// checkAgentSpool refuses a spool PostgreSQL would misread or could not
// use: inside pg_wal, written by root, not the agent's user's own.
func checkAgentSpool(dir string) error {
	for _, part := range strings.Split(filepath.Clean(dir), string(filepath.Separator)) {
		if part == "pg_wal" || part == "pg_xlog" {
			return usageErr("spool %s is inside pg_wal: PostgreSQL would take its files for WAL; put it beside the data directory", dir)
		}
	}
	if os.Geteuid() == 0 {
		// PostgreSQL never runs as root, so a root agent's 0600 files
		// are ones the standby cannot open.
		return usageErr("walship agent must not run as root: run it as the user the standby runs as, who owns the spool")
	}
	if err := spool.Check(dir); err != nil {
		code := exitLocal
		if errors.Is(err, spool.ErrOwner) {
			code = exitUsage
		}
		return &exitError{code: code, err: fmt.Errorf("agent: %w", err)}
	}
	return nil
}

// serveMetrics exposes the agent's numbers for Prometheus.
func serveMetrics(addr string, s *agent.Stats) (func(), error) {
	reg := &metricSet{}
	gauge := func(name, help string, f func() float64) { reg.gauge("walship_agent_"+name, help, f) }
	counter := func(name, help string, f func() float64) { reg.counter("walship_agent_"+name, help, f) }
	gauge("timeline", "Timeline the agent follows.", func() float64 { return float64(s.Timeline.Load()) })
	gauge("archive_head_segment", "Segment number of the newest segment in the archive on that timeline.", func() float64 { return float64(s.HeadSegment.Load()) })
	gauge("replay_segment", "Segment number the standby's replay has reached.", func() float64 { return float64(s.ReplaySegment.Load()) })
	gauge("lag_segments", "Archived segments the standby has not replayed.", func() float64 { return float64(s.LagSegments.Load()) })
	gauge("lag_bytes", "Bytes of archived WAL the standby has not replayed.", func() float64 { return float64(s.LagBytes.Load()) })
	gauge("lag_seconds", "Age of the oldest archived segment the standby has not replayed.", func() float64 { return float64(s.LagSeconds.Load()) / 1000 })
	gauge("spool_files", "Segments waiting in the spool.", func() float64 { return float64(s.SpoolFiles.Load()) })
	gauge("spool_bytes", "Bytes waiting in the spool.", func() float64 { return float64(s.SpoolBytes.Load()) })
	counter("downloads_total", "Segments downloaded into the spool.", func() float64 { return float64(s.Downloads.Load()) })
	counter("taken_total", "Segments the standby took from the spool.", func() float64 { return float64(s.Taken.Load()) })
	counter("failures_total", "Failed downloads and archive reads.", func() float64 { return float64(s.Failures.Load()) })
	gauge("last_poll_timestamp_seconds", "When the agent last polled the archive head.", func() float64 { return float64(s.LastPoll.Load()) / 1e9 })
	gauge("segment_gone", "1 when a segment the standby needs is gone from the archive and it must be rebuilt.", func() float64 {
		if s.Gone.Load() {
			return 1
		}
		return 0
	})
	return listenMetrics(addr, reg)
}
