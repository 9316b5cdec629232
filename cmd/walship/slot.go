package main

import (
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/walship/walship/archive"
	"github.com/walship/walship/catalog"
)

func slotCommand(env *appEnv) *cli.Command {
	return &cli.Command{
		Name:  "slot",
		Usage: "followers' slots: what each still needs from the archive",
		Description: "A slot records the oldest segment a follower still needs and when it was last heard from.\n" +
			"Retention keeps WAL from every live slot's position on; a slot not heard from within its TTL\n" +
			"no longer protects anything. walship agent heartbeats its slot; without an agent, set\n" +
			"archive_cleanup_command = 'walship slot advance NAME %r' on the standby.",
		Subcommands: []*cli.Command{
			{
				Name: "create", Usage: "create a slot", ArgsUsage: "NAME",
				Flags:  append(globalFlags(), &cli.DurationFlag{Name: "ttl", Value: archive.DefaultSlotTTL, Usage: "how long the slot protects WAL without a heartbeat"}),
				Action: env.slotCreate,
			},
			{
				Name: "list", Usage: "list slots with position, heartbeat, lag and whether they expired",
				Flags:  append(globalFlags(), &cli.BoolFlag{Name: "json", Usage: "JSON"}),
				Action: env.slotList,
			},
			{
				Name: "advance", Usage: "move a slot's position and renew its heartbeat (archive_cleanup_command = 'walship slot advance NAME %r')",
				ArgsUsage: "NAME SEGMENT", Flags: globalFlags(), Action: env.slotAdvance,
			},
			{
				Name: "drop", Usage: "remove a slot", ArgsUsage: "NAME", Flags: globalFlags(), Action: env.slotDrop,
			},
		},
	}
}

func (e *appEnv) slotCreate(c *cli.Context) error {
	a, err := e.openArchive(c, 1)
	if err != nil {
		return err
	}
	// A slot where no cluster archives yet is most likely a mistyped
	// location: refuse it as list and status would.
	if err := archive.ValidSlotName(c.Args().First()); err != nil {
		return &exitError{code: exitUsage, err: err}
	}
	if _, err := a.Identity(c.Context); err != nil {
		return &exitError{code: exitCode(opSlot, err), err: err}
	}
	s, err := a.CreateSlot(c.Context, c.Args().First(), c.Duration("ttl"))
	if err != nil {
		return &exitError{code: exitCode(opSlot, err), err: err}
	}
	e.logger().Info("slot created", "slot", s.Name, "ttl", time.Duration(s.TTL))
	return nil
}

func (e *appEnv) slotList(c *cli.Context) error {
	a, err := e.openArchive(c, 0)
	if err != nil {
		return err
	}
	cat, err := catalog.Load(c.Context, a, catalog.Slots|catalog.Heads)
	if err != nil {
		return &exitError{code: exitCode(opSlot, err), err: err}
	}
	rows := cat.SlotStates(time.Now())
	for _, r := range rows {
		if r.Expired {
			e.logger().Warn("slot EXPIRED: it no longer protects any WAL; its follower may need a rebuild", "slot", r.Name,
				"last_heartbeat", r.Heartbeat, "ttl", time.Duration(r.TTL))
		}
		if r.Problem != "" {
			e.logger().Error("slot reports a problem", "slot", r.Name, "problem", r.Problem)
		}
	}
	if c.Bool("json") {
		return writeJSON(e.stdout, rows)
	}
	return printSlots(e.stdout, rows)
}

// printSlots writes the slots as an aligned table.
func printSlots(w io.Writer, rows []catalog.SlotState) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tPOSITION\tREPLAYED\tLAG SEGMENTS\tLAST HEARTBEAT\tTTL\tSTATE")
	for _, r := range rows {
		state := "live"
		if r.Expired {
			state = "EXPIRED"
		}
		if r.Problem != "" {
			state += ", problem: see walship status"
		}
		lag := "-"
		if r.LagSegments != nil {
			lag = fmt.Sprint(*r.LagSegments)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.Name, dash(r.Position), dash(r.Replayed), lag,
			r.Heartbeat.Format(time.RFC3339), time.Duration(r.TTL), state)
	}
	return tw.Flush()
}

func (e *appEnv) slotAdvance(c *cli.Context) error {
	a, err := e.openArchive(c, 2)
	if err != nil {
		return err
	}
	s, err := a.UpdateSlot(c.Context, c.Args().Get(0), archive.SlotUpdate{Position: c.Args().Get(1)})
	if err != nil {
		return &exitError{code: exitCode(opSlot, err), err: err}
	}
	e.logger().Info("slot advanced", "slot", s.Name, "position", s.Position)
	return nil
}

func (e *appEnv) slotDrop(c *cli.Context) error {
	a, err := e.openArchive(c, 1)
	if err != nil {
		return err
	}
	if err := a.DropSlot(c.Context, c.Args().First()); err != nil {
		return &exitError{code: exitCode(opSlot, err), err: err}
	}
	e.logger().Info("slot dropped", "slot", c.Args().First())
	return nil
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
