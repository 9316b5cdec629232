package fetch

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/walship/walship/spool"

	"github.com/walship/walship/archive"
	"github.com/walship/walship/backends"
	"github.com/walship/walship/segment"
)

// The prefetcher is walship fetch's own, short-lived agent. During a
// recovery without walship agent, the first fetch that downloads a segment
// from the archive starts it, detached; it downloads the segments after the
// one PostgreSQL took last into its spool, a bounded number and bytes
// ahead, each verified by Fetch (SHA-256 of the sealed object, page header,
// the archive's cluster) before it is renamed under the segment's name, and
// later fetches take them by rename through spool.Take, as from the
// agent's spool, or, far more often, by the restore_command walship
// restore writes, whose shell moves a placed segment with mv before it
// would start walship at all (PrefetchMark). So the prefetcher learns what
// PostgreSQL took from two places: the note every fetch writes, and the
// spool itself: a segment it placed that is gone, and that it did not
// remove, was taken. It exits when nothing was taken and no fetch came for
// a while, when the data directory leaves recovery (recovery.signal and
// standby.signal gone: PostgreSQL removes them at promotion) and when the
// server stops.
//
// What the prefetcher did not download tells fetch nothing: a segment not
// in its spool is fetched from the archive, and only the archive's own
// not-found makes fetch answer "absent". A segment the prefetcher found
// missing (not pushed yet, or beyond the end) is never reported as absent.

// The prefetcher's files in its spool, beside the agent's state and lock
// (agent_state.go), which it shares: one prefetcher per spool holds the
// lock; the state names the archive's segment size and cluster, which
// spool.Take checks every file against.
const (
	// PrefetchDirName is the default spool, in the directory PostgreSQL
	// restores into (pg_wal): on the same file system as the restored
	// file, so a take is a rename, and in a directory whose contents base
	// backups skip and PostgreSQL never reads.
	PrefetchDirName = ".walship-prefetch"
	// inflightSuffix marks a segment the prefetcher is downloading:
	// ".<name>.prefetching". A fetch for it waits for the download.
	inflightSuffix = ".prefetching"
	// markPrefix starts the name of the mark a running prefetcher keeps
	// in its spool (PrefetchMark).
	markPrefix = ".walship-prefetch-for-"
)

// PrefetchMark is the name of the file a prefetcher downloading from the
// archive named archive keeps in its spool while it runs: written after
// it checked the spool (spool.Check) and cleared what an earlier run left,
// removed first when it stops. The restore_command walship restore writes
// moves a segment out of the spool with mv only while the mark of its own
// archive is there, which is how the shell keeps the rule fetch's Take
// keeps by reading the state: take only what a prefetcher of this archive
// placed. The name holds 64 bits of the archive name's SHA-256.
func PrefetchMark(archive string) string {
	sum := sha256.Sum256([]byte(archive))
	return markPrefix + hex.EncodeToString(sum[:8])
}

// PrefetchWait is the longest a fetch waits for a segment the prefetcher
// is downloading before it downloads the segment itself.
const PrefetchWait = 10 * time.Second

// Prefetcher defaults.
const (
	defaultPrefetchAhead    = 16
	defaultPrefetchBytes    = 256 << 20
	defaultPrefetchParallel = 2
	defaultPrefetchIdle     = time.Minute
	prefetchRetryFloor      = 500 * time.Millisecond
	prefetchRetryCeiling    = 30 * time.Second
	// prefetchWatch is how often the prefetcher looks at the data
	// directory and the server.
	prefetchWatch = 250 * time.Millisecond
)

// PrefetchOptions configure a prefetcher.
type PrefetchOptions struct {
	Spool string // the prefetcher's own directory (never an agent's spool)
	// PGData is the data directory in recovery: the prefetcher exits when
	// it has neither recovery.signal nor standby.signal, or when the
	// server of its postmaster.pid stops. Empty: only the idle time ends
	// it.
	PGData string
	// Archive names the archive in the spool's state and fetch's notes;
	// the prefetcher exits when a fetch names another one.
	Archive  string
	Ahead    int           // segments kept ready beyond the last one taken; default 16
	MaxBytes int64         // bound on their bytes, in the spool and in flight; default 256 MiB
	Parallel int           // downloads at once; default 2
	Idle     time.Duration // exit when nothing was taken and no fetch came for this long; default 1m
	Log      *slog.Logger
}

// PrefetchStats are the prefetcher's counts; every field is atomic.
type PrefetchStats struct {
	Downloads atomic.Uint64 // segments placed in the spool
	// Taken counts placed segments that left the spool without the
	// prefetcher removing them: moved by the restore_command's mv, or
	// taken by a fetch.
	Taken    atomic.Uint64
	Missing  atomic.Uint64 // downloads the archive answered not-found
	Failures atomic.Uint64 // other failed downloads (damaged, unreachable)
}

