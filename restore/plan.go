package restore

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/walship/walship/catalog"
	"github.com/walship/walship/manifest"
	"github.com/walship/walship/segment"
)

var (
	// ErrUnreachable is wrapped when no backup and archived WAL reach the
	// target.
	ErrUnreachable = errors.New("the archive cannot reach the recovery target")
	// ErrUsage is wrapped when the restore request itself is wrong (a bad
	// target, a non-empty directory).
	ErrUsage = errors.New("bad restore request")
)

// TargetKind is what a recovery stops at.
type TargetKind int

// The kinds of recovery target.
const (
	TargetEnd       TargetKind = iota // replay all the archived WAL
	TargetTime                        // recovery_target_time
	TargetLSN                         // recovery_target_lsn
	TargetXID                         // recovery_target_xid
	TargetName                        // recovery_target_name (a restore point)
	TargetImmediate                   // recovery_target = 'immediate': the backup's consistent point
)

// Target is a recovery target as the operator gave it.
type Target struct {
	Kind TargetKind
	Time time.Time
	LSN  segment.LSN
	XID  uint64
	Name string
	// Timeline is "latest" (the default), "current" or a timeline number.
	Timeline string
	// Action is recovery_target_action: promote, pause or shutdown.
	Action string
}

// ParseTime reads a target time. A zone is required: the archive compares
// it with backup times, and PostgreSQL would read a bare time in its own
// time zone.
func ParseTime(s string) (time.Time, error) {
	for _, layout := range []string{time.RFC3339Nano, "2006-01-02 15:04:05.999999999Z07:00", "2006-01-02 15:04:05.999999999Z07",
		"2006-01-02 15:04:05.999999999 Z07:00", "2006-01-02 15:04:05.999999999 Z07", "2006-01-02 15:04:05.999999999 MST"} {
		if t, err := time.Parse(layout, s); err == nil {
			if strings.HasSuffix(layout, "MST") && t.Location() != time.UTC {
				if z, _ := t.Zone(); z != "UTC" && z != "GMT" {
					continue
				}
			}
			return t, nil
		}
	}
	return time.Time{}, fmt.Errorf("%w: target time %q: want a time with a zone, like 2026-11-26 10:00:00+00 or 2026-11-26T10:00:00Z", ErrUsage, s)
}

// Check validates the target's fields.
func (t *Target) Check() error {
	if t.Timeline == "" {
		t.Timeline = catalog.TimelineLatest
	}
	if t.Timeline != catalog.TimelineLatest && t.Timeline != catalog.TimelineCurrent {
		n, err := strconv.ParseUint(t.Timeline, 10, 32)
		if err != nil || n == 0 {
			return fmt.Errorf("%w: target timeline %q: want latest, current or a timeline number", ErrUsage, t.Timeline)
		}
	}
	switch t.Action {
	case "":
		t.Action = "promote"
	case "promote", "pause", "shutdown":
	default:
		return fmt.Errorf("%w: target action %q: want promote, pause or shutdown", ErrUsage, t.Action)
	}
	if t.Kind == TargetName && (t.Name == "" || len(t.Name) >= 64) {
		return fmt.Errorf("%w: restore point name must be 1 to 63 bytes", ErrUsage)
	}
	return nil
}

// String describes the target for messages.
func (t Target) String() string {
	switch t.Kind {
	case TargetTime:
		return "time " + t.Time.UTC().Format("2006-01-02 15:04:05.999999Z07:00")
	case TargetLSN:
		return "LSN " + t.LSN.String()
	case TargetXID:
		return "xid " + strconv.FormatUint(t.XID, 10)
	case TargetName:
		return "restore point " + strconv.Quote(t.Name)
	case TargetImmediate:
		return "the backup's consistent point"
	}
	return "the end of the archived WAL"
}

