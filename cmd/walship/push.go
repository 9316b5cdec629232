package main

import (
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/walship/walship/archive"
	"github.com/walship/walship/config"
)

func pushCommand(env *appEnv) *cli.Command {
	return &cli.Command{
		Name:      "push",
		Usage:     "archive one WAL file (archive_command = 'walship push %p')",
		ArgsUsage: "PATH",
		Description: "Exits 0 only once the file is durable in the archive, or an identical copy already is.\n" +
			"When PostgreSQL has more segments ready (a backlog), the next ready ones of the same timeline\n" +
			"go along in the same call, --parallel at a time, and their own calls then return at once\n" +
			"(docs/PUSH.md). History, .partial and .backup files always go alone.\n" +
			"Exit statuses: 2 usage or setting, 3 archive unreachable, 4 refused (another cluster,\n" +
			"bad header, truncated, or a different file already archived under the name), 5 local read error\n" +
			"(or PATH is not a regular file). SIGTERM/SIGINT: the temporary file is removed, push dies by the signal.",
		Flags: append(globalFlags(),
			&cli.IntFlag{Name: "parallel", Usage: fmt.Sprintf("segments in flight when more are ready: this one and the next ready ones; "+
				"1 for one segment per call (default: the CPUs, at most 8; up to %d) [$%s]", config.MaxPushParallel, config.EnvPushParallel)},
		),
		Action: func(c *cli.Context) error {
			if err := env.load(c); err != nil {
				return err
			}
			if c.NArg() != 1 {
				return &exitError{code: exitUsage, err: fmt.Errorf("push takes exactly one PATH, got %d arguments", c.NArg())}
			}
			if err := env.requireArchive(); err != nil {
				return err
			}
			comp, err := env.cfg.CompressionSetting()
			if err != nil {
				return &exitError{code: exitUsage, err: err}
			}
			path := c.Args().First()
			location := archiveLocation(env.cfg)
			log := env.logger()
			// Pushed ahead by an earlier call and still the same file: done,
			// without reading it or reaching the archive.
			ok, why := archive.TakeProof(path, location, time.Now())
			if ok {
				log.Info("already archived (pushed ahead by an earlier call)", "file", filepath.Base(path))
				return nil
			}
			if why != nil {
				log.Debug("proof of an earlier push not trusted; pushing", "file", filepath.Base(path), "why", why)
			}
			store, err := openStorage(c.Context, env.cfg)
			if err != nil {
				return &exitError{code: exitCode(opPush, err), err: err}
			}
			res, err := archive.New(store, log).PushAhead(c.Context, path, archive.AheadOptions{
				Compression: comp, Parallel: env.cfg.PushParallel(), Location: location,
			})
			if err != nil {
				return &exitError{code: exitCode(opPush, err), err: fmt.Errorf("push %s: %w", path, err)}
			}
			attrs := []any{"file", res.File.String()}
			if res.Ahead > 0 {
				attrs = append(attrs, "ahead", res.Ahead)
			}
			if res.AlreadyArchived {
				log.Info("already archived with identical content", append(attrs, "archive", store.String())...)
				return nil
			}
			log.Info("pushed", append(attrs, "bytes", res.Size, "stored", res.Stored,
				"codec", comp.Codec.String(), "ms", res.Elapsed.Milliseconds())...)
			return nil
		},
	}
}

// archiveLocation names the archive as configured, for proofs of segments
// pushed ahead: a proof made while walship pushed somewhere else is never
// taken for one of this archive. No credentials are part of it.
func archiveLocation(cfg config.Config) string {
	u, err := config.ParseArchive(cfg.Archive)
	if err != nil {
		return ""
	}
	if u.Scheme == "file" {
		return "file://" + u.Path
	}
	return strings.Join([]string{"s3://" + u.Bucket + "/" + u.Prefix, "endpoint=" + cfg.S3.Endpoint, "region=" + cfg.S3.Region}, " ")
}
