package main

import (
	"context"
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
			"next --prefetch segments into DEST's directory/.walship-prefetch; the restore_command walship\n" +
			"restore writes moves them from there with mv, later fetches take them too. It exits when\n" +
			"recovery ends, the server stops, or nothing was taken and no fetch came for --prefetch-idle.",
		Flags: append(globalFlags(),
			&cli.StringFlag{Name: "spool", Usage: "take the file from walship agent's spool when it is there [$WALSHIP_SPOOL]"},
			&cli.IntFlag{Name: "prefetch", Usage: "segments a background prefetcher keeps ready during a recovery; 0 for none (default 16) [$WALSHIP_FETCH_PREFETCH]"},
			&cli.StringFlag{Name: "prefetch-bytes", Usage: "bound on the bytes of those segments (default 256MiB) [$WALSHIP_FETCH_PREFETCH_BYTES]"},
			&cli.StringFlag{Name: "prefetch-dir", Usage: "the prefetcher's spool, absolute (default DEST's directory/.walship-prefetch) [$WALSHIP_FETCH_PREFETCH_DIR]"},
			&cli.DurationFlag{Name: "prefetch-idle", Usage: "the prefetcher exits when nothing was taken and no fetch came for this long (default 1m) [$WALSHIP_FETCH_PREFETCH_IDLE]"},
			&cli.IntFlag{Name: "prefetch-parallel", Usage: "downloads the prefetcher runs at once (default 2) [$WALSHIP_FETCH_PREFETCH_PARALLEL]"},
			// The detached prefetcher itself: walship fetch --prefetch-run DATADIR.
			&cli.StringFlag{Name: "prefetch-run", Hidden: true},
		),
		Action: func(c *cli.Context) error { return env.fetch(c) },
	}
}

// fetch is walship fetch NAME DEST: fetch.Run with the spools this
// configuration and the working directory name, its outcome mapped to the
// exit statuses PostgreSQL reads.
func (e *appEnv) fetch(c *cli.Context) error {
	if c.IsSet("prefetch-run") {
		// Logged, with status 0 whatever happens: the prefetcher is only
		// an optimisation (fetch works without it), and a detached
		// process may be reaped by the postmaster itself (PID 1 in a
		// container), which must not take an unknown child's failure
		// for a crashed backend.
		if err := runPrefetcher(c, e); err != nil {
			e.logger().Warn("prefetcher stopped: " + oneLine(err.Error()))
		}
		return nil
	}
	name, dest, err := e.fetchArgs(c)
	if err != nil {
		return e.fetchExit(err)
	}
	open := func(ctx context.Context) (*archive.Archive, error) {
		store, err := openStorage(ctx, e.cfg)
		if err != nil {
			return nil, err
		}
		return archive.New(store, e.logger()), nil
	}
	out, err := fetch.Run(c.Context, open, name, dest, fetch.Plan{
		Spool: e.cfg.Spool, ArchiveRecovery: inArchiveRecovery(), Prefetch: e.prefetchSpool(dest),
		Spawn: e.spawnPrefetcher, Log: e.logger(),
	})
	switch out.Status {
	case fetch.Delivered:
		return nil
	case fetch.Absent:
		why := "not in the archive"
		if out.Source == fetch.FromAgentSpool {
			why = "not archived yet"
		}
		return &exitError{code: exitAbsent, err: fmt.Errorf("%s: %s", name, why), logged: true}
	}
	return e.fetchExit(&exitError{code: exitCode(opFetch, err), err: err})
}

// fetchArgs loads the configuration and checks fetch's arguments: a WAL
// file name and a destination.
func (e *appEnv) fetchArgs(c *cli.Context) (name, dest string, err error) {
	if err := e.load(c); err != nil {
		return "", "", err
	}
	if c.NArg() != 2 {
		return "", "", &exitError{code: exitUsage, err: fmt.Errorf("fetch takes NAME and DEST, got %d arguments", c.NArg())}
	}
	name, dest = c.Args().Get(0), c.Args().Get(1)
	if _, err := segment.ParseFile(name); err != nil {
		return "", "", &exitError{code: exitUsage, err: fmt.Errorf("fetch: %w", err)}
	}
	if strings.TrimSpace(dest) == "" {
		return "", "", usageErr("fetch: DEST is empty")
	}
	if err := e.requireArchive(); err != nil {
		return "", "", err
	}
	return name, dest, nil
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

// prefetchSpool is the prefetcher's spool for this fetch, or nil when
// there is none: prefetch off, walship agent's spool in use, not run by a
// server in recovery, or run as root (PostgreSQL never is, and could not
// open a root prefetcher's files).
func (e *appEnv) prefetchSpool(dest string) *fetch.PrefetchSpool {
	f := e.cfg.Fetch
	if f.Prefetch == 0 || e.cfg.Spool != "" || os.Geteuid() == 0 || !inRecovery() {
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

// envPrefetchConfig carries fetch's whole configuration to the prefetcher
// it starts, so that both read the same archive the same way. It holds no
// secret: the configuration never does.
const envPrefetchConfig = "WALSHIP_PREFETCH_CONFIG"

// spawnPrefetcher starts the prefetcher on pf detached: in its own
// session (no signal to PostgreSQL's startup process reaches it), stdin and
// stdout on /dev/null, stderr into its log in the spool, never waited for.
func (e *appEnv) spawnPrefetcher(pf fetch.PrefetchSpool) error {
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
// DATADIR, started by spawnPrefetcher with fetch's configuration. It
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
	env.log.Info("prefetcher stopped", "why", why, "downloads", s.Downloads.Load(), "taken", s.Taken.Load(), "missing", s.Missing.Load(),
		"failures", s.Failures.Load(), "peak_rss_kib", ru.Maxrss)
	return nil
}
