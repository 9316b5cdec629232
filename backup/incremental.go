package backup

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/walship/walship/archive"
	"github.com/walship/walship/backends"
	"github.com/walship/walship/catalog"
	"github.com/walship/walship/manifest"
	"github.com/walship/walship/postgres"
	"github.com/walship/walship/sealed"
	"github.com/walship/walship/segment"
)

// ErrIncremental is wrapped when an incremental backup cannot be taken as
// asked: the server is older than PostgreSQL 17, summarize_wal is off, there
// is no backup to take it against (or --from names none, or one that cannot
// serve), or the server's WAL summaries do not reach back to the parent.
// Nothing is left in the archive; retrying does not help until the cause is
// fixed (or a full backup is taken).
var ErrIncremental = errors.New("cannot take an incremental backup")

// prepareIncremental runs before anything is written to the archive: it
// checks the server, picks the parent (o.From, or the newest that can
// serve), reads the parent's server manifest from the archive and sends it
// to the server with UPLOAD_MANIFEST, for the BASE_BACKUP INCREMENTAL that
// follows on the same connection.
func prepareIncremental(ctx context.Context, a *archive.Archive, src Source, sys postgres.System, o Options) (*manifest.Manifest, error) {
	if sys.VersionNum < postgres.MinIncrementalVersion {
		return nil, fmt.Errorf("%w: the server is PostgreSQL %s and incremental backups need 17 or later; take a full backup (without --incremental)",
			ErrIncremental, sys.Major())
	}
	on, err := src.Show(ctx, "summarize_wal")
	if err != nil {
		return nil, err
	}
	if on != "on" {
		return nil, fmt.Errorf("%w: summarize_wal is %s on the server; set summarize_wal = on (ALTER SYSTEM SET summarize_wal = on; SELECT pg_reload_conf()), then take a full backup to start a chain",
			ErrIncremental, on)
	}
	c, err := catalog.Load(ctx, a, catalog.Backups|catalog.Histories)
	if errors.Is(err, archive.ErrNoIdentity) {
		return nil, fmt.Errorf("%w: the archive holds no backup yet; take a full backup first", ErrIncremental)
	}
	if err != nil {
		return nil, err
	}
	// The identity exists, so this only compares.
	if _, err := a.ClaimIdentity(ctx, archive.Identity{
		SystemIdentifier: sys.SystemIdentifier, PGVersion: sys.Major(), SegmentSize: sys.SegmentSize,
	}); err != nil {
		return nil, err
	}
	parent, err := ChooseParent(c, sys, o.From)
	if err != nil {
		return nil, err
	}
	b, err := readServerManifest(ctx, a.Storage(), parent)
	if err != nil {
		return nil, err
	}
	// The server parses the manifest as it arrives; a large one (200 bytes
	// a file) takes a while over a slow link.
	uctx, cancel := context.WithTimeout(ctx, 2*time.Minute+time.Duration(len(b)>>20)*time.Second)
	defer cancel()
	if err := src.UploadManifest(uctx, b); err != nil {
		return nil, fmt.Errorf("send backup %s's manifest: %w", parent.ID, err)
	}
	o.Log.Info("incremental backup: parent's manifest sent", "parent", parent.ID, "parent_type", parent.Kind(),
		"parent_start_lsn", parent.StartLSN, "parent_timeline", parent.Timeline, "manifest_bytes", len(b))
	return parent, nil
}

// ChooseParent picks the backup an incremental backup of the server sys
// is taken against: the one named from, or else the newest complete backup
// (full or incremental) that can serve. A backup can serve if it is of the
// same cluster (system identifier) and major version, its chain reaches a
// full backup, and its WAL lies on the server's timeline history as the
// archive's history files record it (catalog.Path from the parent's
// timeline to the server's, which must hold the parent's WAL ranges), and
// it stopped at or before the server's current position. c needs Backups
// and Histories.
func ChooseParent(c *catalog.Catalog, sys postgres.System, from string) (*manifest.Manifest, error) {
	if from != "" {
		if err := manifest.ValidID(from); err != nil {
			return nil, err
		}
		for _, m := range c.Backups {
			if m.ID == from {
				if why := cannotServe(c, sys, m); why != "" {
					return nil, fmt.Errorf("%w: --from %s: %s", ErrIncremental, from, why)
				}
				return m, nil
			}
		}
		return nil, fmt.Errorf("%w: --from %s: no complete backup with that id in the archive", ErrIncremental, from)
	}
	newest := ""
	for i := len(c.Backups) - 1; i >= 0; i-- {
		m := c.Backups[i]
		why := cannotServe(c, sys, m)
		if why == "" {
			return m, nil
		}
		if newest == "" {
			newest = fmt.Sprintf(" (the newest, %s: %s)", m.ID, why)
		}
	}
	return nil, fmt.Errorf("%w: no complete backup in the archive can be its parent%s; take a full backup first", ErrIncremental, newest)
}

