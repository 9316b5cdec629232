// Package agent is the disaster-recovery follower: it polls the archive's
// head for a timeline, downloads the segments after the standby's replay
// position into the spool (package spool) in order, verified and synced,
// follows timeline switches, heartbeats its slot, and reports a segment
// gone from the archive for good together with the backup that can serve.
package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/walship/walship/archive"
	"github.com/walship/walship/backends"
	"github.com/walship/walship/catalog"
	"github.com/walship/walship/fetch"
	"github.com/walship/walship/segment"
	"github.com/walship/walship/spool"
)

// Position is how far the standby has come: what it replayed, and the redo
// point of its last restartpoint (the oldest WAL a restart needs).
type Position struct {
	Timeline uint32
	Replay   segment.LSN
	Redo     segment.LSN
}

// Options configure the restore agent.
type Options struct {
	Spool string // directory the agent fills and fetch --spool empties
	Slot  string // the follower's slot in the archive
	// Position reports the standby's replay position (from a connection to
	// it). Without it the agent infers replay from the files the standby takes
	// out of the spool, and leaves the slot's position to `slot advance`.
	Position  func(ctx context.Context) (Position, error)
	Ahead     int           // segments kept ready beyond replay; default 16
	Parallel  int           // downloads at once; default 4
	PollMin   time.Duration // first wait for new WAL; default 500ms
	PollMax   time.Duration // the wait doubles up to this while nothing arrives; default 30s
	Heartbeat time.Duration // how often the slot is written; default 1m
	Log       *slog.Logger
}

// Stats are read by the metrics endpoint; every field is atomic.
type Stats struct {
	Timeline      atomic.Uint32
	HeadSegment   atomic.Uint64 // segment number of the archive head on Timeline
	ReplaySegment atomic.Uint64 // segment number replay has reached
	LagSegments   atomic.Int64
	LagBytes      atomic.Int64
	LagSeconds    atomic.Int64 // milliseconds
	SpoolFiles    atomic.Int64
	SpoolBytes    atomic.Int64
	Downloads     atomic.Uint64
	Taken         atomic.Uint64 // placed segments that left the spool (the standby took them)
	Failures      atomic.Uint64
	LastPoll      atomic.Int64 // unix nanoseconds
	Gone          atomic.Bool  // a segment the standby needs is gone from the archive
}

// Agent keeps a standby's next segments in a spool, ahead of replay.
type Agent struct {
	a     *archive.Archive
	o     Options
	stats Stats

	segSize uint64
	sysID   uint64
	lock    *os.File // held while the agent runs: see spool.LockFile
	tli     uint32
	next    uint64 // next segment number to download on tli
	head    uint64
	headOK  bool
	pushed  time.Time            // when the head was pushed
	arrived map[uint64]time.Time // archive time of segments we placed
	placed  map[uint64]bool      // segments we put in the spool, not yet seen taken
	replay  uint64               // segment replay has reached; 0 if unknown
	redo    segment.Name
	known   bool // replay is known (from Position or from a taken file)

	inflight  map[uint64]bool
	probe     bool          // no head object: try the next segment once
	polled    time.Time     // last successful poll
	pollEvery time.Duration // the wait after it, until the next poll
	noHistory uint32        // the history file of this timeline was absent at the last poll
	retryAt   time.Time     // after a failed download, not before
	backoff   time.Duration
	problem   string
	goneSeg   uint64 // the segment reported gone
	goneKnown bool   // a gone segment is reported (the Gone metric follows the slot write)
	lastBeat  time.Time
	lastPos   time.Time
	lastState spool.State
	posErr    string
}

type download struct {
	n   uint64
	res fetch.Result
	err error
}

