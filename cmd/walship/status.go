package main

import (
	"fmt"
	"io"
	"time"

	"github.com/urfave/cli/v2"
	"github.com/walship/walship/catalog"
)

func statusCommand(env *appEnv) *cli.Command {
	return &cli.Command{
		Name:  "status",
		Usage: "the archive at a glance: identity, timeline heads, backups, slots and their problems",
		Description: "Exit statuses: 0 no problems; 8 a gap in the WAL, a timeline whose history file is missing,\n" +
			"or a slot that expired or reports a problem; 3 archive unreachable.",
		Flags: append(globalFlags(), &cli.BoolFlag{Name: "json", Usage: "JSON"}),
		Action: func(c *cli.Context) error {
			a, err := env.openArchive(c, 0)
			if err != nil {
				return err
			}
			cat, err := catalog.Load(c.Context, a, catalog.All)
			if err != nil {
				return &exitError{code: exitCode(opStatus, err), err: err}
			}
			r := cat.Status(a.Storage().String(), time.Now())
			if err := printStatus(env.stdout, r, c.Bool("json")); err != nil {
				return err
			}
			if len(r.Problems) > 0 {
				return &exitError{code: exitProblems, err: fmt.Errorf("%d problem(s): %s", len(r.Problems), r.Problems[0]), logged: false}
			}
			return nil
		},
	}
}

// printStatus writes the report as JSON or as aligned lines.
func printStatus(w io.Writer, r catalog.Status, asJSON bool) error {
	if asJSON {
		return writeJSON(w, r)
	}
	fmt.Fprintf(w, "archive   %s\ncluster   system identifier %d, PostgreSQL %s, %d MiB segments\n",
		r.Archive, r.Identity.SystemIdentifier, r.Identity.PGVersion, r.Identity.SegmentSize>>20)
	fmt.Fprintf(w, "objects   %d, %s stored\n", r.Objects, human(r.Bytes))
	for _, tr := range r.Timelines {
		fmt.Fprintf(w, "timeline  %d: %d segments, %s to %s\n", tr.Timeline, tr.Segments, tr.First, tr.Last)
	}
	for _, h := range r.Heads {
		fmt.Fprintf(w, "head      timeline %d: %s, pushed %s\n", h.Timeline, h.Segment, h.Pushed.Format(time.RFC3339))
	}
	for _, g := range r.Gaps {
		fmt.Fprintf(w, "gap       timeline %d: %s to %s missing\n", g.Timeline, g.From, g.To)
	}
	if r.Newest != nil {
		fmt.Fprintf(w, "backups   %d, newest %s (stop %s)\n", r.Backups, r.Newest.ID, r.Newest.StopLSN)
	} else {
		fmt.Fprintf(w, "backups   none\n")
	}
	for _, s := range r.Slots {
		lag := "?"
		if s.LagSegments != nil {
			lag = fmt.Sprint(*s.LagSegments)
		}
		fmt.Fprintf(w, "slot      %s: position %s, replayed %s, lag %s segments, heartbeat %s\n",
			s.Name, dash(s.Position), dash(s.Replayed), lag, s.Heartbeat.Format(time.RFC3339))
	}
	for _, p := range r.Problems {
		fmt.Fprintf(w, "PROBLEM   %s\n", p)
	}
	return nil
}