// cannotServe says why m cannot be the parent of an incremental backup of
// sys, or "" if it can.
func cannotServe(c *catalog.Catalog, sys postgres.System, m *manifest.Manifest) string {
	switch {
	case m.SystemIdentifier != sys.SystemIdentifier:
		return fmt.Sprintf("it is of another cluster (system identifier %d, the server's is %d)", m.SystemIdentifier, sys.SystemIdentifier)
	case m.PGVersion != sys.Major():
		return fmt.Sprintf("it was taken on PostgreSQL %s, the server is %s", m.PGVersion, sys.Major())
	case m.StopLSN > sys.XLogPos:
		return fmt.Sprintf("it stops at %s, after the server's current position %s", m.StopLSN, sys.XLogPos)
	}
	if _, err := c.Chain(m); err != nil {
		return err.Error()
	}
	p, err := c.Path(m.Timeline, sys.Timeline)
	if err != nil {
		return err.Error()
	}
	if !p.Holds(m) {
		return fmt.Sprintf("its WAL (timeline %d to %d, stop %s) is not on the history of the server's timeline %d",
			m.Timeline, m.StopTimeline, m.StopLSN, sys.Timeline)
	}
	return ""
}

// readServerManifest reads the parent's sealed backup_manifest and checks
// it is the one its manifest.json names and that it is whole.
func readServerManifest(ctx context.Context, store backends.Storage, parent *manifest.Manifest) ([]byte, error) {
	key := manifest.ServerKey(parent.ID)
	b, err := archive.ReadSealed(ctx, store, key)
	if errors.Is(err, backends.ErrNotFound) {
		return nil, fmt.Errorf("%w: backup %s has no %s: the backup is damaged", archive.ErrDamaged, parent.ID, key)
	}
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256(b)
	if want := parent.ServerManifest.SHA256; want != "" && !strings.EqualFold(hex.EncodeToString(sum[:]), want) {
		return nil, fmt.Errorf("%s is not the backup_manifest backup %s recorded: %w", key, parent.ID, sealed.ErrChecksum)
	}
	if _, err := manifest.ParseServer(b); err != nil {
		return nil, fmt.Errorf("backup %s: %w", parent.ID, err)
	}
	return b, nil
}

// refusal turns the server's refusal of BASE_BACKUP INCREMENTAL (SQLSTATE
// 55000: the WAL summaries do not cover the parent's start to now, or the
// parent is not on the server's history) into one line naming the parent
// and the settings that decide it. Other errors pass unchanged.
func refusal(err error, parent *manifest.Manifest) error {
	if !errors.Is(err, postgres.ErrPrerequisite) {
		return err
	}
	msg := err.Error()
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		msg = pe.Message
		if pe.Detail != "" {
			msg += " (" + pe.Detail + ")"
		}
	}
	return fmt.Errorf("%w against backup %s (start %s, timeline %d): the server says %q; its WAL summaries must reach back "+
		"to that start: summarize_wal on since before it, and wal_summary_keep_time (default 10d) long enough to keep them; take a full backup instead",
		ErrIncremental, parent.ID, parent.StartLSN, parent.Timeline, msg)
}

// checkIncrementalLabel checks that the server took the backup
// incrementally from the parent: backup_label's INCREMENTAL FROM LSN and
// TLI are the parent's start.
func checkIncrementalLabel(label []byte, parent *manifest.Manifest) error {
	var lsn, tli string
	sc := bufio.NewScanner(bytes.NewReader(label))
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "INCREMENTAL FROM LSN: "); ok {
			lsn = v
		}
		if v, ok := strings.CutPrefix(sc.Text(), "INCREMENTAL FROM TLI: "); ok {
			tli = v
		}
	}
	got, err := segment.ParseLSN(lsn)
	if err != nil {
		return fmt.Errorf("%w: backup_label of an incremental backup has no INCREMENTAL FROM LSN", ErrIncomplete)
	}
	// The server starts from the parent's earliest WAL range.
	want := parent.WALRanges[0]
	t, err := strconv.ParseUint(tli, 10, 32)
	if err != nil || got != want.Start || uint32(t) != want.Timeline {
		return fmt.Errorf("%w: the server took the backup incrementally from %s on timeline %s, not from parent %s's start %s on timeline %d",
			ErrIncomplete, lsn, tli, parent.ID, want.Start, want.Timeline)
	}
	return nil
}

// parentPresent checks, just before the manifest is written, that the
// parent is still a complete backup: one deleted while the incremental ran
// would leave it unrestorable.
func parentPresent(ctx context.Context, store backends.Storage, id string) error {
	_, err := manifest.Get(ctx, store, id)
	if errors.Is(err, manifest.ErrNoBackup) {
		return fmt.Errorf("%w: the parent backup %s was deleted while the incremental backup ran", ErrLost, id)
	}
	return err
}