// Prefetcher keeps the next segments of a recovery in a spool.
type Prefetcher struct {
	a     *archive.Archive
	o     PrefetchOptions
	stats PrefetchStats

	segSize uint64
	sysID   uint64
	limit   uint64 // segments ahead, within Ahead and MaxBytes

	tli      uint32
	last     uint64 // the segment PostgreSQL took last, on tli
	known    bool   // a segment was taken: tli and last are set
	placed   map[segment.Name]bool
	inflight map[segment.Name]bool
	hold     prefetchHold
	backoff  time.Duration

	note     []byte    // the last note read
	active   time.Time // when a fetch or a take was last seen
	takeSeen time.Time // when the prefetcher last found a placed segment taken
	watched  time.Time
	pmPID    int // the server's postmaster, from postmaster.pid
	stop     string
}

// prefetchHold stops downloads at seg after a failure there, until a
// time, or until PostgreSQL takes another segment.
type prefetchHold struct {
	on    bool
	seg   uint64
	until time.Time
	last  uint64
}

type prefetched struct {
	name segment.Name
	err  error
}

// NewPrefetcher prepares a prefetcher; Run does the work.
func NewPrefetcher(a *archive.Archive, o PrefetchOptions) *Prefetcher {
	if o.Ahead <= 0 {
		o.Ahead = defaultPrefetchAhead
	}
	if o.MaxBytes <= 0 {
		o.MaxBytes = defaultPrefetchBytes
	}
	if o.Parallel <= 0 {
		o.Parallel = defaultPrefetchParallel
	}
	if o.Idle <= 0 {
		o.Idle = defaultPrefetchIdle
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	return &Prefetcher{a: a, o: o, placed: map[segment.Name]bool{}, inflight: map[segment.Name]bool{}}
}

// Stats are the prefetcher's live counts.
func (p *Prefetcher) Stats() *PrefetchStats { return &p.stats }

// Run prefetches until the recovery ends, the server stops, nothing was
// taken and no fetch came for the idle time, or ctx ends; then it removes
// what it placed and returns why it stopped. It returns an error only if it cannot start: no
// archive, a spool that is not its user's own (spool.ErrOwner) or not
// usable, another prefetcher or agent on the spool.
func (p *Prefetcher) Run(ctx context.Context) (string, error) {
	if err := spool.Check(p.o.Spool); err != nil {
		return "", err
	}
	// The lock first, before any request: fetch starts a prefetcher
	// whenever it finds the lock free, so one that read the archive
	// before locking would let the next fetch start a second.
	lock, err := spool.Lock(ctx, p.o.Spool)
	if err != nil {
		return "", err
	}
	defer lock.Close()
	id, err := p.a.Identity(ctx)
	if err != nil {
		return "", err
	}
	p.segSize, p.sysID = id.SegmentSize, id.SystemIdentifier
	p.limit = uint64(max(1, min(int64(p.o.Ahead), p.o.MaxBytes/int64(p.segSize))))
	// What an earlier run left (killed, it removed nothing) goes first,
	// its mark with it: whatever archive that run read, no mv takes a
	// file from this spool until this run has published its own mark.
	p.clear()
	mark := filepath.Join(p.o.Spool, PrefetchMark(p.o.Archive))
	defer func() {
		// The mark first (no mv takes a file any more), then the
		// segments (a fetch finds no file rather than a file it cannot
		// check), then the state.
		_ = os.Remove(mark)
		p.clear()
		_ = os.Remove(filepath.Join(p.o.Spool, spool.StateFile))
	}()
	if err := spool.WriteState(p.o.Spool, spool.State{SegmentSize: p.segSize, SystemID: p.sysID, Archive: p.o.Archive}); err != nil {
		return "", err
	}
	if err := os.WriteFile(mark, nil, 0o600); err != nil {
		return "", fmt.Errorf("%w: prefetch mark: %w", archive.ErrLocal, err)
	}
	now := time.Now()
	p.active = now
	p.pmPID = postmasterPID(p.o.PGData)
	p.readNote(now)
	p.o.Log.Info("prefetcher started", "spool", p.o.Spool, "ahead", p.limit, "bytes", p.limit*p.segSize,
		"parallel", p.o.Parallel, "idle", p.o.Idle, "after", p.afterName())

	dctx, cancel := context.WithCancel(ctx)
	results := make(chan prefetched, p.o.Parallel)
	var wg sync.WaitGroup
	why := p.loop(ctx, dctx, &wg, results)
	cancel()
	wg.Wait()
	close(results)
	for r := range results {
		p.finished(r)
	}
	p.sawTakes(time.Now()) // the last look: what was taken is counted, not cleared
	return why, nil
}

// loop is the prefetcher's work until it should stop; it says why.
func (p *Prefetcher) loop(ctx, dctx context.Context, wg *sync.WaitGroup, results chan prefetched) string {
	for {
		now := time.Now()
		p.readNote(now)
		p.sawTakes(now)
		if why := p.shouldStop(now); why != "" {
			return why
		}
		p.dispatch(dctx, wg, results, now)
		select {
		case <-ctx.Done():
			return "stopped"
		case r := <-results:
			p.finished(r)
		case <-time.After(spool.ScanEvery):
		}
	}
}

// afterName is the segment the prefetcher starts after, for its log.
func (p *Prefetcher) afterName() string {
	if !p.known {
		return "(no segment taken yet)"
	}
	return segment.Name{TLI: p.tli, SegNo: p.last}.String(p.segSize)
}

// prefetchNote is what a fetch tells the prefetcher.
type prefetchNote struct {
	Archive   string `json:"archive"`
	Name      string `json:"name"`      // the file PostgreSQL asked for
	Delivered bool   `json:"delivered"` // and got
	At        int64  `json:"at"`        // when (unix nanoseconds): every note differs
}

// readNote follows fetch's last note: a new note is activity; a segment
// delivered moves the window after it. A note written before the last
// take the prefetcher saw does not move the window back: PostgreSQL asked
// for that segment before it took a later one by mv (the prefetcher read
// the two in the other order). Should it really have gone back, its next
// fetches, written after, move the window.
func (p *Prefetcher) readNote(now time.Time) {
	b, err := os.ReadFile(filepath.Join(p.o.Spool, spool.NoteFile))
	if err != nil || bytes.Equal(b, p.note) {
		return
	}
	p.note, p.active = b, now
	var n prefetchNote
	if json.Unmarshal(b, &n) != nil {
		return
	}
	if n.Archive != p.o.Archive {
		p.stop = "restore_command now reads another archive"
		return
	}
	name, err := segment.ParseName(n.Name, p.segSize)
	if err != nil || !n.Delivered || (p.known && name.TLI == p.tli && name.SegNo == p.last) {
		return
	}
	if p.known && name.TLI == p.tli && name.SegNo < p.last && !p.takeSeen.IsZero() && n.At <= p.takeSeen.UnixNano() {
		return
	}
	p.tli, p.last, p.known = name.TLI, name.SegNo, true
	p.tidy()
}

// sawTakes looks for the segments it placed that left the spool: taken
// by the restore_command's mv, which starts no walship and writes no
// note, or by a fetch. A take is activity and moves the window to the
// highest segment taken. Only placed segments are looked at, and the
// prefetcher's own removals (tidy, clear) drop a segment from placed as
// they remove it: none of them is ever counted as a take.
func (p *Prefetcher) sawTakes(now time.Time) {
	moved := false
	for n := range p.placed {
		_, err := os.Lstat(filepath.Join(p.o.Spool, n.String(p.segSize)))
		if !errors.Is(err, fs.ErrNotExist) {
			continue
		}
		p.taken(n, now)
		if n.TLI == p.tli && n.SegNo > p.last {
			p.last, moved = n.SegNo, true
		}
	}
	if moved {
		p.tidy()
	}
}

// taken counts placed segment n, found gone at now, as taken.
func (p *Prefetcher) taken(n segment.Name, now time.Time) {
	delete(p.placed, n)
	p.stats.Taken.Add(1)
	p.active, p.takeSeen = now, now
}

// tidy removes what PostgreSQL will not take from the spool any more:
// segments up to the one it took last, on other timelines, or beyond the
// window (it went back). One that is gone already was taken (a fetch took
// it, and its note moved the window past it).
func (p *Prefetcher) tidy() {
	for n := range p.placed {
		if n.TLI == p.tli && n.SegNo > p.last && n.SegNo <= p.last+p.limit {
			continue
		}
		err := os.Remove(filepath.Join(p.o.Spool, n.String(p.segSize)))
		if errors.Is(err, fs.ErrNotExist) {
			p.taken(n, time.Now())
			continue
		}
		delete(p.placed, n)
	}
}

// dispatch starts downloads of the window after the segment taken last,
// in order, at most Parallel at once.
func (p *Prefetcher) dispatch(ctx context.Context, wg *sync.WaitGroup, results chan<- prefetched, now time.Time) {
	if !p.known {
		return
	}
	for n := p.last + 1; n <= p.last+p.limit && len(p.inflight) < p.o.Parallel; n++ {
		name := segment.Name{TLI: p.tli, SegNo: n}
		if p.placed[name] || p.inflight[name] {
			continue
		}
		if h := p.hold; h.on && n >= h.seg && now.Before(h.until) && h.last == p.last {
			return
		}
		file := name.String(p.segSize)
		marker := filepath.Join(p.o.Spool, "."+file+inflightSuffix)
		if err := os.WriteFile(marker, nil, 0o600); err != nil {
			p.o.Log.Warn("cannot write into the spool", "error", err)
			return
		}
		p.inflight[name] = true
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := Fetch(ctx, p.a, file, filepath.Join(p.o.Spool, file), Options{Attempts: 2, Sync: true})
			_ = os.Remove(marker)                       // after the rename: a waiting fetch finds the file
			results <- prefetched{name: name, err: err} // buffered for every download in flight
		}()
	}
}

