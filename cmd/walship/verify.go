package main

import (
	"fmt"

	"github.com/urfave/cli/v2"

	"github.com/walship/walship/verify"
)

func verifyCommand(env *appEnv) *cli.Command {
	return &cli.Command{
		Name:  "verify",
		Usage: "prove the archive whole: checksums, WAL continuity from every backup, backups against their manifests",
		Description: "Reads every object through its SHA-256 (--quick: presence and continuity only), checks that\n" +
			"WAL is continuous from each backup's start to the head through the timeline history, and that\n" +
			"each backup's chunks are there with the size and SHA-256 its manifest names.\n" +
			"Exit statuses: 0 whole; 8 problems found (listed); 3 archive unreachable.",
		Flags: append(globalFlags(),
			&cli.BoolFlag{Name: "quick", Usage: "presence and continuity only; read no object"},
			&cli.BoolFlag{Name: "json", Usage: "JSON report"},
		),
		Action: func(c *cli.Context) error {
			a, err := env.openArchive(c, 0)
			if err != nil {
				return err
			}
			r, err := verify.Run(c.Context, a, verify.Options{Quick: c.Bool("quick")})
			if err != nil {
				return &exitError{code: exitCode(opBackup, err), err: fmt.Errorf("verify: %w", err)}
			}
			if c.Bool("json") {
				if err := writeJSON(env.stdout, r); err != nil {
					return err
				}
			} else {
				for _, p := range r.Problems {
					fmt.Fprintf(env.stdout, "PROBLEM %-10s %s\n", p.Kind, p.Detail)
				}
				fmt.Fprintf(env.stdout, "%d objects (%s), %d backups, %d checksummed, %d problems\n",
					r.Objects, human(r.Bytes), r.Backups, r.Checked, len(r.Problems))
			}
			if len(r.Problems) > 0 {
				return &exitError{code: exitProblems, err: fmt.Errorf("verify: %d problem(s), first: %s", len(r.Problems), r.Problems[0].Detail)}
			}
			env.logger().Info("archive verified", "objects", r.Objects, "checksummed", r.Checked, "quick", r.Quick)
			return nil
		},
	}
}