// New prepares an agent; Run does the work.
func New(a *archive.Archive, o Options) *Agent {
	if o.Ahead <= 0 {
		o.Ahead = 16
	}
	if o.Parallel <= 0 {
		o.Parallel = 4
	}
	if o.PollMin <= 0 {
		o.PollMin = 500 * time.Millisecond
	}
	if o.PollMax < o.PollMin {
		o.PollMax = max(30*time.Second, o.PollMin)
	}
	if o.Heartbeat <= 0 {
		o.Heartbeat = time.Minute
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	return &Agent{a: a, o: o, arrived: map[uint64]time.Time{}, placed: map[uint64]bool{}, inflight: map[uint64]bool{}}
}

// Stats are the agent's live numbers.
func (g *Agent) Stats() *Stats { return &g.stats }

// Run follows the archive until ctx ends, then waits for its downloads,
// saves where it was, withdraws its published poll and returns nil. It
// returns early only if it cannot start: no archive, no slot, a spool that
// is not its own (spool.ErrOwner) or not usable, another agent on the spool.
func (g *Agent) Run(ctx context.Context) error {
	id, err := g.a.Identity(ctx)
	if err != nil {
		return err
	}
	g.segSize, g.sysID = id.SegmentSize, id.SystemIdentifier
	if _, err := g.a.GetSlot(ctx, g.o.Slot); err != nil {
		return err
	}
	if err := g.openSpool(ctx); err != nil {
		return err
	}
	defer func() { g.lock.Close() }()
	if err := g.start(ctx); err != nil {
		return err
	}
	results := make(chan download, g.o.Parallel)
	var wg sync.WaitGroup
	defer func() {
		wg.Wait()
		close(results)
		for r := range results {
			g.finished(ctx, r)
		}
		g.saveState(false) // withdrawn before the lock is dropped
	}()
	wait := g.o.PollMin
	var pollDue time.Time // zero: poll at once
	for {
		g.refreshPosition(ctx)
		g.tidySpool(ctx)
		now := time.Now()
		if (!g.headOK || g.next > g.head) && len(g.inflight) == 0 && !now.Before(pollDue) {
			before := g.polled
			if g.poll(ctx) {
				wait = g.o.PollMin
			} else {
				wait = min(wait*2, g.o.PollMax)
			}
			pollDue = now.Add(wait)
			if g.polled != before {
				g.pollEvery = wait
			}
		}
		if !now.Before(g.retryAt) {
			g.dispatch(ctx, &wg, results)
		}
		g.beat(ctx, false)
		g.saveState(ctx.Err() == nil)
		g.updateStats()
		var timer <-chan time.Time
		if len(g.inflight) == 0 {
			due := pollDue
			if g.headOK && g.next <= g.head {
				// Waiting for replay to take files (spool full; a local
				// look, cheap) or for a retry: look again soon.
				due = now.Add(spool.ScanEvery)
				if g.retryAt.After(due) {
					due = g.retryAt
				}
			}
			timer = time.After(max(due.Sub(now), time.Millisecond))
		}
		select {
		case <-ctx.Done():
			return nil
		case r := <-results:
			g.finished(ctx, r)
		case <-timer:
		}
	}
}

// start decides where to begin: the standby's replay position, else the
// saved state, else the slot, else the newest timeline's head.
func (g *Agent) start(ctx context.Context) error {
	if g.o.Position != nil {
		if p, err := g.o.Position(ctx); err == nil && p.Replay != 0 {
			// Replay is the end of the last record replayed: at a segment
			// boundary the standby wants the segment starting there, else
			// the one after the segment it is in.
			g.tli, g.next = p.Timeline, (p.Replay-1).SegNo(g.segSize)+1
			g.o.Log.Info("agent starting at the standby's replay position", "replay_lsn", p.Replay, "next", g.name(g.next))
			return nil
		} else if err != nil {
			g.o.Log.Warn("standby not reachable yet; starting from the saved state", "error", err)
		}
	}
	s, err := g.a.GetSlot(ctx, g.o.Slot)
	if err != nil {
		return err
	}
	// A slot with a position and no replay yet was just set by
	// walship restore --slot: the standby starts from its backup.
	fresh := s.Replayed == "" && s.Position != ""
	if b, err := os.ReadFile(filepath.Join(g.o.Spool, spool.StateFile)); err == nil && !fresh {
		var st spool.State
		if json.Unmarshal(b, &st) == nil {
			if n, err := segment.ParseName(st.Next, g.segSize); err == nil {
				g.tli, g.next = n.TLI, n.SegNo
				g.o.Log.Info("agent resuming", "next", st.Next)
				return nil
			}
		}
	}
	for _, p := range []string{s.Replayed, s.Position} {
		if n, err := segment.ParseName(p, g.segSize); err == nil {
			g.tli, g.next = n.TLI, n.SegNo
			g.o.Log.Info("agent starting at the slot's position", "slot", s.Name, "next", g.name(g.next))
			return nil
		}
	}
	// Nothing known: follow new WAL on the newest timeline.
	tli := uint32(1)
	for {
		if _, err := g.a.Storage().Stat(ctx, archive.Key(segment.File{Kind: segment.KindHistory, TLI: tli + 1})); err != nil {
			break
		}
		tli++
	}
	g.tli = tli
	if h, err := g.a.ReadHead(ctx, tli); err == nil {
		n, _ := segment.ParseName(h.Segment, g.segSize)
		g.next = n.SegNo + 1
	}
	g.o.Log.Warn("no replay position known (no --standby, no saved state, slot never advanced): following new WAL only",
		"timeline", tli, "next", g.name(g.next))
	return nil
}

func (g *Agent) name(n uint64) string { return segment.Name{TLI: g.tli, SegNo: n}.String(g.segSize) }

// refreshPosition asks the standby how far it is.
func (g *Agent) refreshPosition(ctx context.Context) {
	now := time.Now()
	if g.o.Position == nil || now.Sub(g.lastPos) < 250*time.Millisecond {
		return
	}
	g.lastPos = now
	p, err := g.o.Position(ctx)
	if err != nil {
		if msg := err.Error(); msg != g.posErr {
			g.o.Log.Warn("cannot read the standby's replay position", "error", err)
			g.posErr = msg
		}
		return
	}
	g.posErr = ""
	if p.Replay != 0 {
		g.replay, g.known = p.Replay.SegNo(g.segSize), true
	}
	g.redo = segment.Name{TLI: p.Timeline, SegNo: p.Redo.SegNo(g.segSize)}
}

// tidySpool notes which placed files replay took, and removes files replay
// no longer needs.
func (g *Agent) tidySpool(ctx context.Context) {
	files, err := spool.Scan(g.o.Spool, g.segSize, false)
	if errors.Is(err, os.ErrNotExist) {
		// Someone removed the spool: start it again, empty, locked.
		g.placed = map[uint64]bool{}
		if err = os.MkdirAll(g.o.Spool, 0o700); err == nil {
			g.relock(ctx)
		}
	}
	if err != nil {
		g.o.Log.Warn("cannot read the spool", "error", err)
		return
	}
	here := map[uint64]bool{}
	var bytes int64
	for _, f := range files {
		if f.Name.TLI == g.tli {
			here[f.Name.SegNo] = true
		}
	}
	for n := range g.placed {
		if !here[n] {
			delete(g.placed, n)
			g.stats.Taken.Add(1)
			if g.o.Position == nil && (!g.known || n > g.replay) {
				g.replay, g.known = n, true // fetch took it: replay has reached it
			}
		}
	}
	count := int64(0)
	for _, f := range files {
		stale := f.Name.TLI != g.tli && f.Name.SegNo >= g.next
		if (g.known && f.Name.SegNo < g.replay) || stale {
			_ = os.Remove(filepath.Join(g.o.Spool, f.Name.String(g.segSize)))
			delete(g.placed, f.Name.SegNo)
			continue
		}
		count++
		bytes += f.Size
	}
	g.stats.SpoolFiles.Store(count)
	g.stats.SpoolBytes.Store(bytes)
}

// ahead counts segments ready or coming beyond replay.
func (g *Agent) ahead() int { return len(g.placed) + len(g.inflight) }

// dispatch starts downloads, in order, within the bounds.
func (g *Agent) dispatch(ctx context.Context, wg *sync.WaitGroup, results chan<- download) {
	// Without a head object, probe the next segment alone, once per poll.
	last := g.head
	if !g.headOK {
		if !g.probe {
			return
		}
		g.probe = false
		last = g.next
	}
	for len(g.inflight) < g.o.Parallel && g.next <= last && g.ahead() < g.o.Ahead {
		n := g.next
		g.next++
		if g.known && n < g.replay {
			continue
		}
		name := g.name(n)
		if g.checkSpoolFile(name) {
			g.placed[n] = true
			continue
		}
		g.inflight[n] = true
		wg.Add(1)
		go func() {
			defer wg.Done()
			res, err := fetch.Fetch(ctx, g.a, name, filepath.Join(g.o.Spool, name), fetch.Options{Attempts: 2, Sync: true})
			results <- download{n: n, res: res, err: err} // buffered for every download in flight
		}()
	}
}

// finished takes a download's outcome.
func (g *Agent) finished(ctx context.Context, r download) {
	delete(g.inflight, r.n)
	name := g.name(r.n)
	switch {
	case r.err == nil:
		g.o.Log.Debug("prefetched", "segment", name, "ms", r.res.Elapsed.Milliseconds())
		g.backoff = 0
		g.placed[r.n] = true
		g.arrived[r.n] = r.res.Modified
		g.stats.Downloads.Add(1)
		if g.problem != "" && g.goneKnown && r.n == g.goneSeg {
			g.o.Log.Info("the missing segment is back in the archive", "segment", name)
			g.setProblem(ctx, "")
		}
		return
	case ctx.Err() != nil:
	case errors.Is(r.err, backends.ErrNotFound):
		if g.headOK && r.n <= g.head {
			g.gone(ctx, r.n)
		}
	default:
		g.stats.Failures.Add(1)
		g.o.Log.Warn("download failed; will retry", "segment", name, "error", r.err)
	}
	g.next = min(g.next, r.n)
	g.backoff = min(max(2*g.backoff, g.o.PollMin), g.o.PollMax)
	g.retryAt = time.Now().Add(g.backoff)
}

// gone reports a segment the archive will not produce: later segments were
// pushed on the timeline, so it was deleted or never arrived.
func (g *Agent) gone(ctx context.Context, n uint64) {
	if g.goneKnown {
		return
	}
	g.goneKnown = true
	g.goneSeg = n
	hint := "no backup in the archive can serve it either: take one (walship backup push), then rebuild the standby with walship restore --standby --backup <its id> --pgdata <empty directory> --slot " + g.o.Slot
	if c, err := catalog.Load(ctx, g.a, catalog.Backups|catalog.Histories); err == nil {
		if b := c.Serving(); b != nil {
			hint = "rebuild it: walship restore --standby --backup " + b.ID + " --pgdata <empty directory> --slot " + g.o.Slot
		}
	}
	msg := fmt.Sprintf("segment %s is gone from the archive (timeline %d's head is %s): this standby cannot catch up from the archive; %s",
		g.name(n), g.tli, g.name(g.head), hint)
	g.o.Log.Error(msg)
	g.setProblem(ctx, msg)
	// The metric last, so that whoever sees it finds the slot saying why.
	g.stats.Gone.Store(true)
}

func (g *Agent) setProblem(ctx context.Context, msg string) {
	g.problem = msg
	if msg == "" {
		g.goneKnown = false
		g.stats.Gone.Store(false)
	}
	g.beat(ctx, true)
}

// poll learns of new WAL: one GET of the head object; when there is
// nothing new, one look for the next timeline's history file. It reports
// whether there is more to download.
func (g *Agent) poll(ctx context.Context) bool {
	g.stats.LastPoll.Store(time.Now().UnixNano())
	h, err := g.a.ReadHead(ctx, g.tli)
	g.o.Log.Debug("polled head", "timeline", g.tli, "head", h.Segment, "next", g.name(g.next), "error", err)
	switch {
	case err == nil:
		n, _ := segment.ParseName(h.Segment, g.segSize)
		g.head, g.headOK, g.pushed = n.SegNo, true, h.Pushed
		g.polled, g.noHistory = time.Now(), 0
		if g.next <= g.head {
			return true
		}
	case errors.Is(err, backends.ErrNotFound):
		g.headOK = false
	default:
		g.stats.Failures.Add(1)
		g.o.Log.Warn("cannot read the archive head", "error", err)
		return false
	}
	next := segment.File{Kind: segment.KindHistory, TLI: g.tli + 1}
	if _, err := g.a.Storage().Stat(ctx, archive.Key(next)); err != nil {
		g.probe = !g.headOK // without a head, try the next segment each poll
		if errors.Is(err, backends.ErrNotFound) && g.headOK {
			g.noHistory = next.TLI
		}
		return false
	}
	data, err := archive.ReadSealed(ctx, g.a.Storage(), archive.Key(next))
	if err != nil {
		g.o.Log.Warn("cannot read the next timeline's history", "error", err)
		return false
	}
	hist, err := segment.ParseHistory(next.TLI, data)
	if err != nil {
		g.o.Log.Warn("bad timeline history", "file", next.String(), "error", err)
		return false
	}
	for _, e := range hist {
		if e.TLI == g.tli {
			from := e.SwitchLSN.SegNo(g.segSize)
			g.o.Log.Info("following the new timeline", "timeline", next.TLI, "switch_lsn", e.SwitchLSN)
			g.tli, g.next, g.headOK = next.TLI, from, false
			g.placed = map[uint64]bool{}
			return true
		}
	}
	return false
}

// beat writes the slot: position, replay, problem, heartbeat.
func (g *Agent) beat(ctx context.Context, now bool) {
	t := time.Now()
	if !now && t.Sub(g.lastBeat) < g.o.Heartbeat {
		return
	}
	u := g.slotUpdate()
	s, err := g.a.UpdateSlot(ctx, g.o.Slot, u)
	if err != nil {
		if ctx.Err() == nil {
			g.o.Log.Warn("cannot write the slot", "slot", g.o.Slot, "error", err)
		}
		return
	}
	g.lastBeat = t
	// Without --standby, `walship slot advance NAME %r` (archive_cleanup_command)
	// tells how far the standby is: nothing before its restartpoint is needed.
	if g.o.Position == nil {
		if n, err := segment.ParseName(s.Position, g.segSize); err == nil && n.TLI == g.tli && (!g.known || n.SegNo > g.replay) {
			g.replay, g.known = n.SegNo, true
		}
	}
}

// slotUpdate is what the agent writes into its slot.
func (g *Agent) slotUpdate() archive.SlotUpdate {
	problem := g.problem
	u := archive.SlotUpdate{Problem: &problem}
	if g.known {
		u.Replayed = segment.Name{TLI: g.tli, SegNo: g.replay}.String(g.segSize)
	}
	if g.o.Position != nil && g.redo.TLI != 0 {
		u.Position = g.redo.String(g.segSize)
	}
	return u
}

func (g *Agent) updateStats() {
	s := &g.stats
	s.Timeline.Store(g.tli)
	if g.headOK {
		s.HeadSegment.Store(g.head)
	}
	if !g.known || !g.headOK {
		return
	}
	s.ReplaySegment.Store(g.replay)
	lag := int64(g.head) - int64(g.replay)
	if lag < 0 {
		lag = 0
	}
	s.LagSegments.Store(lag)
	s.LagBytes.Store(lag * int64(g.segSize))
	var secs time.Duration
	if lag > 0 {
		since := g.pushed
		if t, ok := g.arrived[g.replay+1]; ok && !t.IsZero() {
			since = t
		}
		secs = time.Since(since)
	}
	s.LagSeconds.Store(secs.Milliseconds())
	for n := range g.arrived {
		if g.known && n < g.replay {
			delete(g.arrived, n)
		}
	}
}