// Plan is the chosen backup and what recovery will read.
type Plan struct {
	Backup *manifest.Manifest
	// Chain is what restoring Backup takes: its full backup and the
	// incrementals to it, oldest first, Backup last ([Backup] for a full
	// backup). The WAL recovery needs is Backup's alone.
	Chain     []*manifest.Manifest
	Timeline  uint32 // the resolved target timeline
	Why       string
	Notes     []string
	FirstWAL  segment.Name
	LastWAL   segment.Name // the last segment checked present
	Segments  int          // segments checked present
	Candidate int          // backups considered
}

// Choose picks the newest backup that can reach t (or checks the one named
// by backupID) and checks, from the inventory alone, that the archived WAL
// covers the way there. Nothing is downloaded.
func Choose(c *catalog.Catalog, t Target, backupID string) (*Plan, error) {
	if err := t.Check(); err != nil {
		return nil, err
	}
	cands := c.Backups
	if backupID != "" && backupID != "latest" {
		cands = nil
		for _, b := range c.Backups {
			if b.ID == backupID {
				cands = []*manifest.Manifest{b}
			}
		}
		if cands == nil {
			return nil, fmt.Errorf("%w: backup %s is not in the archive (walship backup list shows the backups)", ErrUnreachable, backupID)
		}
	}
	if len(cands) == 0 {
		return nil, fmt.Errorf("%w: the archive holds no complete backup", ErrUnreachable)
	}
	var reasons, broken []string
	early, other := 0, 0
	for i := len(cands) - 1; i >= 0; i-- {
		b := cands[i]
		p, kind, why := try(c, b, t)
		if p != nil {
			p.Candidate = len(cands) - i
			if backupID == "latest" && i != len(cands)-1 {
				return nil, fmt.Errorf("%w: the latest backup %s cannot serve: %s", ErrUnreachable, cands[len(cands)-1].ID, reasons[0])
			}
			p.Notes = append(p.Notes, broken...)
			return p, nil
		}
		switch kind {
		case tooLate:
			early++
		case elsewhere:
		case brokenChain:
			other++
			broken = append(broken, "newer backup "+b.ID+" was passed over: "+why)
		default:
			other++
		}
		reasons = append(reasons, b.ID+": "+why)
	}
	if early > 0 && other == 0 {
		return nil, fmt.Errorf("%w: %s is before every backup (the oldest, %s, is consistent only from %s, LSN %s)",
			ErrUnreachable, t, cands[0].ID, cands[0].StopTime.Format(time.RFC3339), cands[0].StopLSN)
	}
	return nil, fmt.Errorf("%w: no backup can reach %s: %s", ErrUnreachable, t, strings.Join(reasons, "; "))
}

// Why a backup cannot serve a target.
type refusal int

const (
	cannot      refusal = iota // the WAL is missing, or the timeline unknown
	tooLate                    // the backup is consistent only after the target
	elsewhere                  // the backup is on a timeline the target's path does not pass
	brokenChain                // an incremental whose chain of parents cannot be restored
)

