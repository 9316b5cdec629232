package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/walship/walship/archive"
	"github.com/walship/walship/config"
	"github.com/walship/walship/fetch"
	"github.com/walship/walship/segment"
	"github.com/walship/walship/spool"
)

func fetchCommand(env *appEnv) *cli.Command {
	return &cli.Command{
		Name:      "fetch",
		Usage:     "restore one WAL file (restore_command = 'walship fetch %f %p')",
		ArgsUsage: "NAME DEST",
		Description: "Exits 0 only once the complete, verified file is at DEST; 1 only when the archive confirms\n" +
			"NAME is absent. Other statuses: 2 usage or setting, 3 archive unreachable, 4 archived object\n" +
			"damaged or from another cluster, 5 cannot write DEST. During a point-in-time recovery\n" +
			"(recovery.signal without standby.signal in the working directory) 128 is added to 2..5 so that\n" +
			"PostgreSQL stops instead of ending recovery early.\n" +
			"During a recovery (recovery.signal or standby.signal in the working directory) without --spool,\n" +
			"the first segment fetched from the archive starts a background prefetcher that downloads the\n" +
			"next --prefetch segments into DEST's directory/.walship-prefetch; later fetches take them from\n" +
			"there. It exits when recovery ends, the server stops, or no fetch came for --prefetch-idle.",
		Flags: append(globalFlags(),
			&cli.StringFlag{Name: "spool", Usage: "take the file from walship agent's spool when it is there [$WALSHIP_SPOOL]"},
			&cli.IntFlag{Name: "prefetch", Usage: "segments a background prefetcher keeps ready during a recovery; 0 for none (default 16) [$WALSHIP_FETCH_PREFETCH]"},
			&cli.StringFlag{Name: "prefetch-bytes", Usage: "bound on the bytes of those segments (default 256MiB) [$WALSHIP_FETCH_PREFETCH_BYTES]"},
			&cli.StringFlag{Name: "prefetch-dir", Usage: "the prefetcher's spool, absolute (default DEST's directory/.walship-prefetch) [$WALSHIP_FETCH_PREFETCH_DIR]"},
			&cli.DurationFlag{Name: "prefetch-idle", Usage: "the prefetcher exits when no fetch came for this long (default 1m) [$WALSHIP_FETCH_PREFETCH_IDLE]"},
			&cli.IntFlag{Name: "prefetch-parallel", Usage: "downloads the prefetcher runs at once (default 2) [$WALSHIP_FETCH_PREFETCH_PARALLEL]"},
			// The detached prefetcher itself: walship fetch --prefetch-run DATADIR.
			&cli.StringFlag{Name: "prefetch-run", Hidden: true},
		),
		Action: func(c *cli.Context) error {
			if c.IsSet("prefetch-run") {
				// Logged, with status 0 whatever happens: the prefetcher
				// is only an optimisation (fetch works without it), and a
				// detached process may be reaped by the postmaster itself
				// (PID 1 in a container), which must not take an unknown
				// child's failure for a crashed backend.
				if err := runPrefetcher(c, env); err != nil {
					env.logger().Warn("prefetcher stopped: " + oneLine(err.Error()))
				}
				return nil
			}
			if err := env.load(c); err != nil {
				return env.fetchExit(err)
			}
			if c.NArg() != 2 {
				return env.fetchExit(&exitError{code: exitUsage, err: fmt.Errorf("fetch takes NAME and DEST, got %d arguments", c.NArg())})
			}
			name, dest := c.Args().Get(0), c.Args().Get(1)
			if _, err := segment.ParseFile(name); err != nil {
				return env.fetchExit(&exitError{code: exitUsage, err: fmt.Errorf("fetch: %w", err)})
			}
			if strings.TrimSpace(dest) == "" {
				return env.fetchExit(usageErr("fetch: DEST is empty"))
			}
			if err := env.requireArchive(); err != nil {
				return env.fetchExit(err)
			}
			if err := fetchSettings(c, &env.cfg); err != nil {
				return env.fetchExit(err)
			}
			spoolDir := env.cfg.Spool
			if c.IsSet("spool") {
				spoolDir = c.String("spool")
			}
			if spoolDir != "" && !filepath.IsAbs(spoolDir) {
				// PostgreSQL runs restore_command in the data directory: a
				// relative spool would be looked for inside it.
				return env.fetchExit(usageErr("--spool %q: want an absolute directory", spoolDir))
			}
			if spoolDir != "" {
				if done, err := fetchFromAgentSpool(env, spoolDir, name, dest); done {
					return err
				}
			}
			pf := env.prefetchSpool(spoolDir, dest)
			if pf != nil {
				start := time.Now()
				took, err := pf.Take(name, dest)
				if took {
					env.notePrefetch(pf, name, true)
					env.logger().Info("fetched from the prefetch spool", "file", name, "ms", time.Since(start).Milliseconds())
					return nil
				}
				if err != nil {
					env.logger().Warn("prefetch spool file not taken; fetching from the archive", "error", err)
				}
			}
			return env.fetchFromArchive(c, pf, name, dest)
		},
	}
}