// finished takes a download's outcome.
func (p *Prefetcher) finished(r prefetched) {
	delete(p.inflight, r.name)
	file := r.name.String(p.segSize)
	if r.err == nil {
		p.stats.Downloads.Add(1)
		p.placed[r.name] = true
		p.backoff = 0
		if p.hold.on && r.name.TLI == p.tli && r.name.SegNo == p.hold.seg {
			p.hold.on = false
		}
		p.o.Log.Debug("prefetched", "segment", file)
		p.tidy() // taken meanwhile past it, or another timeline now
		return
	}
	if errors.Is(r.err, context.Canceled) || r.name.TLI != p.tli {
		return
	}
	p.backoff = min(max(2*p.backoff, prefetchRetryFloor), prefetchRetryCeiling)
	if !p.hold.on || r.name.SegNo <= p.hold.seg || p.hold.last != p.last {
		p.hold = prefetchHold{on: true, seg: r.name.SegNo, until: time.Now().Add(p.backoff), last: p.last}
	}
	if errors.Is(r.err, backends.ErrNotFound) {
		// Not pushed yet, or past the end. Nothing is concluded from it:
		// fetch asks the archive itself.
		p.stats.Missing.Add(1)
		p.o.Log.Debug("segment not in the archive (yet); fetch will ask the archive itself", "segment", file)
		return
	}
	p.stats.Failures.Add(1)
	p.o.Log.Warn("prefetch failed; fetch will ask the archive itself", "segment", file, "error", r.err)
}

