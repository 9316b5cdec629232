// Package postgres talks to a PostgreSQL server: the physical replication
// protocol (IDENTIFY_SYSTEM, SHOW, BASE_BACKUP) through jackc/pgx/v5's
// pgconn. It knows the wire protocol, not the archive.
package postgres

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/walship/walship/segment"
)

// MinVersion is the oldest server walship takes base backups from: 15
// introduced the single-COPY BASE_BACKUP protocol (and 14 is out of support).
const MinVersion = 150000

// ErrPassword is returned when a connection string carries a password:
// command lines are visible to every user in ps.
var ErrPassword = errors.New("connection string contains a password; use PGPASSWORD or a password file (~/.pgpass, PGPASSFILE) instead")

// ErrServer marks failures of the server or the connection to it.
var ErrServer = errors.New("PostgreSQL")

// ErrPrerequisite marks a server's refusal because something the command
// needs is not in place (SQLSTATE 55000, object_not_in_prerequisite_state):
// for an incremental BASE_BACKUP, WAL summaries that do not reach back to
// the parent, or a parent not on the server's timeline history.
var ErrPrerequisite = errors.New("not in prerequisite state")

const sqlstatePrerequisite = "55000"

// MinIncrementalVersion is the first server that takes incremental base
// backups (UPLOAD_MANIFEST, BASE_BACKUP INCREMENTAL).
const MinIncrementalVersion = 170000

// Conn is a physical replication connection.
type Conn struct {
	pc *pgconn.PgConn
}

// Connect opens a physical replication connection (replication=true). An
// empty connString means the standard PG* environment variables and
// defaults, as libpq.
func Connect(ctx context.Context, connString string) (*Conn, error) {
	if hasPassword(connString) {
		return nil, ErrPassword
	}
	cfg, err := pgconn.ParseConfig(connString)
	if err != nil {
		return nil, fmt.Errorf("connection string: %w", err)
	}
	cfg.RuntimeParams["replication"] = "true"
	cfg.RuntimeParams["application_name"] = "walship"
	pc, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("%w: connect: %w", ErrServer, err)
	}
	return &Conn{pc: pc}, nil
}

// hasPassword reports whether a keyword/value or URL connection string
// names a password.
func hasPassword(s string) bool {
	if strings.HasPrefix(s, "postgres://") || strings.HasPrefix(s, "postgresql://") {
		rest := strings.SplitN(strings.SplitN(s, "://", 2)[1], "/", 2)[0]
		if at := strings.LastIndex(rest, "@"); at >= 0 && strings.Contains(rest[:at], ":") {
			return true
		}
		return strings.Contains(strings.ToLower(s), "password=")
	}
	for _, f := range strings.Fields(s) {
		if k, _, ok := strings.Cut(f, "="); ok && strings.TrimSpace(strings.ToLower(k)) == "password" {
			return true
		}
	}
	return strings.Contains(strings.ToLower(strings.ReplaceAll(s, " ", "")), "password=")
}

// Close ends the connection.
func (c *Conn) Close(ctx context.Context) error { return c.pc.Close(ctx) }

// System is what IDENTIFY_SYSTEM and a few SHOWs tell about the server.
type System struct {
	SystemIdentifier uint64
	Timeline         uint32
	XLogPos          segment.LSN
	VersionNum       int // server_version_num, e.g. 150010
	SegmentSize      uint64
	BlockSize        int
	InRecovery       bool
	ArchiveMode      string // off, on or always
}

// Major is the major version as the archive records it ("15").
func (s System) Major() string { return strconv.Itoa(s.VersionNum / 10000) }

