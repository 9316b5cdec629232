package main

import (
	"fmt"

	"github.com/urfave/cli/v2"

	"github.com/walship/walship/archive"
)

func pushCommand(env *appEnv) *cli.Command {
	return &cli.Command{
		Name:      "push",
		Usage:     "archive one WAL file (archive_command = 'walship push %p')",
		ArgsUsage: "PATH",
		Description: "Exits 0 only once the file is durable in the archive, or an identical copy already is.\n" +
			"Exit statuses: 2 usage or setting, 3 archive unreachable, 4 refused (another cluster,\n" +
			"bad header, truncated, or a different file already archived under the name), 5 local read error\n" +
			"(or PATH is not a regular file). SIGTERM/SIGINT: the temporary file is removed, push dies by the signal.",
		Flags: globalFlags(),
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
			store, err := openStorage(c.Context, env.cfg)
			if err != nil {
				return &exitError{code: exitCode(opPush, err), err: err}
			}
			log := env.logger()
			res, err := archive.New(store, log).Push(c.Context, c.Args().First(), comp)
			if err != nil {
				return &exitError{code: exitCode(opPush, err), err: fmt.Errorf("push %s: %w", c.Args().First(), err)}
			}
			if res.AlreadyArchived {
				log.Info("already archived with identical content", "file", res.File.String(), "archive", store.String())
				return nil
			}
			log.Info("pushed", "file", res.File.String(), "bytes", res.Size, "stored", res.Stored,
				"codec", comp.Codec.String(), "ms", res.Elapsed.Milliseconds())
			return nil
		},
	}
}
