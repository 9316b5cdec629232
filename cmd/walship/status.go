package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/walship/walship/archive"
	"github.com/walship/walship/backends"
	"github.com/walship/walship/manifest"
	"github.com/walship/walship/segment"
	"github.com/walship/walship/verify"
)

// timelineRange is a timeline's first and last archived segment.
type timelineRange struct {
	Timeline uint32 `json:"timeline"`
	First    string `json:"first"`
	Last     string `json:"last"`
	Segments int    `json:"segments"`
}

type statusReport struct {
	Archive   string             `json:"archive"`
	Identity  archive.Identity   `json:"identity"`
	Heads     []archive.Head     `json:"heads"`
	Timelines []timelineRange    `json:"timelines"`
	Objects   int                `json:"objects"`
	Bytes     int64              `json:"bytes"`
	Backups   int                `json:"backups"`
	Newest    *manifest.Manifest `json:"newest_backup,omitempty"`
	Slots     []slotRow          `json:"slots"`
	Gaps      []archive.Gap      `json:"gaps"`
	Problems  []string           `json:"problems"`
	CheckedAt time.Time          `json:"checked_at"`
}

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
			r := statusReport{Archive: a.Storage().String(), CheckedAt: time.Now().UTC(), Problems: []string{}}
			if r.Identity, err = a.Identity(c.Context); err != nil {
				return &exitError{code: exitCode(opStatus, err), err: err}
			}
			ranges := map[uint32]*timelineRange{}
			histories := map[uint32]bool{}
			err = a.Storage().List(c.Context, "", func(o backends.ObjectInfo) error {
				r.Objects++
				r.Bytes += o.Size
				if h, ok := strings.CutPrefix(o.Key, "history/"); ok {
					if f, err := segment.ParseFile(h); err == nil && f.Kind == segment.KindHistory {
						histories[f.TLI] = true
					}
					return nil
				}
				if !strings.HasPrefix(o.Key, "wal/") {
					return nil
				}
				f, err := segment.ParseFile(o.Key[strings.LastIndexByte(o.Key, '/')+1:])
				if err != nil || f.Kind != segment.KindSegment {
					return nil
				}
				tr := ranges[f.TLI]
				if tr == nil {
					tr = &timelineRange{Timeline: f.TLI, First: f.String()}
					ranges[f.TLI] = tr
				}
				tr.Last = f.String() // listed in key order
				tr.Segments++
				return nil
			})
			if err != nil {
				return &exitError{code: exitCode(opStatus, err), err: err}
			}
			for _, tr := range ranges {
				r.Timelines = append(r.Timelines, *tr)
			}
			sort.Slice(r.Timelines, func(i, j int) bool { return r.Timelines[i].Timeline < r.Timelines[j].Timeline })
			var tlis []uint32
			err = a.Storage().List(c.Context, "heads/", func(o backends.ObjectInfo) error {
				var tli uint32
				if _, err := fmt.Sscanf(strings.TrimPrefix(o.Key, "heads/"), "%08X.json", &tli); err == nil {
					tlis = append(tlis, tli)
				}
				return nil
			})
			if err != nil {
				return &exitError{code: exitCode(opStatus, err), err: err}
			}
			for _, tli := range tlis {
				h, err := a.ReadHead(c.Context, tli)
				if err != nil {
					return &exitError{code: exitCode(opStatus, err), err: err}
				}
				r.Heads = append(r.Heads, h)
			}
			l, err := manifest.List(c.Context, a.Storage())
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
			if r.Gaps, err = openGaps(c, a); err != nil {
				return &exitError{code: exitCode(opStatus, err), err: err}
			}
			for _, g := range r.Gaps {
				r.Problems = append(r.Problems, fmt.Sprintf("gap on timeline %d: %s to %s were never archived (found when %s was pushed at %s)",
					g.Timeline, g.From, g.To, g.Before, g.Detected.Format(time.RFC3339)))
			}
			r.Problems = append(r.Problems, missingHistory(ranges, l.Backups, r.Slots, histories, r.Identity.SegmentSize)...)
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
			}
			if len(r.Problems) > 0 {
				return &exitError{code: exitProblems, err: fmt.Errorf("%d problem(s): %s", len(r.Problems), r.Problems[0]), logged: false}
			}
			return nil
		},
	}
}

// missingHistory reports the history files a restore or a follower
// starting on a backup's or a slot's timeline needs and the archive lacks.
func missingHistory(wal map[uint32]*timelineRange, backups []*manifest.Manifest, slots []slotRow, histories map[uint32]bool, segSize uint64) []string {
	starts, have := map[uint32]bool{}, map[uint32]bool{}
	for tli := range wal {
		have[tli] = true
	}
	for _, b := range backups {
		starts[b.Timeline], have[b.StopTimeline] = true, true
	}
	for _, s := range slots {
		if n, err := segment.ParseName(s.Position, segSize); err == nil {
			starts[n.TLI] = true
		}
	}
	var out []string
	for _, p := range verify.MissingHistory(starts, have, histories) {
		out = append(out, p.Detail)
	}
	return out
}

// openGaps reads the gaps push recorded and keeps those whose first
// segment is still missing (a late push closes a gap).
func openGaps(c *cli.Context, a *archive.Archive) ([]archive.Gap, error) {
	var keys []string
	err := a.Storage().List(c.Context, "gaps/", func(o backends.ObjectInfo) error {
		keys = append(keys, o.Key)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list gaps: %w", err)
	}
	gaps := []archive.Gap{}
	for _, k := range keys {
		rc, _, err := a.Storage().Get(c.Context, k)
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", k, err)
		}
		var g archive.Gap
		err = json.NewDecoder(io.LimitReader(rc, 4096)).Decode(&g)
		rc.Close()
		if err != nil {
			continue
		}
		f, err := segment.ParseFile(g.From)
		if err != nil {
			continue
		}
		_, err = a.Storage().Stat(c.Context, archive.Key(f))
		if errors.Is(err, backends.ErrNotFound) {
			gaps = append(gaps, g)
		} else if err != nil {
			return nil, err
		}
	}
	return gaps, nil
}