// Identify runs IDENTIFY_SYSTEM and reads the server settings a backup needs.
func (c *Conn) Identify(ctx context.Context) (System, error) {
	var s System
	rows, err := c.query(ctx, "IDENTIFY_SYSTEM")
	if err != nil {
		return s, err
	}
	if len(rows) != 1 || len(rows[0]) < 3 {
		return s, fmt.Errorf("IDENTIFY_SYSTEM: unexpected reply")
	}
	if s.SystemIdentifier, err = strconv.ParseUint(rows[0][0], 10, 64); err != nil {
		return s, fmt.Errorf("IDENTIFY_SYSTEM: system identifier: %w", err)
	}
	tli, err := strconv.ParseUint(rows[0][1], 10, 32)
	if err != nil {
		return s, fmt.Errorf("IDENTIFY_SYSTEM: timeline: %w", err)
	}
	s.Timeline = uint32(tli)
	if s.XLogPos, err = segment.ParseLSN(rows[0][2]); err != nil {
		return s, fmt.Errorf("IDENTIFY_SYSTEM: position: %w", err)
	}
	v, err := c.Show(ctx, "server_version_num")
	if err != nil {
		return s, err
	}
	if s.VersionNum, err = strconv.Atoi(v); err != nil {
		return s, fmt.Errorf("server_version_num %q: %w", v, err)
	}
	if s.VersionNum < MinVersion {
		return s, fmt.Errorf("%w %d is too old: base backups need 15 or later", ErrServer, s.VersionNum/10000)
	}
	ss, err := c.Show(ctx, "wal_segment_size")
	if err != nil {
		return s, err
	}
	if s.SegmentSize, err = parseSize(ss); err != nil {
		return s, fmt.Errorf("wal_segment_size %q: %w", ss, err)
	}
	bs, err := c.Show(ctx, "block_size")
	if err != nil {
		return s, err
	}
	if s.BlockSize, err = strconv.Atoi(bs); err != nil {
		return s, fmt.Errorf("block_size %q: %w", bs, err)
	}
	rec, err := c.Show(ctx, "in_hot_standby")
	if err == nil {
		s.InRecovery = rec == "on"
	}
	if s.ArchiveMode, err = c.Show(ctx, "archive_mode"); err != nil {
		return s, err
	}
	return s, nil
}

// parseSize reads a memory setting as SHOW prints it ("16MB", "1GB").
func parseSize(v string) (uint64, error) {
	units := []struct {
		suffix string
		mult   uint64
	}{{"kB", 1 << 10}, {"MB", 1 << 20}, {"GB", 1 << 30}, {"TB", 1 << 40}, {"B", 1}}
	for _, u := range units {
		if n, ok := strings.CutSuffix(v, u.suffix); ok {
			x, err := strconv.ParseUint(n, 10, 64)
			return x * u.mult, err
		}
	}
	return strconv.ParseUint(v, 10, 64)
}

// Show reads one run-time setting.
func (c *Conn) Show(ctx context.Context, name string) (string, error) {
	rows, err := c.query(ctx, "SHOW "+name)
	if err != nil {
		return "", err
	}
	if len(rows) != 1 || len(rows[0]) != 1 {
		return "", fmt.Errorf("SHOW %s: unexpected reply", name)
	}
	return rows[0][0], nil
}

// query runs a replication command with a small text result.
func (c *Conn) query(ctx context.Context, sql string) ([][]string, error) {
	res, err := c.pc.Exec(ctx, sql).ReadAll()
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrServer, sql, err)
	}
	var out [][]string
	for _, r := range res {
		for _, row := range r.Rows {
			vals := make([]string, len(row))
			for i, v := range row {
				vals[i] = string(v)
			}
			out = append(out, vals)
		}
	}
	return out, nil
}

// UploadManifest sends a prior backup's backup_manifest for the
// incremental BASE_BACKUP that follows on this connection: UPLOAD_MANIFEST
// switches to COPY IN, the manifest goes as CopyData and CopyDone, and the
// server answers CommandComplete once it has parsed it. The server keeps
// it for the rest of the session.
func (c *Conn) UploadManifest(ctx context.Context, manifest []byte) error {
	if _, err := c.pc.CopyFrom(ctx, bytes.NewReader(manifest), "UPLOAD_MANIFEST"); err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("%w: UPLOAD_MANIFEST: %w", ErrServer, context.Cause(ctx))
		}
		return fmt.Errorf("%w: UPLOAD_MANIFEST: %w", ErrServer, err)
	}
	return nil
}

// Tablespace is one entry of BASE_BACKUP's tablespace list. The main data
// directory has OID 0 and an empty location.
type Tablespace struct {
	OID      uint32
	Location string
	SizeKB   int64 // -1 when unknown
}

