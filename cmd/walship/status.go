package main

import (
	"fmt"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/walship/walship/archive"
	"github.com/walship/walship/backends"
	"github.com/walship/walship/backup"
)

type statusReport struct {
	Archive   string           `json:"archive"`
	Identity  archive.Identity `json:"identity"`
	Heads     []archive.Head   `json:"heads"`
	Backups   int              `json:"backups"`
	Newest    *backup.Manifest `json:"newest_backup,omitempty"`
	Slots     []slotRow        `json:"slots"`
	Problems  []string         `json:"problems"`
	CheckedAt time.Time        `json:"checked_at"`
}

func statusCommand(env *appEnv) *cli.Command {
	return &cli.Command{
		Name:        "status",
		Usage:       "the archive at a glance: identity, timeline heads, backups, slots and their problems",
		Description: "Exit statuses: 0 no problems; 8 a slot reports a problem or has expired; 3 archive unreachable.",
		Flags:       append(globalFlags(), &cli.BoolFlag{Name: "json", Usage: "JSON"}),
		Action: func(c *cli.Context) error {
			a, err := env.openArchive(c, 0)
			if err != nil {
				return err
			}
			r := statusReport{Archive: a.Storage().String(), CheckedAt: time.Now().UTC(), Problems: []string{}}
			if r.Identity, err = a.Identity(c.Context); err != nil {
				return &exitError{code: exitArchive, err: err}
			}
			var tlis []uint32
			err = a.Storage().List(c.Context, "heads/", func(o backends.ObjectInfo) error {
				var tli uint32
				if _, err := fmt.Sscanf(strings.TrimPrefix(o.Key, "heads/"), "%08X.json", &tli); err == nil {
					tlis = append(tlis, tli)
				}
				return nil
			})
			if err != nil {
				return &exitError{code: exitArchive, err: err}
			}
			for _, tli := range tlis {
				h, err := a.ReadHead(c.Context, tli)
				if err != nil {
					return &exitError{code: exitArchive, err: err}
				}
				r.Heads = append(r.Heads, h)
			}
			l, err := backup.List(c.Context, a.Storage())
			if err != nil {
				return &exitError{code: exitCode(opBackup, err), err: err}
			}
			r.Backups = len(l.Backups)
			if n := len(l.Backups); n > 0 {
				r.Newest = l.Backups[n-1]
			}
			if r.Slots, err = slotRows(c, a); err != nil {
				return &exitError{code: exitCode(opSlot, err), err: err}
			}
			for _, s := range r.Slots {
				if s.Expired {
					r.Problems = append(r.Problems, fmt.Sprintf("slot %s expired (last heartbeat %s): it no longer protects WAL",
						s.Name, s.Heartbeat.Format(time.RFC3339)))
				}
				if s.Problem != "" {
					r.Problems = append(r.Problems, "slot "+s.Name+": "+s.Problem)
				}
			}
			if c.Bool("json") {
				if err := writeJSON(env.stdout, r); err != nil {
					return err
				}
			} else {
				w := env.stdout
				fmt.Fprintf(w, "archive   %s\ncluster   system identifier %d, PostgreSQL %s, %d MiB segments\n",
					r.Archive, r.Identity.SystemIdentifier, r.Identity.PGVersion, r.Identity.SegmentSize>>20)
				for _, h := range r.Heads {
					fmt.Fprintf(w, "timeline  %d: head %s, pushed %s\n", h.Timeline, h.Segment, h.Pushed.Format(time.RFC3339))
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
			}
			if len(r.Problems) > 0 {
				return &exitError{code: exitProblems, err: fmt.Errorf("%d problem(s): %s", len(r.Problems), r.Problems[0]), logged: false}
			}
			return nil
		},
	}
}
