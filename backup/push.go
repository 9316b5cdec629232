package backup

import (
	"bufio"
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"strings"
	"time"

	"github.com/walship/walship/archive"
	"github.com/walship/walship/backends"
	"github.com/walship/walship/manifest"
	"github.com/walship/walship/postgres"
	"github.com/walship/walship/sealed"
	"github.com/walship/walship/segment"
)

// Source is the server a backup is taken from: a postgres.Conn.
type Source interface {
	Identify(ctx context.Context) (postgres.System, error)
	Show(ctx context.Context, setting string) (string, error)
	UploadManifest(ctx context.Context, manifest []byte) error
	BaseBackup(ctx context.Context, o postgres.BackupOptions, h postgres.BackupHandler) (segment.LSN, uint32, error)
}

// Progress hears about long work: a progress bar on a terminal, one log
// line per phase elsewhere. Phase starts a phase with its expected byte
// total (0 if unknown); Add counts bytes done; End closes the phase, with
// the error that ended it, if any (the caller reports that error).
type Progress interface {
	Phase(name string, total int64)
	Add(n int64)
	End(err error)
}

type noProgress struct{}

func (noProgress) Phase(string, int64) {}
func (noProgress) Add(int64)           {}
func (noProgress) End(error)           {}

// Options for Push.
type Options struct {
	Compression    sealed.Compression
	ChunkSize      int           // bytes of tar per chunk before compression; default 16 MiB
	Parallel       int           // chunks compressed and uploaded at once; default GOMAXPROCS
	WALTimeout     time.Duration // how long to wait for the backup's WAL in the archive; default 5m
	FastCheckpoint bool
	Label          string
	MaxRateKB      int
	Progress       Progress
	Log            *slog.Logger
	Now            func() time.Time
	// PollInterval is the first wait between checks for the WAL; it
	// doubles up to 5 s. Default 200 ms.
	PollInterval time.Duration
	// LeaseTTL and LeaseRenew set the backup's lease: how long it protects
	// the backup without a renewal, how often it is renewed. Defaults
	// archive.DefaultLeaseTTL (10m) and archive.DefaultLeaseRenew (1m).
	LeaseTTL, LeaseRenew time.Duration
	// Incremental takes an incremental backup (PostgreSQL 17 and later,
	// summarize_wal on) against From, or when From is empty against the
	// newest complete backup that can serve (ChooseParent).
	Incremental bool
	From        string
}