// BackupHandler receives a base backup as the server sends it. Slices are
// only valid during the call.
type BackupHandler interface {
	// Started gives the start position and the tablespaces to come.
	Started(start segment.LSN, tli uint32, spaces []Tablespace) error
	// Archive begins a new archive (a tar file: "base.tar", "<oid>.tar").
	Archive(name, location string) error
	// Data is the next piece of the current archive, or of the manifest
	// once Manifest was called.
	Data(p []byte) error
	// Progress reports the server's count of bytes sent so far.
	Progress(done int64)
	// Manifest begins the server's backup_manifest.
	Manifest() error
}

// BackupOptions shape the BASE_BACKUP command.
type BackupOptions struct {
	Label          string
	FastCheckpoint bool
	// MaxRateKB limits the server's send rate in kB/s; 0 is unlimited.
	MaxRateKB int
	// Incremental asks for an incremental backup (PostgreSQL 17+)
	// against the manifest UploadManifest sent on this connection.
	Incremental bool
}

// BaseBackup runs BASE_BACKUP and streams it into h. It asks for a manifest
// with CRC32C file checksums and a tablespace_map, and does not ask the
// server to wait for WAL archiving: the caller waits on the archive itself,
// with its own timeout. It returns the stop position and timeline.
func (c *Conn) BaseBackup(ctx context.Context, o BackupOptions, h BackupHandler) (segment.LSN, uint32, error) {
	ckpt := "spread"
	if o.FastCheckpoint {
		ckpt = "fast"
	}
	opts := []string{
		"LABEL " + quoteLiteral(o.Label), "PROGRESS", "CHECKPOINT '" + ckpt + "'", "WAIT false",
		"MANIFEST 'yes'", "MANIFEST_CHECKSUMS 'CRC32C'", "TABLESPACE_MAP",
	}
	if o.MaxRateKB > 0 {
		opts = append(opts, "MAX_RATE "+strconv.Itoa(o.MaxRateKB))
	}
	if o.Incremental {
		opts = append(opts, "INCREMENTAL")
	}
	fe := c.pc.Frontend()
	fe.Send(&pgproto3.Query{String: "BASE_BACKUP (" + strings.Join(opts, ", ") + ")"})
	if err := fe.Flush(); err != nil {
		return 0, 0, fmt.Errorf("%w: BASE_BACKUP: send: %w", ErrServer, err)
	}
	// Cancel the server side if ctx ends: closing the connection stops it.
	stop := context.AfterFunc(ctx, func() { _ = c.pc.Conn().Close() })
	defer stop()
	s := &streamState{h: h}
	for {
		msg, err := c.pc.ReceiveMessage(ctx)
		if err != nil {
			if ctx.Err() != nil {
				// The caller's reason (a failed upload, a signal), not
				// the closed socket's.
				return 0, 0, context.Cause(ctx)
			}
			return 0, 0, fmt.Errorf("%w: BASE_BACKUP: %w", ErrServer, err)
		}
		done, err := s.handle(msg)
		if err != nil {
			// Drain to ReadyForQuery is impossible mid-copy; the
			// connection is abandoned by the caller's Close.
			return 0, 0, err
		}
		if done {
			break
		}
	}
	return s.stopPosition()
}

// streamState follows the reply: a result set with the start position, one
// with the tablespaces, a single CopyOut with every archive and the
// manifest, a result set with the stop position, ReadyForQuery.
type streamState struct {
	h       BackupHandler
	results [][][]string // completed result sets
	cur     [][]string
	started bool
	inCopy  bool
}

func (s *streamState) handle(msg pgproto3.BackendMessage) (bool, error) {
	switch m := msg.(type) {
	case *pgproto3.RowDescription:
		s.cur = nil
	case *pgproto3.DataRow:
		row := make([]string, len(m.Values))
		for i, v := range m.Values {
			if v == nil {
				row[i] = "\x00null"
			} else {
				row[i] = string(v)
			}
		}
		s.cur = append(s.cur, row)
	case *pgproto3.CommandComplete:
		if !s.inCopy {
			s.results = append(s.results, s.cur)
			s.cur = nil
		}
	case *pgproto3.CopyOutResponse:
		s.inCopy = true
		if err := s.start(); err != nil {
			return false, err
		}
	case *pgproto3.CopyData:
		return false, s.copyData(m.Data)
	case *pgproto3.CopyDone:
		s.inCopy = false
	case *pgproto3.ErrorResponse:
		err := pgconn.ErrorResponseToPgError(m)
		if m.Code == sqlstatePrerequisite {
			return false, fmt.Errorf("%w: BASE_BACKUP: %w: %w", ErrServer, ErrPrerequisite, err)
		}
		return false, fmt.Errorf("%w: BASE_BACKUP: %w", ErrServer, err)
	case *pgproto3.ReadyForQuery:
		return true, nil
	case *pgproto3.NoticeResponse, *pgproto3.ParameterStatus:
	}
	return false, nil
}