// fetchFromAgentSpool takes name from walship agent's spool. It reports
// done when fetch has its answer (the file, or absent per a live agent's
// poll, outside a point-in-time recovery).
func fetchFromAgentSpool(env *appEnv, dir, name, dest string) (bool, error) {
	// The agent verified the file when it placed it, and fetch checks it
	// again (a regular file of the segment size with a page header for
	// this name): a rename hands it over. Anything wrong with the spool
	// falls back to the archive.
	start := time.Now()
	took, err := spool.Take(dir, name, dest)
	if took {
		env.logger().Info("fetched from spool", "file", name, "ms", time.Since(start).Milliseconds())
		return true, nil
	}
	if err != nil {
		env.logger().Warn("spool unusable; fetching from the archive", "error", err)
	}
	// A waiting standby asks for the next file every few seconds; the
	// agent's last poll answers without a request. Never during a
	// point-in-time recovery, where "absent" ends recovery.
	if !inArchiveRecovery() && spool.KnownAbsent(dir, name, time.Now()) {
		env.logger().Debug("not in archive (per the agent's last poll)", "file", name)
		return true, &exitError{code: exitAbsent, err: fmt.Errorf("%s: not archived yet", name), logged: true}
	}
	return false, nil
}

// fetchFromArchive restores name from the archive itself: the only place
// whose not-found makes fetch answer "absent". With a prefetch spool, it
// tells the prefetcher what happened and, after a segment, starts one if
// none runs.
func (e *appEnv) fetchFromArchive(c *cli.Context, pf *fetch.PrefetchSpool, name, dest string) error {
	store, err := openStorage(c.Context, e.cfg)
	if err != nil {
		return e.fetchExit(&exitError{code: exitCode(opFetch, err), err: err})
	}
	log := e.logger()
	res, err := fetch.Fetch(c.Context, archive.New(store, log), name, dest, fetch.Options{})
	if pf != nil {
		e.notePrefetch(pf, name, err == nil)
		if err == nil && res.File.Kind == segment.KindSegment && !pf.Running() {
			e.startPrefetcher(pf, name)
		}
	}
	if err == nil {
		log.Info("fetched", "file", name, "bytes", res.Size, "attempts", res.Attempts, "ms", res.Elapsed.Milliseconds())
		return nil
	}
	code := exitCode(opFetch, err)
	if code == exitAbsent {
		log.Info("not in archive", "file", name)
		return &exitError{code: code, err: err, logged: true}
	}
	return e.fetchExit(&exitError{code: code, err: fmt.Errorf("fetch %s: %w", name, err)})
}

