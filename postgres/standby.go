package postgres

import (
	"context"
	"fmt"
	"strconv"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/walship/walship/segment"
)

// Replay is how far a standby has come.
type Replay struct {
	InRecovery bool
	ReplayLSN  segment.LSN // last replayed position (0 if not in recovery)
	RedoLSN    segment.LSN // redo point of the last restartpoint: the oldest WAL a restart needs
	Timeline   uint32      // the last restartpoint's timeline
}

// Standby asks a standby how far it has replayed, over an ordinary
// connection that it opens on first use and reopens after a failure.
type Standby struct {
	connString string
	pc         *pgconn.PgConn
}

// NewStandby checks the connection string; it connects on first use.
func NewStandby(connString string) (*Standby, error) {
	if hasPassword(connString) {
		return nil, ErrPassword
	}
	if _, err := pgconn.ParseConfig(connString); err != nil {
		return nil, fmt.Errorf("connection string: %w", err)
	}
	return &Standby{connString: connString}, nil
}

// Replay queries pg_last_wal_replay_lsn() and pg_control_checkpoint().
func (s *Standby) Replay(ctx context.Context) (Replay, error) {
	if s.pc == nil {
		cfg, err := pgconn.ParseConfig(s.connString)
		if err != nil {
			return Replay{}, err
		}
		cfg.RuntimeParams["application_name"] = "walship agent"
		pc, err := pgconn.ConnectConfig(ctx, cfg)
		if err != nil {
			return Replay{}, fmt.Errorf("%w: connect to standby: %w", ErrServer, err)
		}
		s.pc = pc
	}
	res, err := s.pc.Exec(ctx, "SELECT pg_is_in_recovery(), coalesce(pg_last_wal_replay_lsn()::text, ''), "+
		"redo_lsn::text, timeline_id FROM pg_control_checkpoint()").ReadAll()
	if err != nil || len(res) != 1 || len(res[0].Rows) != 1 || len(res[0].Rows[0]) != 4 {
		s.Close(ctx)
		if err == nil {
			err = fmt.Errorf("unexpected reply")
		}
		return Replay{}, fmt.Errorf("%w: ask standby for its replay position: %w", ErrServer, err)
	}
	row := res[0].Rows[0]
	r := Replay{InRecovery: string(row[0]) == "t"}
	if len(row[1]) > 0 {
		if r.ReplayLSN, err = segment.ParseLSN(string(row[1])); err != nil {
			return Replay{}, err
		}
	}
	if r.RedoLSN, err = segment.ParseLSN(string(row[2])); err != nil {
		return Replay{}, err
	}
	tli, err := strconv.ParseUint(string(row[3]), 10, 32)
	if err != nil {
		return Replay{}, fmt.Errorf("standby timeline %q: %w", row[3], err)
	}
	r.Timeline = uint32(tli)
	return r, nil
}

// Close drops the connection.
func (s *Standby) Close(ctx context.Context) {
	if s.pc != nil {
		_ = s.pc.Close(ctx)
		s.pc = nil
	}
}

// Query runs one statement over an ordinary connection and returns the
// first row as text.
func Query(ctx context.Context, connString, sql string) ([]string, error) {
	if hasPassword(connString) {
		return nil, ErrPassword
	}
	cfg, err := pgconn.ParseConfig(connString)
	if err != nil {
		return nil, fmt.Errorf("connection string: %w", err)
	}
	pc, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("%w: connect: %w", ErrServer, err)
	}
	defer pc.Close(context.WithoutCancel(ctx))
	res, err := pc.Exec(ctx, sql).ReadAll()
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrServer, err)
	}
	if len(res) == 0 || len(res[0].Rows) == 0 {
		return nil, fmt.Errorf("%w: no rows", ErrServer)
	}
	var out []string
	for _, v := range res[0].Rows[0] {
		out = append(out, string(v))
	}
	return out, nil
}
