package main

import (
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/walship/walship/retention"
)

func retentionCommand(env *appEnv) *cli.Command {
	flags := func() []cli.Flag {
		return append(globalFlags(),
			&cli.IntFlag{Name: "keep-last", Usage: "keep the newest N complete backups"},
			&cli.DurationFlag{Name: "keep-within", Usage: "keep every backup needed to restore to any moment this far back (e.g. 168h)"},
			&cli.DurationFlag{Name: "grace", Usage: "never delete objects younger than this (default 10m)"},
			&cli.BoolFlag{Name: "json", Usage: "print the plan as JSON"},
		)
	}
	return &cli.Command{
		Name:  "retention",
		Usage: "delete what no kept backup and no live slot needs",
		Description: "The plan is a pure function of the archive's listing, the slots, the running backups' leases,\n" +
			"the policy and the time; every object gets keep or delete and a reason. WAL is kept from the start\n" +
			"of the oldest kept backup, of every running backup and from every live slot's position. A backup\n" +
			"without a manifest is kept while its lease is live or anything under it is younger than --grace,\n" +
			"and is debris otherwise. Every history file from the lowest kept timeline up, and the newest one,\n" +
			"are kept. A listing or read failure aborts before anything is deleted.\n" +
			"Exit statuses: 2 usage or no policy; 3 archive unreachable.",
		Subcommands: []*cli.Command{
			{Name: "plan", Usage: "print what apply would do", Flags: flags(), Action: func(c *cli.Context) error { return env.retention(c, false) }},
			{Name: "apply", Usage: "delete what the plan deletes", Flags: flags(), Action: func(c *cli.Context) error { return env.retention(c, true) }},
		},
	}
}

func (e *appEnv) retention(c *cli.Context, apply bool) error {
	a, err := e.openArchive(c, 0)
	if err != nil {
		return err
	}
	r := e.cfg.Retention
	pol := retention.Policy{KeepLast: r.KeepLast, KeepWithin: r.KeepWithin, Grace: r.Grace}
	if err := pol.Check(); err != nil {
		return &exitError{code: exitUsage, err: err}
	}
	// Planned, printed, then applied: the printout is the plan applied.
	plan, _, err := retention.Run(c.Context, a, pol, time.Now(), false, e.logger())
	if err != nil {
		return &exitError{code: exitCode(opBackup, err), err: err}
	}
	if c.Bool("json") {
		if err := writeJSON(e.stdout, plan); err != nil {
			return err
		}
	} else if !apply {
		tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
		for _, it := range plan.Items {
			act := "keep"
			if it.Delete {
				act = "DELETE"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\n", act, it.Key, it.Reason)
		}
		_ = tw.Flush()
		fmt.Fprintf(e.stdout, "\nkept backups: %v\nrunning backups: %v\ndeleted backups: %v\ndelete %d objects (%s), keep %d (%s)\n",
			plan.KeptBackups, plan.RunningBackups, plan.DeletedBackups, plan.DeleteCount, human(plan.DeleteBytes), plan.KeepCount, human(plan.KeepBytes))
	}
	if !apply {
		return nil
	}
	if _, err := retention.Apply(c.Context, a, plan, e.logger()); err != nil {
		return &exitError{code: exitArchive, err: fmt.Errorf("retention: %w", err)}
	}
	return nil
}