// fetchExit raises a failure status above 125 during a point-in-time
// recovery, where PostgreSQL would read 1..125 as "no more WAL" and end
// recovery at the wrong point. A standby retries instead, so it keeps the
// plain status.
func (e *appEnv) fetchExit(err error) error {
	var ee *exitError
	if !errors.As(err, &ee) || ee.code == exitOK || ee.code == exitAbsent {
		return err
	}
	if inArchiveRecovery() {
		ee.code += recoveryAbort
	}
	return ee
}

func inArchiveRecovery() bool {
	_, rerr := os.Stat("recovery.signal")
	_, serr := os.Stat("standby.signal")
	return rerr == nil && serr != nil
}

// inRecovery: the working directory, where PostgreSQL runs
// restore_command, is a data directory in recovery.
func inRecovery() bool {
	_, rerr := os.Stat("recovery.signal")
	_, serr := os.Stat("standby.signal")
	return rerr == nil || serr == nil
}

// fetchSettings applies fetch's prefetch flags over the configuration.
func fetchSettings(c *cli.Context, cfg *config.Config) error {
	if c.IsSet("prefetch") {
		cfg.Fetch.Prefetch = c.Int("prefetch")
	}
	if c.IsSet("prefetch-bytes") {
		b, err := config.ParseByteSize(c.String("prefetch-bytes"))
		if err != nil {
			return usageErr("--prefetch-bytes: %v", err)
		}
		cfg.Fetch.PrefetchBytes = b
	}
	if c.IsSet("prefetch-dir") {
		cfg.Fetch.PrefetchDir = c.String("prefetch-dir")
	}
	if c.IsSet("prefetch-idle") {
		cfg.Fetch.PrefetchIdle = c.Duration("prefetch-idle")
	}
	if c.IsSet("prefetch-parallel") {
		cfg.Fetch.PrefetchParallel = c.Int("prefetch-parallel")
	}
	if err := cfg.Validate(); err != nil {
		return &exitError{code: exitUsage, err: err}
	}
	return nil
}

// prefetchSpool is the prefetcher's spool for this fetch, or nil when
// there is none: prefetch off, walship agent's spool in use, not run by a
// server in recovery, or run as root (PostgreSQL never is, and could not
// open a root prefetcher's files).
func (e *appEnv) prefetchSpool(agentSpool, dest string) *fetch.PrefetchSpool {
	f := e.cfg.Fetch
	if f.Prefetch == 0 || agentSpool != "" || os.Geteuid() == 0 || !inRecovery() {
		return nil
	}
	dir := f.PrefetchDir
	if dir == "" {
		abs, err := filepath.Abs(filepath.Dir(dest))
		if err != nil {
			return nil
		}
		dir = filepath.Join(abs, fetch.PrefetchDirName)
	}
	return &fetch.PrefetchSpool{Dir: dir, Archive: archiveName(e.cfg)}
}

// archiveName names the archive in the prefetcher's spool: the place, and
// for S3 the endpoint (never credentials: the settings hold none).
func archiveName(cfg config.Config) string {
	u, err := config.ParseArchive(cfg.Archive)
	switch {
	case err != nil:
		return cfg.Archive
	case u.Scheme == "file":
		return "file://" + u.Path
	case cfg.S3.Endpoint != "":
		return "s3://" + u.Bucket + "/" + u.Prefix + " at " + cfg.S3.Endpoint
	}
	return "s3://" + u.Bucket + "/" + u.Prefix
}

func (e *appEnv) notePrefetch(pf *fetch.PrefetchSpool, name string, delivered bool) {
	if err := pf.Note(name, delivered); err != nil {
		e.logger().Warn("cannot tell the prefetcher", "error", err)
	}
}

// envPrefetchConfig carries fetch's whole configuration to the prefetcher
// it starts, so that both read the same archive the same way. It holds no
// secret: the configuration never does.
const envPrefetchConfig = "WALSHIP_PREFETCH_CONFIG"