func (o *Options) defaults() {
	if o.ChunkSize <= 0 {
		o.ChunkSize = 16 << 20
	}
	if o.Parallel <= 0 {
		o.Parallel = runtime.GOMAXPROCS(0)
	}
	if o.WALTimeout <= 0 {
		o.WALTimeout = 5 * time.Minute
	}
	if o.Progress == nil {
		o.Progress = noProgress{}
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.PollInterval <= 0 {
		o.PollInterval = 200 * time.Millisecond
	}
}

// Push takes a base backup of src into a. The backup is complete, and
// listed, only once its manifest is written, which happens only after the
// server's own manifest verified against the data received, the WAL from
// the start to the stop position is in the archive, and every object the
// backup wrote is confirmed present at its stored size. While it runs the
// backup holds a lease (backups/<id>/lease.json, renewed every
// LeaseRenew) that tells retention it is alive; a lost lease fails the
// backup, since retention may have removed its data. On failure everything
// under the backup's prefix is removed.
//
// An incremental backup is refused (ErrIncremental) before anything is
// written when the server cannot take it; its lease names the parent, and
// the parent must still be complete when the manifest is written.
func Push(ctx context.Context, a *archive.Archive, src Source, o Options) (*manifest.Manifest, error) {
	o.defaults()
	if err := o.Compression.Validate(); err != nil {
		return nil, err
	}
	sys, err := src.Identify(ctx)
	if err != nil {
		return nil, err
	}
	if sys.ArchiveMode == "off" && !sys.InRecovery {
		return nil, fmt.Errorf("%w: archive_mode is off on the server, so the WAL a backup needs would never reach the archive; set archive_mode = on and archive_command = 'walship push ... %%p'", postgres.ErrServer)
	}
	var parent *manifest.Manifest
	if o.Incremental {
		if parent, err = prepareIncremental(ctx, a, src, sys, o); err != nil {
			return nil, err
		}
	}
	if _, err := a.ClaimIdentity(ctx, archive.Identity{
		SystemIdentifier: sys.SystemIdentifier, PGVersion: sys.Major(), SegmentSize: sys.SegmentSize,
	}); err != nil {
		return nil, err
	}
	id, began, lease, err := claimID(ctx, a, o, parent)
	if err != nil {
		return nil, err
	}
	if o.Label == "" {
		o.Label = "walship " + id
	}
	o.Log.Info("backup started", "id", id, "type", kind(parent), "archive", a.Storage().String(), "system_identifier", sys.SystemIdentifier,
		"timeline", sys.Timeline, "from_standby", sys.InRecovery, "lease_ttl", lease.TTL(), "lease_renew", lease.Renew())
	// Everything the backup does runs under pctx, which a lost lease
	// cancels with ErrLeaseLost as its cause.
	pctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	lease.Keep(pctx, cancel)
	m, s, err := take(pctx, a.Storage(), src, sys, id, began, lease, parent, o)
	if err == nil {
		err = finish(pctx, a.Storage(), m, lease)
	}
	if err != nil && ctx.Err() == nil && pctx.Err() != nil {
		err = context.Cause(pctx)
	}
	if err != nil {
		cleanup(ctx, a.Storage(), id, s.keys(m), lease, o.Log)
		return nil, err
	}
	rctx, rcancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer rcancel()
	if err := lease.Release(rctx); err != nil {
		o.Log.Warn("backup complete, but its lease could not be removed (harmless: it expires, and goes with the backup)",
			"id", id, "error", err)
	}
	o.Log.Info("backup complete", "id", id, "type", m.Kind(), "parent", m.Parent, "start_lsn", m.StartLSN, "stop_lsn", m.StopLSN, "bytes", m.Size,
		"stored_bytes", m.StoredSize, "files", m.Files, "seconds", o.Now().Sub(began).Seconds())
	return m, nil
}

// claimID picks the backup's id (its start time to the second) and takes
// the lease on it, which also claims the id: a backup started in the same
// second as another waits for the next one.
func claimID(ctx context.Context, a *archive.Archive, o Options, parent *manifest.Manifest) (string, time.Time, *archive.HeldLease, error) {
	lo := archive.LeaseOptions{Kind: "backup push", TTL: o.LeaseTTL, Renew: o.LeaseRenew, Now: o.Now}
	if parent != nil {
		lo.Parent = parent.ID
	}
	began := o.Now()
	for try := 0; ; try++ {
		id := began.UTC().Format(manifest.IDLayout)
		err := checkFreeID(ctx, a.Storage(), id)
		if err == nil {
			var lease *archive.HeldLease
			lease, err = a.AcquireLease(ctx, archive.BackupLeaseKey(id), lo)
			if err == nil {
				return id, began, lease, nil
			}
			if errors.Is(err, archive.ErrLeaseHeld) {
				err = fmt.Errorf("%w: %s", errIDTaken, id)
			}
		}
		if try == 2 || !errors.Is(err, errIDTaken) {
			return "", began, nil, err
		}
		t := time.NewTimer(time.Until(began.Truncate(time.Second).Add(time.Second)))
		select {
		case <-ctx.Done():
			t.Stop()
			return "", began, nil, ctx.Err()
		case <-t.C:
		}
		began = o.Now()
	}
}

// kind is the type of a backup taken against parent (nil: full).
func kind(parent *manifest.Manifest) string {
	if parent == nil {
		return manifest.TypeFull
	}
	return manifest.TypeIncremental
}

// take streams the backup, verifies it, stores the server's manifest and
// waits for its WAL. The streamer is returned even on failure: it knows
// what was written.
func take(ctx context.Context, store backends.Storage, src Source, sys postgres.System, id string, began time.Time,
	lease *archive.HeldLease, parent *manifest.Manifest, o Options) (*manifest.Manifest, *streamer, error) {
	s := newStreamer(ctx, store, id, o)
	stop, stopTLI, err := src.BaseBackup(s.ctx, postgres.BackupOptions{ //nolint:contextcheck // s.ctx is ctx plus the pipeline's cancel (newStreamer): a failing stage stops the stream
		Label: o.Label, FastCheckpoint: o.FastCheckpoint, MaxRateKB: o.MaxRateKB, Incremental: parent != nil,
	}, leasedStream{s, lease, sys.SegmentSize})
	if err != nil {
		if parent != nil {
			err = refusal(err, parent)
		}
		s.fail(err)
	}
	ferr := s.finish()
	if err == nil {
		err = ferr
	}
	o.Progress.End(err)
	elapsed := o.Now().Sub(began) // monotonic
	m := &manifest.Manifest{
		Format: manifest.Format, ID: id, Label: o.Label, PGVersion: sys.Major(), PGVersionNum: sys.VersionNum,
		SystemIdentifier: sys.SystemIdentifier, SegmentSize: sys.SegmentSize, Timeline: s.startTLI,
		StartLSN: s.start, StopLSN: stop, StopTimeline: stopTLI, FromStandby: sys.InRecovery,
		Compression: o.Compression.Codec.String(), Type: kind(parent),
	}
	if parent != nil {
		m.Parent = parent.ID
	}
	if err == nil {
		err = complete(ctx, m, s, began, elapsed, parent)
	}
	if err == nil {
		err = putServerManifest(ctx, store, m, s.manifest.Bytes(), o.Compression)
	}
	if err == nil {
		o.Log.Info("backup data stored; waiting for its WAL in the archive", "id", id, "start_wal", m.StartWAL,
			"stop_wal", m.StopWAL, "timeout", o.WALTimeout)
		err = waitWAL(ctx, store, m, o)
	}
	return m, s, err
}

// leasedStream records the backup's start segment in its lease as soon as
// the server names it, so that retention keeps the WAL the running backup
// needs.
type leasedStream struct {
	*streamer
	lease   *archive.HeldLease
	segSize uint64
}

func (l leasedStream) Started(start segment.LSN, tli uint32, spaces []postgres.Tablespace) error {
	if err := l.streamer.Started(start, tli, spaces); err != nil {
		return err
	}
	l.lease.SetWAL(segment.Name{TLI: tli, SegNo: start.SegNo(l.segSize)}.String(l.segSize))
	// A transient failure leaves it to the next periodic renewal.
	if err := l.lease.RenewOnce(l.streamer.ctx); errors.Is(err, archive.ErrLeaseLost) {
		return err
	}
	return nil
}

// finish makes the backup exist: with the lease just renewed, one listing
// of the backup's prefix must show the lease and every object the manifest
// names at its stored size; the manifest is then written before the lease
// could lapse.
func finish(ctx context.Context, store backends.Storage, m *manifest.Manifest, lease *archive.HeldLease) error {
	// A renewal that fails for a transient reason leaves the lease as
	// long as the last one did; Remaining says whether that is enough.
	if err := lease.RenewOnce(ctx); err != nil && (errors.Is(err, archive.ErrLeaseLost) || ctx.Err() != nil) {
		return fmt.Errorf("before writing the manifest: %w", err)
	}
	if err := confirmStored(ctx, store, m, lease.Key()); err != nil {
		return err
	}
	if m.Incremental() {
		if err := parentPresent(ctx, store, m.Parent); err != nil {
			return err
		}
	}
	left, err := lease.Remaining()
	if err != nil {
		return err
	}
	if left <= 0 {
		return fmt.Errorf("%w: it lapsed before the manifest could be written", archive.ErrLeaseLost)
	}
	mctx, cancel := context.WithTimeout(ctx, left)
	defer cancel()
	if err := putManifest(mctx, store, m); err != nil {
		if mctx.Err() != nil && ctx.Err() == nil {
			return fmt.Errorf("%w: the lease would have lapsed before the manifest was written: %w", archive.ErrLeaseLost, err)
		}
		return err
	}
	return nil
}

// confirmStored lists the backup's prefix once and checks that its lease
// and every chunk and the server manifest it wrote are there, each at the
// size it was stored with.
func confirmStored(ctx context.Context, store backends.Storage, m *manifest.Manifest, leaseKey string) error {
	sizes := map[string]int64{}
	err := store.List(ctx, manifest.Prefix+m.ID+"/", func(o backends.ObjectInfo) error {
		sizes[o.Key] = o.Size
		return nil
	})
	if err != nil {
		return fmt.Errorf("confirm the backup's objects: list %s%s/: %w", manifest.Prefix, m.ID, err)
	}
	if _, ok := sizes[leaseKey]; !ok {
		return fmt.Errorf("%w: %s was removed (by retention or backup delete?)", archive.ErrLeaseLost, leaseKey)
	}
	chunks := []manifest.Chunk{m.ServerManifest}
	for _, a := range m.Archives {
		chunks = append(chunks, a.Chunks...)
	}
	bad, first := 0, ""
	for _, c := range chunks {
		size, ok := sizes[c.Key]
		switch {
		case !ok:
			bad++
			if first == "" {
				first = c.Key + " is missing"
			}
		case size != c.StoredSize:
			bad++
			if first == "" {
				first = fmt.Sprintf("%s has %d bytes, %d were stored", c.Key, size, c.StoredSize)
			}
		}
	}
	if bad > 0 {
		return fmt.Errorf("%w: %d of the %d objects it wrote are not in the archive as stored (%s); was it removed by retention or backup delete while running?",
			ErrLost, bad, len(chunks), first)
	}
	return nil
}

var errIDTaken = errors.New("a backup with this id already exists or is running")

func checkFreeID(ctx context.Context, store backends.Storage, id string) error {
	taken := false
	err := store.List(ctx, manifest.Prefix+id+"/", func(backends.ObjectInfo) error { taken = true; return nil })
	if err != nil {
		return fmt.Errorf("list backups: %w", err)
	}
	if taken {
		return fmt.Errorf("%w: %s", errIDTaken, id)
	}
	return nil
}

// complete fills the manifest from what was received and verifies it.
// An incremental backup's label must say it was taken from parent.
func complete(ctx context.Context, m *manifest.Manifest, s *streamer, began time.Time, elapsed time.Duration, parent *manifest.Manifest) error {
	sm, err := manifest.ParseServer(s.manifest.Bytes())
	if err != nil {
		return err
	}
	files := map[string]fileSum{}
	var label, control []byte
	for _, a := range s.archives {
		for p, f := range a.sum.files {
			files[p] = f
		}
		if a.sum.pgControl != nil {
			control = a.sum.pgControl
		}
		if a.sum.label != nil {
			label = a.sum.label
		}
		for _, c := range a.entry.Chunks {
			a.entry.Size += c.Size
			a.entry.StoredSize += c.StoredSize
		}
		m.Size += a.entry.Size
		m.StoredSize += a.entry.StoredSize
		m.Archives = append(m.Archives, a.entry)
	}
	if err := checkServer(sm, files); err != nil {
		return err
	}
	m.Files = len(files)
	if m.WALRanges, err = sm.Ranges(); err != nil {
		return err
	}
	first, last := m.WALRanges[0], m.WALRanges[len(m.WALRanges)-1]
	if first.Start != m.StartLSN || last.End != m.StopLSN || last.Timeline != m.StopTimeline {
		return fmt.Errorf("%w: server's manifest WAL range %s..%s does not match the backup's %s..%s",
			ErrIncomplete, first.Start, last.End, m.StartLSN, m.StopLSN)
	}
	xid, ok := nextXIDFromControl(control, m.SystemIdentifier)
	if !ok {
		return fmt.Errorf("%w: global/pg_control missing or from another cluster", ErrIncomplete)
	}
	m.NextXID = xid
	if parent != nil {
		if err := checkIncrementalLabel(label, parent); err != nil {
			return err
		}
	}
	// Stop time is this machine's clock when the server reported the stop
	// position: the server offers no sub-second clock on a replication
	// connection. A server clock visibly ahead (the label's start after our
	// stop) moves it later, keeping it an upper bound.
	m.StartTime = labelStartTime(label, began)
	m.StopTime = began.Add(elapsed)
	if m.StartTime.After(m.StopTime) {
		m.StopTime = m.StartTime.Add(elapsed).Add(time.Second)
	}
	m.StartTime, m.StopTime = m.StartTime.UTC(), m.StopTime.UTC()
	ss := m.SegmentSize
	m.StartWAL = segment.Name{TLI: first.Timeline, SegNo: first.Start.SegNo(ss)}.String(ss)
	m.StopWAL = manifest.LastSegment(last, ss).String(ss)
	return ctx.Err()
}

// labelStartTime reads START TIME from backup_label when the server writes
// it in UTC; otherwise (another time zone abbreviation, which Go cannot
// map to an offset) the client's clock at the start stands in.
func labelStartTime(label []byte, fallback time.Time) time.Time {
	sc := bufio.NewScanner(bytes.NewReader(label))
	for sc.Scan() {
		v, ok := strings.CutPrefix(sc.Text(), "START TIME: ")
		if !ok {
			continue
		}
		if strings.HasSuffix(v, " UTC") || strings.HasSuffix(v, " GMT") {
			if t, err := time.Parse("2006-01-02 15:04:05 MST", v); err == nil {
				return t
			}
		}
	}
	return fallback
}

func putServerManifest(ctx context.Context, store backends.Storage, m *manifest.Manifest, b []byte, c sealed.Compression) error {
	sealed, err := sealed.Seal(b, c)
	if err != nil {
		return err
	}
	key := manifest.ServerKey(m.ID)
	if err := store.PutIfAbsent(ctx, key, sealed.Reader(), sealed.Size()); err != nil {
		return fmt.Errorf("upload %s: %w", key, err)
	}
	m.ServerManifest = manifest.Chunk{Key: key, Size: int64(len(b)), StoredSize: sealed.Size(), SHA256: hex.EncodeToString(sealed.Header.SHA256[:])}
	return nil
}

// waitWAL polls the archive until every segment the backup needs is there.
// Transient read errors are retried until the deadline.
func waitWAL(ctx context.Context, store backends.Storage, m *manifest.Manifest, o Options) error {
	need := m.NeededWAL()
	deadline := o.Now().Add(o.WALTimeout)
	wait := o.PollInterval
	var lastErr error
	for i := 0; ; {
		for i < len(need) {
			_, err := store.Stat(ctx, archive.SegmentKey(need[i], m.SegmentSize))
			if err != nil {
				if !errors.Is(err, backends.ErrNotFound) {
					lastErr = err
				}
				break
			}
			i++
		}
		if i == len(need) {
			return nil
		}
		if !o.Now().Before(deadline) {
			why := "check archive_command and pg_stat_archiver on the primary"
			if m.FromStandby {
				why = "the primary archives it only after it switches segments: run SELECT pg_switch_wal() there"
			}
			if lastErr != nil {
				why = "last error: " + lastErr.Error()
			}
			return fmt.Errorf("%w: WAL segment %s (the backup needs %s to %s) did not reach the archive within %s; %s",
				ErrIncomplete, need[i].String(m.SegmentSize), m.StartWAL, m.StopWAL, o.WALTimeout, why)
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
		wait = min(wait*2, 5*time.Second)
	}
}

// keys lists what the failed backup wrote.
func (s *streamer) keys(m *manifest.Manifest) []string {
	if s == nil {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	keys := append([]string(nil), s.written...)
	if m != nil && m.ServerManifest.Key != "" {
		keys = append(keys, m.ServerManifest.Key)
	}
	return keys
}

// cleanup removes a failed backup's objects, even if ctx was cancelled:
// its manifest first (in case a write that seemed to fail went through),
// then everything under its prefix (the id is the backup's own, claimed by
// its lease), then the lease. If anything is left, the lease expires and
// retention removes the rest as debris.
func cleanup(ctx context.Context, store backends.Storage, id string, written []string, lease *archive.HeldLease, log *slog.Logger) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Minute)
	defer cancel()
	keys := map[string]bool{}
	for _, k := range written {
		keys[k] = true
	}
	err := store.List(ctx, manifest.Prefix+id+"/", func(o backends.ObjectInfo) error {
		keys[o.Key] = true
		return nil
	})
	delete(keys, lease.Key())
	all := []string{manifest.Key(id)}
	for k := range keys {
		if k != manifest.Key(id) {
			all = append(all, k)
		}
	}
	if err == nil {
		err = store.Delete(ctx, all[:1]...)
	}
	if err == nil {
		err = store.Delete(ctx, all[1:]...)
	}
	if err == nil {
		err = lease.Release(ctx)
	}
	if err != nil {
		log.Error("could not remove the failed backup's objects; retention removes them once its lease expires, or run walship backup delete",
			"id", id, "error", err)
	}
}
