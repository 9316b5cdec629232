package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/walship/walship/archive"
	"github.com/walship/walship/catalog"
	"github.com/walship/walship/config"
	"github.com/walship/walship/fetch"
	"github.com/walship/walship/restore"
	"github.com/walship/walship/segment"
)

func restoreCommand(env *appEnv) *cli.Command {
	return &cli.Command{
		Name:  "restore",
		Usage: "rebuild a data directory from a base backup, set to recover to a target",
		Description: "Picks the newest backup that can reach the target (or the one given with --backup), checks\n" +
			"from the archive's listing that the WAL to get there is archived, downloads and verifies the\n" +
			"backup into --pgdata, and writes recovery.signal (or standby.signal) and a restore_command\n" +
			"calling this walship, so that starting PostgreSQL completes the recovery. Signal files and\n" +
			"recovery settings the backup carried (a standby's, an earlier restore's) are replaced.\n" +
			"Exit statuses: 2 usage (bad target, empty --pgdata, non-empty directory), 3 archive\n" +
			"unreachable, 4 the backup is damaged (a chunk failed its checksum, not tar, a link or\n" +
			"device entry), 5 local write error, 6 no backup and WAL reach the target.",
		Flags: append(globalFlags(),
			&cli.StringFlag{Name: "pgdata", Required: true, Usage: "data directory to create (must be absent or empty; a relative path is taken from the working directory)"},
			&cli.StringFlag{Name: "target-time", Usage: "recover to this time (with a zone: 2026-11-26 10:00:00+00)"},
			&cli.StringFlag{Name: "target-lsn", Usage: "recover to this WAL position"},
			&cli.StringFlag{Name: "target-xid", Usage: "recover to this transaction's commit"},
			&cli.StringFlag{Name: "target-name", Usage: "recover to this restore point (pg_create_restore_point)"},
			&cli.BoolFlag{Name: "target-immediate", Usage: "stop as soon as the backup is consistent"},
			&cli.StringFlag{Name: "target-action", Value: "promote", Usage: "at the target: promote, pause or shutdown"},
			&cli.StringFlag{Name: "target-timeline", Value: "latest", Usage: "latest, current or a timeline number"},
			&cli.BoolFlag{Name: "standby", Usage: "write standby.signal: keep following the archive"},
			&cli.StringFlag{Name: "backup", Usage: "backup id, or latest (default: newest that reaches the target)"},
			&cli.StringSliceFlag{Name: "tablespace-mapping", Usage: "OLDDIR=NEWDIR: restore a tablespace elsewhere (repeatable)"},
			&cli.StringFlag{Name: "archive-mode", Value: "preserve", Usage: "preserve the backup's archive settings, or off"},
			&cli.StringFlag{Name: "spool", Usage: "write restore_command with fetch --spool DIR (for a standby fed by walship agent) [$WALSHIP_SPOOL]"},
			&cli.StringFlag{Name: "slot", Usage: "reset this slot to the backup's first segment (for a standby fed by walship agent --slot)"},
		),
		Action: func(c *cli.Context) error { return env.restore(c) },
	}
}

// restoreRequest is walship restore's command line, checked.
type restoreRequest struct {
	target  restore.Target
	tsMap   map[string]string
	modeOff bool   // --archive-mode off
	pgdata  string // absolute
	backup  string // --backup: an id, latest or ""
	slot    string
	standby bool
}

// restore is walship restore: the backup that reaches the target chosen
// from the archive's listing, restored into --pgdata, and the slot, if
// one is named, reset to the backup's first segment.
func (e *appEnv) restore(c *cli.Context) error {
	if err := e.load(c); err != nil {
		return err
	}
	r, err := parseRestoreRequest(c)
	if err != nil {
		return err
	}
	if err := restore.CheckTarget(r.pgdata); err != nil {
		return &exitError{code: exitCode(opRestore, err), err: err}
	}
	a, err := e.openArchive(c, 0)
	if err != nil {
		return err
	}
	cmdline, err := e.restoreCommandLine()
	if err != nil {
		return err
	}
	if r.slot != "" {
		if _, err := a.GetSlot(c.Context, r.slot); err != nil {
			return &exitError{code: exitCode(opSlot, err), err: err}
		}
	}
	plan, segSize, err := e.restorePlan(c.Context, a, r)
	if err != nil {
		return &exitError{code: exitCode(opRestore, err), err: err}
	}
	log := e.logger()
	softMemoryLimit()
	err = restore.Restore(c.Context, a, plan, restore.Options{
		PGData: r.pgdata, Standby: r.standby, Target: r.target, RestoreCommand: cmdline,
		TablespaceMap: r.tsMap, ArchiveModeOff: r.modeOff,
		Progress: newProgress(e.stderr, log), Log: log,
	})
	if err != nil {
		return &exitError{code: exitCode(opRestore, err), err: fmt.Errorf("restore: %w", err)}
	}
	if r.slot != "" {
		first := plan.FirstWAL.String(segSize)
		if _, err := a.UpdateSlot(c.Context, r.slot, archive.SlotUpdate{Position: first, Reset: true}); err != nil {
			return &exitError{code: exitCode(opSlot, err), err: fmt.Errorf("restore done, but the slot was not set: %w", err)}
		}
		log.Info("slot set to the backup's first segment", "slot", r.slot, "position", first)
	}
	log.Info("restore complete; start PostgreSQL on it to recover", "pgdata", r.pgdata, "backup", plan.Backup.ID,
		"signal", map[bool]string{true: "standby.signal", false: "recovery.signal"}[r.standby])
	return nil
}

// parseRestoreRequest reads restore's flags.
func parseRestoreRequest(c *cli.Context) (restoreRequest, error) {
	r := restoreRequest{backup: c.String("backup"), slot: c.String("slot"), standby: c.Bool("standby")}
	if c.NArg() != 0 {
		return r, usageErr("restore takes no arguments")
	}
	var err error
	if r.target, err = parseTarget(c); err != nil {
		return r, &exitError{code: exitCode(opRestore, err), err: err}
	}
	if r.tsMap, err = parseTablespaceMapping(c.StringSlice("tablespace-mapping")); err != nil {
		return r, err
	}
	mode := c.String("archive-mode")
	if mode != "preserve" && mode != "off" {
		return r, usageErr("--archive-mode must be preserve or off, not %q", mode)
	}
	r.modeOff = mode == "off"
	r.pgdata, err = dataDirPath(c.String("pgdata"))
	return r, err
}

// restorePlan chooses the backup from the archive's listing and logs the
// choice; it returns the archive's segment size with it.
func (e *appEnv) restorePlan(ctx context.Context, a *archive.Archive, r restoreRequest) (*restore.Plan, uint64, error) {
	inv, err := catalog.Load(ctx, a, catalog.Backups|catalog.Histories)
	if err != nil {
		return nil, 0, err
	}
	plan, err := restore.Choose(inv, r.target, r.backup)
	if err != nil {
		return nil, 0, err
	}
	b, log := plan.Backup, e.logger()
	attrs := []any{"why", plan.Why, "target", r.target.String(), "timeline", plan.Timeline,
		"backup_stop_lsn", b.StopLSN, "backup_stop_time", b.StopTime, "wal_from", plan.FirstWAL.String(inv.SegSize),
		"wal_checked_to", plan.LastWAL.String(inv.SegSize), "bytes", b.Size}
	if len(plan.Chain) > 1 {
		ids := make([]string, len(plan.Chain))
		var bytes int64
		for i, m := range plan.Chain {
			ids[i], bytes = m.ID, bytes+m.Size
		}
		attrs = append(attrs, "chain", strings.Join(ids, ","), "chain_bytes", bytes)
	}
	log.Info("restoring backup "+b.ID, attrs...)
	for _, n := range plan.Notes {
		log.Warn(n)
	}
	return plan, inv.SegSize, nil
}

// dataDirPath resolves --pgdata to an absolute path, which restore logs
// and writes into. It refuses an empty value (an unset shell variable) and
// a path that is the working directory or /: a restore never unpacks into
// the directory it was started from unless it is named as a new one.
func dataDirPath(v string) (string, error) {
	if strings.TrimSpace(v) == "" {
		return "", usageErr("--pgdata is empty: give the data directory to create")
	}
	abs, err := filepath.Abs(v)
	if err != nil {
		return "", usageErr("--pgdata %q: %v", v, err)
	}
	if wd, err := os.Getwd(); err == nil && abs == filepath.Clean(wd) {
		return "", usageErr("--pgdata %q is the working directory: give the data directory by its own path", v)
	}
	if abs == string(filepath.Separator) {
		return "", usageErr("--pgdata %q is the root directory", v)
	}
	return abs, nil
}

// parseTarget reads the target flags; at most one target kind.
func parseTarget(c *cli.Context) (restore.Target, error) {
	t := restore.Target{Timeline: c.String("target-timeline"), Action: c.String("target-action")}
	n := 0
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: "+format, append([]any{restore.ErrUsage}, args...)...)
	}
	if v := c.String("target-time"); c.IsSet("target-time") {
		n++
		tm, err := restore.ParseTime(v)
		if err != nil {
			return t, err
		}
		t.Kind, t.Time = restore.TargetTime, tm
	}
	if v := c.String("target-lsn"); c.IsSet("target-lsn") {
		n++
		l, err := segment.ParseLSN(v)
		if err != nil {
			return t, bad("--target-lsn: %v", err)
		}
		t.Kind, t.LSN = restore.TargetLSN, l
	}
	if v := c.String("target-xid"); c.IsSet("target-xid") {
		n++
		x, err := strconv.ParseUint(v, 10, 64)
		if err != nil || x < 3 {
			return t, bad("--target-xid %q: want a transaction id (a number of 3 or more)", v)
		}
		t.Kind, t.XID = restore.TargetXID, x
	}
	if c.IsSet("target-name") {
		n++
		t.Kind, t.Name = restore.TargetName, c.String("target-name")
	}
	if c.Bool("target-immediate") {
		n++
		t.Kind = restore.TargetImmediate
	}
	if n > 1 {
		return t, bad("give at most one of --target-time, --target-lsn, --target-xid, --target-name, --target-immediate")
	}
	if c.IsSet("target-action") && n == 0 {
		return t, bad("--target-action needs a target")
	}
	return t, t.Check()
}

func parseTablespaceMapping(vals []string) (map[string]string, error) {
	m := map[string]string{}
	for _, v := range vals {
		old, nw, ok := strings.Cut(v, "=")
		if !ok || !filepath.IsAbs(old) || !filepath.IsAbs(nw) {
			return nil, usageErr("--tablespace-mapping %q: want OLDDIR=NEWDIR, both absolute", v)
		}
		m[filepath.Clean(old)] = filepath.Clean(nw)
	}
	return m, nil
}

// restoreCommandLine is the restore_command for the restored server: this
// walship binary with the same archive settings, given as flags because
// the server does not share this shell's environment. No secret goes in:
// S3 credentials come from the server's environment or credential files.
func (e *appEnv) restoreCommandLine() (string, error) {
	exe, err := os.Executable()
	if err != nil {
		return "", &exitError{code: exitLocal, err: fmt.Errorf("find the walship binary: %w", err)}
	}
	args := []string{exe, "fetch"}
	if e.cfgPath != "" {
		abs, err := filepath.Abs(e.cfgPath)
		if err != nil {
			return "", usageErr("--config: %v", err)
		}
		args = append(args, "--config", abs)
	}
	archive := e.cfg.Archive
	if u, err := config.ParseArchive(archive); err == nil && u.Scheme == "file" {
		archive = u.Path // absolute already
	}
	args = append(args, "--archive", archive)
	spool := e.cfg.Spool
	if spool != "" {
		args = append(args, "--spool", spool)
	} else {
		args = append(args, prefetchArgs(e.cfg.Fetch)...)
	}
	if strings.HasPrefix(archive, "s3://") {
		args = append(args, s3Args(e.cfg.S3)...)
	}
	for i, a := range args {
		args[i] = shellQuote(a)
	}
	line := strings.Join(args, " ") + " %f %p"
	if spool != "" {
		// Taking a file from the spool is a rename: mv does it without
		// starting walship, which costs about 11 ms a segment
		// (docs/BENCHMARKS.md). mv checks nothing, and need not: the agent
		// runs only as the spool's owner, never as root, on a spool nobody
		// else may write into, so mv can succeed only for that user, whose
		// files they are (PostgreSQL never runs as root); and a file is
		// under a segment's name only once the agent verified it (SHA-256,
		// page header, cluster); anything else it finds there it removes.
		// When the file is not there, walship fetch answers as usual and
		// checks any spool file it takes (docs/RELIABILITY.md). The shell
		// test lets mv move only a regular file, never a directory or a
		// symlink named like the segment (a directory renamed onto
		// RECOVERYXLOG stops the standby for good).
		line = spoolTake(spool) + line
	} else if e.cfg.Fetch.Prefetch > 0 {
		line = prefetchTake(e.cfg.Fetch.PrefetchDir, archiveName(e.cfg)) + line
	}
	return line, nil
}