// startPrefetcher starts the prefetcher detached: in its own session (no
// signal to PostgreSQL's startup process reaches it), stdin and stdout on
// /dev/null, stderr into its log in the spool, never waited for. A failure
// is logged: the fetch itself has succeeded.
func (e *appEnv) startPrefetcher(pf *fetch.PrefetchSpool, after string) {
	log := e.logger()
	if err := e.spawnPrefetcher(pf, after); err != nil {
		log.Warn("prefetcher not started; fetching each file from the archive", "error", err)
		return
	}
	log.Debug("prefetcher started", "spool", pf.Dir, "after", after)
}

func (e *appEnv) spawnPrefetcher(pf *fetch.PrefetchSpool, after string) error {
	if err := pf.Prepare(); err != nil {
		return err
	}
	e.notePrefetch(pf, after, true) // the spool exists now: where to start
	wd, err := os.Getwd()
	if err != nil {
		return err
	}
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	cfg := e.cfg
	cfg.Fetch.PrefetchDir = pf.Dir
	b, err := json.Marshal(cfg)
	if err != nil {
		return err
	}
	// Appended to, not truncated: a second start racing a running
	// prefetcher must not wipe its log. Cut back once it grows large.
	logPath := filepath.Join(pf.Dir, spool.LogFile)
	if st, err := os.Stat(logPath); err == nil && st.Size() > 16<<20 {
		_ = os.Truncate(logPath, 0)
	}
	logf, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd := exec.Command(exe, "fetch", "--prefetch-run", wd)
	cmd.Dir = wd
	cmd.Env = append(os.Environ(), envPrefetchConfig+"="+string(b))
	cmd.Stderr = logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return err
	}
	return cmd.Process.Release()
}

// runPrefetcher is the detached prefetcher: walship fetch --prefetch-run
// DATADIR, started by startPrefetcher with fetch's configuration. It
// leaves one core to PostgreSQL's replay, which is single-threaded, and
// keeps its heap near 64 MiB.
func runPrefetcher(c *cli.Context, env *appEnv) error {
	env.daemon = true
	if err := json.Unmarshal([]byte(os.Getenv(envPrefetchConfig)), &env.cfg); err != nil {
		return usageErr("prefetcher: no configuration in %s: %v", envPrefetchConfig, err)
	}
	if err := env.cfg.Validate(); err != nil {
		return &exitError{code: exitUsage, err: err}
	}
	env.log = newLogger(env.stderr, env.cfg.LogFormat, env.cfg.LogLevel)
	runtime.GOMAXPROCS(max(1, runtime.NumCPU()-1))
	if os.Getenv("GOMEMLIMIT") == "" {
		// Each download holds a zstd window of up to a segment (about
		// 17 MiB live for 16 MiB segments): collect before the heap
		// doubles over them. GOMEMLIMIT in the environment wins.
		debug.SetMemoryLimit(64 << 20)
	}
	store, err := openStorage(c.Context, env.cfg)
	if err != nil {
		return &exitError{code: exitCode(opFetch, err), err: err}
	}
	f := env.cfg.Fetch
	p := fetch.NewPrefetcher(archive.New(store, env.log), fetch.PrefetchOptions{
		Spool: f.PrefetchDir, PGData: c.String("prefetch-run"), Archive: archiveName(env.cfg),
		Ahead: f.Prefetch, MaxBytes: int64(f.PrefetchBytes), Parallel: f.PrefetchParallel, Idle: f.PrefetchIdle, Log: env.log,
	})
	why, err := p.Run(c.Context)
	if err != nil {
		return &exitError{code: exitCode(opFetch, err), err: fmt.Errorf("prefetcher: %w", err)}
	}
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	s := p.Stats()
	env.log.Info("prefetcher stopped", "why", why, "downloads", s.Downloads.Load(), "missing", s.Missing.Load(),
		"failures", s.Failures.Load(), "peak_rss_kib", ru.Maxrss)
	return nil
}
