// Command walship ships a PostgreSQL primary's write-ahead log to an archive
// and brings it back. This package only wires: flags and configuration,
// logging, signals, and the mapping from errors to exit statuses.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime/pprof"
	"strings"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/walship/walship/config"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	os.Exit(run(os.Args, os.Stdout, os.Stderr))
}

// run is main without the exit, for tests.
func run(args []string, stdout, stderr io.Writer) int {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sig := watchSignals(ctx, cancel)
	defer startCPUProfile()()
	env := &appEnv{stdout: stdout, stderr: stderr, getenv: os.Getenv, expired: make(chan struct{})}
	app := newApp(env)
	err, stuck := runWatched(ctx, env, func() error { return app.RunContext(ctx, flagsFirst(app, args)) })
	if stuck != nil && ctx.Err() == nil {
		// A system call that never returns (a hung NFS mount, a FIFO
		// where a file should be) must not hold PostgreSQL's archiver or
		// startup process past the deadline: give up without clean-up.
		env.logger().Error(stuck.Error())
		ee := &exitError{code: exitArchive, err: stuck}
		if env.command == "fetch" {
			_ = env.fetchExit(ee)
		}
		return ee.code
	}
	if stuck != nil {
		// Stopped by a signal and stuck: die by the signal all the same.
		env.logger().Error(stuck.Error())
	}
	timedOut := env.timedOut()
	if env.release != nil {
		env.release()
	}
	cancel()
	got := sig.wait()
	if got != nil && !env.daemon {
		return env.dieBy(got)
	}
	return env.status(err, got, timedOut)
}

// signalWatch cancels the command's context on SIGINT or SIGTERM and
// remembers the signal.
type signalWatch struct {
	got  os.Signal
	done chan struct{}
}

func watchSignals(ctx context.Context, cancel context.CancelFunc) *signalWatch {
	w := &signalWatch{done: make(chan struct{})}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		defer close(w.done)
		select {
		case w.got = <-sigs:
			cancel()
		case <-ctx.Done():
		}
	}()
	return w
}

// wait returns the signal that stopped the command, nil if none; ctx must
// have ended.
func (w *signalWatch) wait() os.Signal {
	<-w.done
	return w.got
}

// startCPUProfile writes a CPU profile of the command when
// WALSHIP_CPUPROFILE names a file (for developers); it returns the stop.
func startCPUProfile() func() {
	if path := os.Getenv("WALSHIP_CPUPROFILE"); path != "" {
		if f, err := os.Create(path); err == nil {
			if pprof.StartCPUProfile(f) == nil {
				return pprof.StopCPUProfile
			}
		}
	}
	return func() {}
}

// dieBy ends a command that a signal stopped, after its clean-up has run
// (temporary files removed). PostgreSQL tells a shutdown from a failure by
// the signal that ended the command, so walship dies by the same signal.
// A daemon (agent, schedule) stopped by a signal has done what it was
// asked, and exits with its status instead (see status).
func (e *appEnv) dieBy(got os.Signal) int {
	e.logger().Error("stopped by signal " + got.String())
	sig := got.(syscall.Signal)
	signal.Reset(sig)
	_ = syscall.Kill(os.Getpid(), sig)
	if !signal.Ignored(sig) {
		// The signal arrives asynchronously: exiting first would end
		// with status 128+n instead of the death by signal.
		time.Sleep(time.Second)
	}
	// Still here: the signal was ignored when walship started (a
	// background job of a non-interactive shell). Exit as a shell
	// reports a death by that signal.
	return 128 + int(sig)
}

// status maps the command's error to its exit status, and logs it unless
// the command did.
func (e *appEnv) status(err error, got os.Signal, timedOut bool) int {
	if err == nil {
		return exitOK
	}
	if got != nil && e.daemon && errors.Is(err, context.Canceled) {
		// A daemon stopped while it was still starting (reading the
		// archive's identity, say): a stop all the same, not a failure.
		e.logger().Info("stopped by signal " + got.String() + " while starting")
		return exitOK
	}
	var ee *exitError
	if !errors.As(err, &ee) {
		// Flag parsing and other usage errors from the CLI library.
		ee = &exitError{code: exitUsage, err: err}
	}
	if timedOut {
		// Say why, whether or not the command logged its error.
		ee.err = fmt.Errorf("%w (gave up: the %s timeout passed; see --timeout)", ee.err, e.timeout)
		ee.logged = false
	}
	if !ee.logged {
		e.logger().Error(oneLine(ee.err.Error()))
	}
	return ee.code
}

