package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/walship/walship/archive"
	"github.com/walship/walship/restore"
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
			"PostgreSQL stops instead of ending recovery early.",
		Flags: append(globalFlags(), &cli.StringFlag{Name: "spool", Usage: "take the file from walship agent's spool when it is there [$WALSHIP_SPOOL]"}),
		Action: func(c *cli.Context) error {
			if err := env.load(c); err != nil {
				return env.fetchExit(err)
			}
			if c.NArg() != 2 {
				return env.fetchExit(&exitError{code: exitUsage, err: fmt.Errorf("fetch takes NAME and DEST, got %d arguments", c.NArg())})
			}
			name, dest := c.Args().Get(0), c.Args().Get(1)
			if err := env.requireArchive(); err != nil {
				return env.fetchExit(err)
			}
			spool := env.cfg.Spool
			if c.IsSet("spool") {
				spool = c.String("spool")
			}
			if spool != "" && !filepath.IsAbs(spool) {
				// PostgreSQL runs restore_command in the data directory: a
				// relative spool would be looked for inside it.
				return env.fetchExit(usageErr("--spool %q: want an absolute directory", spool))
			}
			if spool != "" {
				// The agent verified the file when it placed it, and fetch
				// checks it again (a regular file of the segment size with
				// a page header for this name): a rename hands it over.
				// Anything wrong with the spool falls back to the archive.
				start := time.Now()
				took, err := restore.TakeFromSpool(spool, name, dest)
				if took {
					env.logger().Info("fetched from spool", "file", name, "ms", time.Since(start).Milliseconds())
					return nil
				}
				if err != nil {
					env.logger().Warn("spool unusable; fetching from the archive", "error", err)
				}
				// A waiting standby asks for the next file every few
				// seconds; the agent's last poll answers without a request.
				// Never during a point-in-time recovery, where "absent"
				// ends recovery.
				if !inArchiveRecovery() && restore.KnownAbsent(spool, name, time.Now()) {
					env.logger().Debug("not in archive (per the agent's last poll)", "file", name)
					return &exitError{code: exitAbsent, err: fmt.Errorf("%s: not archived yet", name), logged: true}
				}
			}
			store, err := openStorage(c.Context, env.cfg)
			if err != nil {
				return env.fetchExit(&exitError{code: exitCode(opFetch, err), err: err})
			}
			log := env.logger()
			res, err := restore.Fetch(c.Context, archive.New(store, log), name, dest, restore.FetchOptions{})
			if err == nil {
				log.Info("fetched", "file", name, "bytes", res.Size, "attempts", res.Attempts, "ms", res.Elapsed.Milliseconds())
				return nil
			}
			code := exitCode(opFetch, err)
			if code == exitAbsent {
				log.Info("not in archive", "file", name)
				return &exitError{code: code, err: err, logged: true}
			}
			return env.fetchExit(&exitError{code: code, err: fmt.Errorf("fetch %s: %w", name, err)})
		},
	}
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