// shouldStop says why the prefetcher should stop now, or "".
func (p *Prefetcher) shouldStop(now time.Time) string {
	if p.stop != "" {
		return p.stop
	}
	if now.Sub(p.active) >= p.o.Idle {
		return fmt.Sprintf("idle: nothing taken and no fetch for %s", p.o.Idle)
	}
	if now.Sub(p.watched) < prefetchWatch {
		return ""
	}
	p.watched = now
	if _, err := os.Stat(p.o.Spool); errors.Is(err, fs.ErrNotExist) {
		return "the spool was removed"
	}
	if p.o.PGData == "" {
		return ""
	}
	if !inRecovery(p.o.PGData) {
		return "recovery ended: no recovery.signal or standby.signal in " + p.o.PGData
	}
	if p.pmPID != 0 {
		if pid := postmasterPID(p.o.PGData); pid != p.pmPID {
			return "the server stopped (postmaster.pid gone or changed)"
		}
		if err := syscall.Kill(p.pmPID, 0); errors.Is(err, syscall.ESRCH) {
			return "the server is gone (postmaster " + strconv.Itoa(p.pmPID) + ")"
		}
	}
	return ""
}

// clear removes the segments in the spool and what downloads left.
func (p *Prefetcher) clear() {
	files, err := spool.Scan(p.o.Spool, p.segSize, true)
	if err != nil {
		return
	}
	for _, f := range files {
		_ = os.Remove(filepath.Join(p.o.Spool, f.Name.String(p.segSize)))
	}
	p.placed = map[segment.Name]bool{}
}

// inRecovery: the data directory has recovery.signal or standby.signal.
func inRecovery(pgdata string) bool {
	for _, f := range []string{"recovery.signal", "standby.signal"} {
		if _, err := os.Stat(filepath.Join(pgdata, f)); err == nil {
			return true
		}
	}
	return false
}

// postmasterPID reads the first line of pgdata/postmaster.pid; 0 if none.
func postmasterPID(pgdata string) int {
	if pgdata == "" {
		return 0
	}
	b, err := os.ReadFile(filepath.Join(pgdata, "postmaster.pid"))
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	pid, err := strconv.Atoi(strings.TrimSpace(line))
	if err != nil || pid <= 0 {
		return 0
	}
	return pid
}