// stuckGrace is how long a command may take to return after its signal
// or its deadline before walship exits without it.
var stuckGrace = 15 * time.Second

// runWatched runs cmd, and returns its error, or a non-nil stuck error
// when cmd has not returned stuckGrace after ctx ended (a signal) or the
// command's deadline passed.
func runWatched(ctx context.Context, env *appEnv, cmd func() error) (error, error) {
	res := make(chan error, 1)
	go func() { res <- cmd() }()
	var why string
	select {
	case err := <-res:
		return err, nil
	case <-ctx.Done():
		why = "the signal"
	case <-env.expired:
		why = "the " + env.timeout.String() + " timeout"
	}
	select {
	case err := <-res:
		return err, nil
	case <-time.After(stuckGrace):
		return nil, fmt.Errorf("still not done %s after %s: stuck in a system call (a hung mount?); exiting without clean-up", stuckGrace, why)
	}
}

// appEnv is what commands share: where logs go and the loaded configuration.
type appEnv struct {
	stdout io.Writer
	stderr io.Writer
	getenv func(string) string
	cfg    config.Config
	// cfgPath is the configuration file loaded, "" for none.
	cfgPath string
	log     *slog.Logger
	// daemon: the command runs until a signal stops it (agent,
	// schedule), which is then its normal end.
	daemon bool
	// timeout bounds the command (0: none); deadline is its context.
	timeout  time.Duration
	deadline context.Context //nolint:containedctx // one command's bounded context, kept to ask after it returns whether the timeout ended it
	release  context.CancelFunc
	expired  chan struct{} // closed when the deadline passes
	command  string        // the bounded command's full name
}

// errTimeout is the cause of the command's context ending at --timeout.
var errTimeout = errors.New("walship timeout")

func (e *appEnv) timedOut() bool {
	return e.deadline != nil && errors.Is(context.Cause(e.deadline), errTimeout)
}

// bound puts the whole-command deadline on c's context: the timeout
// setting, or the command's default (config.DefaultTimeout). Daemons have
// none: each storage request is bounded by the stall timeout and retries.
func (e *appEnv) bound(c *cli.Context) {
	d := config.DefaultTimeout(commandPath(c))
	if e.cfg.Timeout != nil {
		d = *e.cfg.Timeout
	}
	if e.daemon || d <= 0 || e.deadline != nil {
		return
	}
	e.command = commandPath(c)
	ctx, cancel := context.WithTimeoutCause(c.Context, d, errTimeout)
	c.Context, e.timeout, e.deadline, e.release = ctx, d, ctx, cancel
	if e.expired != nil {
		context.AfterFunc(ctx, func() {
			if e.timedOut() {
				close(e.expired)
			}
		})
	}
}

// commandPath is the command's full name, "backup push" ("walship" left
// out). urfave/cli v2's Command.FullName is only the last word, which made
// "backup push" take push's 5m default bound.
func commandPath(c *cli.Context) string {
	var names []string
	for _, cc := range c.Lineage() {
		if cc.Command != nil && cc.Command.Name != "" {
			names = append([]string{cc.Command.Name}, names...)
		}
	}
	if len(names) > 0 && c.App != nil && names[0] == c.App.Name {
		names = names[1:]
	}
	return strings.Join(names, " ")
}

func (e *appEnv) logger() *slog.Logger {
	if e.log == nil {
		e.log = newLogger(e.stderr, "text", "info")
	}
	return e.log
}

