package postgres

import (
	"errors"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/walship/walship/segment"
)

func TestHasPassword(t *testing.T) {
	for s, want := range map[string]bool{
		"":                                     false,
		"host=db1 user=replicator":             false,
		"host=db1 password=x":                  true,
		"host=db1 PASSWORD = x":                true,
		"postgres://u:secret@db1/postgres":     true,
		"postgresql://u@db1/postgres":          false,
		"postgres://db1/postgres?password=abc": true,
		"host=db1 passfile=/home/u/.pgpass":    false,
	} {
		if got := hasPassword(s); got != want {
			t.Errorf("hasPassword(%q) = %v, want %v", s, got, want)
		}
	}
}

func TestParseSize(t *testing.T) {
	for s, want := range map[string]uint64{"16MB": 16 << 20, "1GB": 1 << 30, "64kB": 64 << 10, "8192": 8192} {
		if got, err := parseSize(s); err != nil || got != want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", s, got, err, want)
		}
	}
	if _, err := parseSize("lots"); err == nil {
		t.Error("parseSize accepted garbage")
	}
}

type recorder struct {
	calls []string
	start segment.LSN
}

func (r *recorder) Started(start segment.LSN, tli uint32, spaces []Tablespace) error {
	r.start = start
	r.calls = append(r.calls, "started")
	for _, s := range spaces {
		r.calls = append(r.calls, "space:"+s.Location)
	}
	return nil
}
func (r *recorder) Archive(name, loc string) error {
	r.calls = append(r.calls, "archive:"+name)
	return nil
}
func (r *recorder) Data(p []byte) error { r.calls = append(r.calls, "data:"+string(p)); return nil }
func (r *recorder) Progress(n int64)    { r.calls = append(r.calls, "progress") }
func (r *recorder) Manifest() error     { r.calls = append(r.calls, "manifest"); return nil }

func row(vals ...string) *pgproto3.DataRow {
	r := &pgproto3.DataRow{}
	for _, v := range vals {
		if v == "NULL" {
			r.Values = append(r.Values, nil)
		} else {
			r.Values = append(r.Values, []byte(v))
		}
	}
	return r
}

func TestStreamState(t *testing.T) {
	msgs := []pgproto3.BackendMessage{
		&pgproto3.RowDescription{}, row("0/2000028", "1"), &pgproto3.CommandComplete{},
		&pgproto3.RowDescription{}, row("16384", "/srv/ts", "80"), row("NULL", "NULL", "200"), &pgproto3.CommandComplete{},
		&pgproto3.CopyOutResponse{},
		&pgproto3.CopyData{Data: []byte("n16384.tar\x00/srv/ts\x00")},
		&pgproto3.CopyData{Data: []byte("dabc")},
		&pgproto3.CopyData{Data: []byte("p\x00\x00\x00\x00\x00\x00\x00\x03")},
		&pgproto3.CopyData{Data: []byte("nbase.tar\x00\x00")},
		&pgproto3.CopyData{Data: []byte("ddef")},
		&pgproto3.CopyData{Data: []byte("m")},
		&pgproto3.CopyData{Data: []byte("d{}")},
		&pgproto3.CopyDone{},
		&pgproto3.RowDescription{}, row("0/2000100", "1"), &pgproto3.CommandComplete{},
		&pgproto3.CommandComplete{},
		&pgproto3.ReadyForQuery{},
	}
	r := &recorder{}
	s := &streamState{h: r}
	for i, m := range msgs {
		done, err := s.handle(m)
		if err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
		if done != (i == len(msgs)-1) {
			t.Fatalf("message %d: done = %v", i, done)
		}
	}
	lsn, tli, err := s.stopPosition()
	if err != nil || lsn != 0x2000100 || tli != 1 || r.start != 0x2000028 {
		t.Fatalf("stop %s/%d start %s: %v", lsn, tli, r.start, err)
	}
	want := "started space:/srv/ts space: archive:16384.tar data:abc progress archive:base.tar data:def manifest data:{}"
	if got := strings.Join(r.calls, " "); got != want {
		t.Errorf("calls\n got %s\nwant %s", got, want)
	}
}

func TestStreamStateRefusals(t *testing.T) {
	started := func() *streamState {
		s := &streamState{h: &recorder{}}
		for _, m := range []pgproto3.BackendMessage{
			&pgproto3.RowDescription{}, row("0/2000028", "1"), &pgproto3.CommandComplete{},
			&pgproto3.RowDescription{}, row("NULL", "NULL", "NULL"), &pgproto3.CommandComplete{},
			&pgproto3.CopyOutResponse{},
		} {
			if _, err := s.handle(m); err != nil {
				t.Fatal(err)
			}
		}
		return s
	}
	for name, m := range map[string]pgproto3.BackendMessage{
		"unknown type":   &pgproto3.CopyData{Data: []byte("x")},
		"empty":          &pgproto3.CopyData{Data: nil},
		"short progress": &pgproto3.CopyData{Data: []byte("p\x00")},
		"bad archive":    &pgproto3.CopyData{Data: []byte("nbase.tar")},
	} {
		if _, err := started().handle(m); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	_, err := started().handle(&pgproto3.ErrorResponse{Severity: "ERROR", Message: "could not read file"})
	if !errors.Is(err, ErrServer) || !strings.Contains(err.Error(), "could not read file") {
		t.Errorf("server error: %v", err)
	}
	s := &streamState{h: &recorder{}}
	if _, err := s.handle(&pgproto3.CopyOutResponse{}); err == nil {
		t.Error("copy before the start position accepted")
	}
	if _, _, err := s.stopPosition(); !errors.Is(err, ErrServer) {
		t.Errorf("no stop position: %v", err)
	}
}

// The server's refusal for a missing prerequisite (SQLSTATE 55000: WAL
// summaries that do not reach back, for an incremental) is marked, with
// its message and detail kept; other errors are not.
func TestPrerequisiteError(t *testing.T) {
	s := &streamState{h: &recorder{}}
	_, err := s.handle(&pgproto3.ErrorResponse{Severity: "ERROR", Code: "55000",
		Message: "WAL summaries are required on timeline 1 from 0/2000028 to 0/5000028, but no summaries for that timeline and LSN range exist"})
	var pe *pgconn.PgError
	if !errors.Is(err, ErrPrerequisite) || !errors.Is(err, ErrServer) || !errors.As(err, &pe) || pe.Code != "55000" {
		t.Errorf("55000: %v", err)
	}
	_, err = s.handle(&pgproto3.ErrorResponse{Severity: "ERROR", Code: "58P01", Message: "could not open file"})
	if errors.Is(err, ErrPrerequisite) || !errors.Is(err, ErrServer) {
		t.Errorf("58P01: %v", err)
	}
}