// try checks one backup.
func try(c *catalog.Catalog, b *manifest.Manifest, t Target) (p *Plan, kind refusal, why string) {
	chain, err := chainOf(c, b)
	if err != nil {
		return nil, brokenChain, err.Error()
	}
	tli, err := c.TargetTimeline(b, t.Timeline)
	if err != nil {
		return nil, cannot, err.Error()
	}
	path, err := c.Path(b.Timeline, tli)
	if err != nil {
		return nil, cannot, err.Error()
	}
	if !path.Holds(b) {
		return nil, elsewhere, fmt.Sprintf("its timeline %d at %s is not in the history of timeline %d", b.StopTimeline, b.StopLSN, tli)
	}
	ss := c.SegSize
	start := b.StartLSN.SegNo(ss)
	stop := uint64(b.StopLSN-1) / ss
	if b.StopLSN <= b.StartLSN {
		stop = start
	}
	p = &Plan{Backup: b, Chain: chain, Timeline: tli}
	need := stop // the last segment that must be present
	switch t.Kind {
	case TargetLSN:
		if b.StopLSN > t.LSN {
			return nil, tooLate, fmt.Sprintf("it is consistent only from LSN %s, after the target", b.StopLSN)
		}
		need = max(stop, t.LSN.SegNo(ss))
		p.Why = fmt.Sprintf("newest backup consistent before LSN %s", t.LSN)
	case TargetTime:
		if b.StopTime.After(t.Time) {
			return nil, tooLate, fmt.Sprintf("it is consistent only from %s, after the target", b.StopTime.Format(time.RFC3339))
		}
		n, ok := path.FirstArchivedAfter(start, t.Time)
		if !ok {
			return nil, cannot, fmt.Sprintf("no WAL archived after %s on the way from %s: recovery could not find the first commit after the target (archive not caught up, or a gap)",
				t.Time.UTC().Format(time.RFC3339), segment.Name{TLI: b.Timeline, SegNo: start}.String(ss))
		}
		need = max(stop, n)
		p.Why = fmt.Sprintf("newest backup consistent before %s", t.Time.UTC().Format(time.RFC3339))
	case TargetXID:
		if !xidAtOrAfter(t.XID, b.NextXID) {
			return nil, tooLate, fmt.Sprintf("xid %d was assigned before it started (next xid %d)", t.XID, b.NextXID)
		}
		p.Why = fmt.Sprintf("newest backup that started before xid %d was assigned", t.XID)
		p.Notes = append(p.Notes, "if that transaction committed before the backup became consistent, PostgreSQL stops with \"recovery stop point before consistent recovery point\"; then pass --backup with an older backup")
	case TargetName:
		p.Why = "newest backup; a restore point's position is only known by replaying WAL"
		p.Notes = append(p.Notes, "if the restore point was created before this backup, PostgreSQL stops with \"recovery ended before configured recovery target was reached\"; then pass --backup with an older backup")
	case TargetImmediate:
		p.Why = "newest backup; recovery stops where it becomes consistent"
	case TargetEnd:
		head, ok := path.Head()
		if !ok || head < stop {
			head = stop
		}
		need = head
		p.Why = "newest backup; recovery replays all archived WAL"
	}
	if missing, ok := path.FirstMissing(start, need); ok {
		return nil, cannot, fmt.Sprintf("WAL segment %s is not in the archive (needed from %s to %s)", missing.String(ss),
			path.At(start).String(ss), path.At(need).String(ss))
	}
	if t.Kind == TargetXID || t.Kind == TargetName {
		if head, ok := path.Head(); ok {
			if missing, gap := path.FirstMissing(start, head); gap {
				p.Notes = append(p.Notes, fmt.Sprintf("the archive has a gap at %s: the target must lie before it", missing.String(ss)))
			} else {
				need = max(need, head)
			}
		}
	}
	p.FirstWAL, p.LastWAL, p.Segments = path.At(start), path.At(need), int(need-start+1)
	return p, cannot, ""
}

// chainOf resolves b's chain (catalog.Chain) and refuses one whose
// members could not be combined: another major or segment size than b's.
func chainOf(c *catalog.Catalog, b *manifest.Manifest) ([]*manifest.Manifest, error) {
	chain, err := c.Chain(b)
	if err != nil {
		return nil, err
	}
	for _, m := range chain {
		if m.PGVersionNum/10000 != b.PGVersionNum/10000 || m.SegmentSize != b.SegmentSize {
			return nil, fmt.Errorf("%w: backup %s (PostgreSQL %s) is in the chain of %s (PostgreSQL %s), which is another server version or segment size",
				catalog.ErrBrokenChain, m.ID, m.PGVersion, b.ID, b.PGVersion)
		}
	}
	return chain, nil
}

// xidAtOrAfter compares a target xid with a backup's next xid. A 32-bit
// target is compared as PostgreSQL compares xids, modulo 2^32.
func xidAtOrAfter(target, next uint64) bool {
	if target > math.MaxUint32 {
		return target >= next
	}
	return int32(uint32(target)-uint32(next)) >= 0
}