// stopPosition reads the result set after the copy: the stop position,
// possibly followed by an empty CommandComplete for BASE_BACKUP itself.
func (s *streamState) stopPosition() (segment.LSN, uint32, error) {
	var stopRow []string
	for _, r := range s.results[min(2, len(s.results)):] {
		if len(r) == 1 && stopRow == nil {
			stopRow = r[0]
		}
	}
	if !s.started || stopRow == nil {
		return 0, 0, fmt.Errorf("%w: BASE_BACKUP: no stop position in the reply", ErrServer)
	}
	lsn, tli, err := parsePos(stopRow)
	if err != nil {
		return 0, 0, fmt.Errorf("%w: BASE_BACKUP stop position: %w", ErrServer, err)
	}
	return lsn, tli, nil
}

func (s *streamState) start() error {
	if len(s.results) != 2 || len(s.results[0]) != 1 {
		return fmt.Errorf("BASE_BACKUP: unexpected reply before the data")
	}
	lsn, tli, err := parsePos(s.results[0][0])
	if err != nil {
		return fmt.Errorf("BASE_BACKUP start position: %w", err)
	}
	var spaces []Tablespace
	for _, r := range s.results[1] {
		if len(r) != 3 {
			return fmt.Errorf("BASE_BACKUP: bad tablespace row")
		}
		t := Tablespace{SizeKB: -1}
		if r[0] != "\x00null" {
			oid, err := strconv.ParseUint(r[0], 10, 32)
			if err != nil {
				return fmt.Errorf("BASE_BACKUP: tablespace oid %q", r[0])
			}
			t.OID, t.Location = uint32(oid), r[1]
		}
		if r[2] != "\x00null" {
			if t.SizeKB, err = strconv.ParseInt(r[2], 10, 64); err != nil {
				return fmt.Errorf("BASE_BACKUP: tablespace size %q", r[2])
			}
		}
		spaces = append(spaces, t)
	}
	s.started = true
	return s.h.Started(lsn, tli, spaces)
}

func (s *streamState) copyData(d []byte) error {
	if len(d) == 0 {
		return fmt.Errorf("BASE_BACKUP: empty CopyData message")
	}
	switch d[0] {
	case 'd':
		return s.h.Data(d[1:])
	case 'n':
		parts := strings.Split(string(d[1:]), "\x00")
		if len(parts) < 2 {
			return fmt.Errorf("BASE_BACKUP: bad new-archive message")
		}
		return s.h.Archive(parts[0], parts[1])
	case 'p':
		if len(d) != 9 {
			return fmt.Errorf("BASE_BACKUP: bad progress message")
		}
		s.h.Progress(int64(binary.BigEndian.Uint64(d[1:])))
		return nil
	case 'm':
		return s.h.Manifest()
	}
	return fmt.Errorf("BASE_BACKUP: unknown message type %q", d[0])
}

// parsePos reads a (recptr, tli) row.
func parsePos(r []string) (segment.LSN, uint32, error) {
	if len(r) != 2 {
		return 0, 0, fmt.Errorf("want 2 columns, got %d", len(r))
	}
	lsn, err := segment.ParseLSN(r[0])
	if err != nil {
		return 0, 0, err
	}
	tli, err := strconv.ParseUint(r[1], 10, 32)
	if err != nil || tli == 0 {
		return 0, 0, fmt.Errorf("bad timeline %q", r[1])
	}
	return lsn, uint32(tli), nil
}

// quoteLiteral quotes s as an SQL string literal.
func quoteLiteral(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }
