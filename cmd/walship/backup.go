package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"runtime/debug"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/walship/walship/archive"
	"github.com/walship/walship/backup"
	"github.com/walship/walship/config"
	"github.com/walship/walship/manifest"
	"github.com/walship/walship/postgres"
)

func backupCommand(env *appEnv) *cli.Command {
	return &cli.Command{
		Name:  "backup",
		Usage: "take, list, show and delete base backups",
		Subcommands: []*cli.Command{
			backupPushCommand(env), backupListCommand(env), backupShowCommand(env), backupDeleteCommand(env),
		},
	}
}

func backupPushCommand(env *appEnv) *cli.Command {
	return &cli.Command{
		Name:  "push",
		Usage: "take a base backup over the replication protocol into the archive",
		Description: "Connects like pg_basebackup (PG* environment variables, or --pg), streams the backup\n" +
			"through compression into the archive, checks the files against the server's backup_manifest,\n" +
			"waits until the WAL from start to stop is archived, confirms every object it wrote is in the\n" +
			"archive at its stored size, then writes the manifest that makes the backup exist. While it runs\n" +
			"it holds a lease (backups/<id>/lease.json, renewed every minute, 10 minutes TTL) that retention\n" +
			"honours. Prints the backup id on stdout; on failure it removes what it wrote.\n" +
			"--incremental (PostgreSQL 17+, summarize_wal = on; or backup.type: incremental) sends the parent's\n" +
			"backup_manifest (UPLOAD_MANIFEST) and takes BASE_BACKUP INCREMENTAL: only the blocks changed since\n" +
			"the parent. The parent is the newest complete backup, full or incremental, of this cluster and major\n" +
			"whose WAL lies on the server's timeline history (the archived history files); --from ID names one.\n" +
			"Exit statuses: 2 usage, or an incremental refused before anything is written (server older than 17,\n" +
			"summarize_wal off, no backup that can be the parent, WAL summaries not reaching back to it),\n" +
			"3 archive unreachable, or the backup's data or lease (or an incremental's parent) went from\n" +
			"the archive while it ran (run it again), 4 data (or the parent's backup_manifest) failed a checksum,\n" +
			"7 PostgreSQL: connection or server error, or the WAL did not reach the archive in --wal-timeout.",
		Flags: append(globalFlags(),
			&cli.StringFlag{Name: "pg", Usage: "connection string (no password: use PGPASSWORD or ~/.pgpass); default from PG* variables"},
			&cli.StringFlag{Name: "checkpoint", Value: "spread", Usage: "start checkpoint: fast or spread"},
			&cli.DurationFlag{Name: "wal-timeout", Value: 5 * time.Minute, Usage: "how long to wait for the backup's WAL to be archived"},
			&cli.StringFlag{Name: "label", Usage: "backup label (default: walship <id>)"},
			&cli.IntFlag{Name: "chunk-size-mb", Value: 16, Usage: "MiB of tar per archive object before compression"},
			&cli.IntFlag{Name: "max-rate-kb", Usage: "limit the server's send rate, kB/s (0: no limit)"},
			&cli.BoolFlag{Name: "incremental", Usage: "incremental backup against the newest backup that can serve (PostgreSQL 17+, summarize_wal on) [backup.type]"},
			&cli.StringFlag{Name: "from", Usage: "with --incremental: the parent backup's id"},
		),
		Action: func(c *cli.Context) error {
			a, err := env.openArchive(c, 0)
			if err != nil {
				return err
			}
			ckpt := c.String("checkpoint")
			if ckpt != "fast" && ckpt != "spread" {
				return usageErr("--checkpoint must be fast or spread, not %q", ckpt)
			}
			if n := c.Int("chunk-size-mb"); n < 1 || n > 1024 {
				return usageErr("--chunk-size-mb must be 1..1024")
			}
			comp, err := env.cfg.CompressionSetting()
			if err != nil {
				return &exitError{code: exitUsage, err: err}
			}
			incremental := env.cfg.Backup.Type == config.BackupIncremental
			if c.String("from") != "" && !incremental {
				return usageErr("--from names an incremental backup's parent: add --incremental")
			}
			softMemoryLimit()
			conn, err := postgres.Connect(c.Context, c.String("pg"))
			if err != nil {
				return &exitError{code: exitCode(opBackup, err), err: err}
			}
			defer func() {
				ctx, cancel := context.WithTimeout(context.WithoutCancel(c.Context), 5*time.Second)
				defer cancel()
				_ = conn.Close(ctx)
			}()
			m, err := backup.Push(c.Context, a, conn, backup.Options{
				Compression: comp, WALTimeout: c.Duration("wal-timeout"), FastCheckpoint: ckpt == "fast",
				Label: c.String("label"), ChunkSize: c.Int("chunk-size-mb") << 20, MaxRateKB: c.Int("max-rate-kb"),
				Progress: newProgress(env.stderr, env.logger()), Log: env.logger(),
				Incremental: incremental, From: c.String("from"),
			})
			if err != nil {
				return &exitError{code: exitCode(opBackup, err), err: fmt.Errorf("backup: %w", err)}
			}
			fmt.Fprintln(env.stdout, m.ID)
			return nil
		},
	}
}

func backupListCommand(env *appEnv) *cli.Command {
	return &cli.Command{
		Name:  "list",
		Usage: "list complete backups, oldest first",
		Flags: append(globalFlags(), &cli.BoolFlag{Name: "json", Usage: "JSON array of manifests"}),
		Action: func(c *cli.Context) error {
			a, err := env.openArchive(c, 0)
			if err != nil {
				return err
			}
			l, err := manifest.List(c.Context, a.Storage())
			if err != nil {
				return &exitError{code: exitCode(opBackup, err), err: err}
			}
			for _, id := range l.Incomplete {
				env.logger().Warn("backup without a manifest: running, or failed (retention removes it once its lease has expired)", "id", id)
			}
			if c.Bool("json") {
				if l.Backups == nil {
					l.Backups = []*manifest.Manifest{}
				}
				return writeJSON(env.stdout, l.Backups)
			}
			tw := tabwriter.NewWriter(env.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tTYPE\tPARENT\tSTART TIME\tSTOP TIME\tSTART LSN\tSTOP LSN\tTLI\tSIZE\tSTORED")
			for _, m := range l.Backups {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\n", m.ID, m.Kind(), dash(m.Parent), m.StartTime.Format(time.RFC3339),
					m.StopTime.Format(time.RFC3339), m.StartLSN, m.StopLSN, m.Timeline, human(m.Size), human(m.StoredSize))
			}
			return tw.Flush()
		},
	}
}

func backupShowCommand(env *appEnv) *cli.Command {
	return &cli.Command{
		Name:      "show",
		Usage:     "print one backup's manifest (JSON)",
		ArgsUsage: "ID",
		Flags:     globalFlags(),
		Action: func(c *cli.Context) error {
			a, err := env.openArchive(c, 1)
			if err != nil {
				return err
			}
			m, err := manifest.Get(c.Context, a.Storage(), c.Args().First())
			if err != nil {
				return &exitError{code: exitCode(opBackup, err), err: err}
			}
			return writeJSON(env.stdout, m)
		},
	}
}

func backupDeleteCommand(env *appEnv) *cli.Command {
	return &cli.Command{
		Name:      "delete",
		Usage:     "delete a backup (complete or not): its manifest first, then its data",
		ArgsUsage: "ID",
		Flags: append(globalFlags(),
			&cli.BoolFlag{Name: "force", Usage: "delete a backup that is still running (its push then fails)"},
			&cli.BoolFlag{Name: "with-dependants", Usage: "also delete the incremental backups built on it (newest first)"}),
		Action: func(c *cli.Context) error {
			a, err := env.openArchive(c, 1)
			if err != nil {
				return err
			}
			done, err := backup.Remove(c.Context, a, c.Args().First(),
				backup.DeleteOptions{Force: c.Bool("force"), WithDependants: c.Bool("with-dependants"), Now: time.Now()})
			for _, id := range done {
				env.logger().Info("backup deleted", "id", id)
			}
			if err != nil {
				return &exitError{code: exitCode(opBackup, err), err: err}
			}
			return nil
		},
	}
}

// openArchive loads the configuration, checks the argument count and opens
// the archive.
func (e *appEnv) openArchive(c *cli.Context, nargs int) (*archive.Archive, error) {
	if err := e.load(c); err != nil {
		return nil, err
	}
	if c.NArg() != nargs {
		return nil, usageErr("%s takes %d argument(s), got %d", commandPath(c), nargs, c.NArg())
	}
	if err := e.requireArchive(); err != nil {
		return nil, err
	}
	store, err := openStorage(c.Context, e.cfg)
	if err != nil {
		return nil, &exitError{code: exitCode(opBackup, err), err: err}
	}
	return archive.New(store, e.logger()), nil
}

// softMemoryLimit makes the garbage collector work harder rather than let
// the heap double over the backup and restore buffer pools (about 50 MiB
// live). GOMEMLIMIT in the environment wins.
func softMemoryLimit() {
	if os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(96 << 20)
	}
}

func usageErr(format string, args ...any) error {
	return &exitError{code: exitUsage, err: fmt.Errorf(format, args...)}
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// human formats a byte count for people.
func human(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