// prefetchTake is the shell that renames a segment the prefetcher placed
// in its spool (dir, or pg_wal/.walship-prefetch) to %p, followed by "|| "
// for what runs when it cannot: walship fetch, which then takes from the
// spool itself, or downloads, and whose note and the take both tell the
// prefetcher how far PostgreSQL got. It saves starting walship for nearly
// every segment (docs/BENCHMARKS.md).
//
// The mv keeps the rules of fetch's own take from that spool, by these
// tests or by what makes them needless:
//   - Only what a prefetcher of this archive placed: the spool holds the
//     mark of the archive this command reads (fetch.PrefetchMark), which
//     a prefetcher writes only after it checked the spool and removed
//     what an earlier run left, and removes before anything else when it
//     stops. Without the mark (none runs, or it reads another archive)
//     walship fetch answers. What it cannot rule out is in
//     docs/RELIABILITY.md.
//   - Only a spool that is the server user's own: -O (owned by the
//     effective user; a /bin/sh without it fails the test and walship
//     fetch answers). The default spool is inside pg_wal, which only the
//     server's user may write into; the prefetcher creates it 0700 and
//     refuses to run in one group or others may write into.
//   - Only verified files: a file is under a segment's name there only
//     after the prefetcher downloaded it under a dot name, checked its
//     SHA-256, page header and cluster, fsynced it and renamed it, so what
//     fetch's take checks again (size, header) holds already; only the
//     server's user could change it since.
//   - Only a regular file, never a directory or a symlink (spoolTake).
//   - Never a source of "absent": anything the tests or mv refuse falls
//     through to walship fetch, which asks the archive.
//
// PostgreSQL runs restore_command in the data directory with %p under
// pg_wal, where fetch puts the default spool (DEST's directory).
func prefetchTake(dir, archiveName string) string {
	if dir == "" {
		dir = "pg_wal/" + fetch.PrefetchDirName
	}
	d := shellQuote(dir)
	return "[ -O " + d + " ] && [ -f " + d + "/" + fetch.PrefetchMark(archiveName) + " ] && " + spoolTake(dir)
}

// prefetchArgs are fetch's prefetch flags for a recovery without walship
// agent: fetch's own prefetcher, with this walship's settings (the server
// does not read this shell's environment), 0 if turned off here.
func prefetchArgs(f config.Fetch) []string {
	args := []string{"--prefetch", strconv.Itoa(f.Prefetch)}
	if f.Prefetch == 0 {
		return args
	}
	if f.PrefetchBytes != config.DefaultPrefetchBytes {
		args = append(args, "--prefetch-bytes", f.PrefetchBytes.String())
	}
	if f.PrefetchDir != "" {
		args = append(args, "--prefetch-dir", f.PrefetchDir)
	}
	if f.PrefetchIdle != config.DefaultPrefetchIdle {
		args = append(args, "--prefetch-idle", f.PrefetchIdle.String())
	}
	if f.PrefetchParallel != config.DefaultPrefetchParallel {
		args = append(args, "--prefetch-parallel", strconv.Itoa(f.PrefetchParallel))
	}
	return args
}

// s3Args are the S3 settings fetch needs to find the archive.
func s3Args(s config.S3) []string {
	var args []string
	if s.Endpoint != "" {
		args = append(args, "--s3-endpoint", s.Endpoint)
	}
	if s.Region != "" {
		args = append(args, "--s3-region", s.Region)
	}
	if s.PathStyle {
		args = append(args, "--s3-path-style")
	}
	return args
}

// spoolTake is the shell that renames a regular file from the spool to
// %p, followed by "|| " for what runs when it cannot.
func spoolTake(spool string) string {
	f := shellQuote(spool) + "/%f"
	return "[ -f " + f + " ] && [ ! -h " + f + " ] && mv -f " + f + " %p 2>/dev/null || "
}

// shellQuote quotes s for /bin/sh, which runs restore_command.
func shellQuote(s string) string {
	if s != "" && strings.IndexFunc(s, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_./:=@,+", r))
	}) < 0 {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