func newLogger(w io.Writer, format, level string) *slog.Logger {
	var lv slog.Level
	_ = lv.UnmarshalText([]byte(strings.ToUpper(level)))
	opts := &slog.HandlerOptions{Level: lv}
	if format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

func newApp(env *appEnv) *cli.App {
	app := &cli.App{
		Name:    "walship",
		Usage:   "ship PostgreSQL WAL to an archive and bring it back",
		Version: version,
		Flags:   globalFlags(),
		// Exit statuses are decided in run, after deferred clean-up ran.
		ExitErrHandler:  func(*cli.Context, error) {},
		HideHelpCommand: true,
		Commands: []*cli.Command{
			pushCommand(env), fetchCommand(env), backupCommand(env), restoreCommand(env),
			agentCommand(env), slotCommand(env), statusCommand(env), retentionCommand(env), verifyCommand(env), scheduleCommand(env),
		},
		OnUsageError: usageError,
		Writer:       env.stdout,
		ErrWriter:    env.stderr,
	}
	// A bad flag is one line on stderr and exit 2 at every level, not
	// "Incorrect Usage" and a page of help in PostgreSQL's log.
	var quiet func([]*cli.Command)
	quiet = func(cmds []*cli.Command) {
		for _, c := range cmds {
			c.OnUsageError = usageError
			ownRequired(c)
			ownDefaults(c)
			quiet(c.Subcommands)
		}
	}
	quiet(app.Commands)
	return app
}

func usageError(_ *cli.Context, err error, _ bool) error {
	return &exitError{code: exitUsage, err: err}
}

func globalFlags() []cli.Flag {
	env := func(name string) string { return " [$" + name + "]" }
	return []cli.Flag{
		&cli.StringFlag{Name: "config", Usage: "YAML configuration file" + env(config.EnvConfig)},
		&cli.StringFlag{Name: "archive", Usage: "archive location: /dir, file:///dir or s3://bucket/prefix" + env(config.EnvArchive)},
		&cli.StringFlag{Name: "compression", Usage: "zstd (default), s2, gzip or none" + env(config.EnvCompression)},
		&cli.IntFlag{Name: "compression-level", Usage: "codec level (0: the codec's default)" + env(config.EnvCompressionLevel)},
		&cli.StringFlag{Name: "log-format", Usage: "text or json" + env(config.EnvLogFormat)},
		&cli.StringFlag{Name: "log-level", Usage: "debug, info, warn or error" + env(config.EnvLogLevel)},
		&cli.StringFlag{Name: "s3-endpoint", Usage: "S3-compatible endpoint URL" + env(config.EnvS3Endpoint)},
		&cli.StringFlag{Name: "s3-region", Usage: "S3 region" + env(config.EnvS3Region)},
		&cli.BoolFlag{Name: "s3-path-style", Usage: "path-style S3 addressing" + env(config.EnvS3PathStyle)},
		&cli.StringFlag{Name: "s3-storage-class", Usage: "S3 storage class for new objects" + env(config.EnvS3StorageClass)},
		&cli.StringFlag{Name: "s3-sse", Usage: "server-side encryption: AES256 or aws:kms" + env(config.EnvS3SSE)},
		&cli.StringFlag{Name: "s3-sse-kms-key-id", Usage: "KMS key for aws:kms" + env(config.EnvS3SSEKMSKeyID)},
		&cli.DurationFlag{Name: "timeout", Usage: "give up on the whole command after this long; 0 for never" + env(config.EnvTimeout),
			DefaultText: "5m for push, fetch, status, slot and backup list|show|delete; none for the others; agent and schedule never"},
		&cli.DurationFlag{Name: "stall-timeout", Value: config.Default().StallTimeout,
			Usage: "retry a storage request that gets no answer, or no byte of its body, for this long" + env(config.EnvStallTimeout)},
	}
}

// load builds the configuration once: defaults < file < environment <
// flags (bindFlags).
func (e *appEnv) load(c *cli.Context) error {
	path := e.getenv(config.EnvConfig)
	if cc, ok := setGlobal(c, "config"); ok {
		path = cc.String("config")
	}
	cfg, err := config.Load(path, e.getenv, func(cfg *config.Config) error { return bindFlags(c, cfg) })
	if err != nil {
		return &exitError{code: exitUsage, err: err}
	}
	e.cfg, e.cfgPath = cfg, path
	e.log = newLogger(e.stderr, cfg.LogFormat, cfg.LogLevel)
	// Libraries that log on their own (the S3 client, the retry
	// policy) use the default.
	slog.SetDefault(e.log)
	e.bound(c)
	return nil
}

// requireArchive is for commands that need an archive.
func (e *appEnv) requireArchive() error {
	if e.cfg.Archive == "" {
		return &exitError{code: exitUsage, err: fmt.Errorf("setting archive: not set; use --archive, %s or archive: in the config file", config.EnvArchive)}
	}
	return nil
}
