package backup_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/walship/walship/archive"
	"github.com/walship/walship/backends"
	"github.com/walship/walship/backends/memory"
	"github.com/walship/walship/backup"
	"github.com/walship/walship/catalog"
	"github.com/walship/walship/manifest"
	"github.com/walship/walship/postgres"
	"github.com/walship/walship/segment"
)

// server17 is a PostgreSQL 17 with summarize_wal on whose backup starts at
// hour:00 (its backup_label) and, when from is set, was taken
// incrementally from that LSN: it then sends base/1/1259 as
// INCREMENTAL.1259, listed in its manifest like any file.
func server17(t *testing.T, hour int, from string) *fakeServer {
	ctl := make([]byte, 8192)
	binary.LittleEndian.PutUint64(ctl[0:], sysID)
	binary.LittleEndian.PutUint64(ctl[64:], 1<<32+4242)
	label := fmt.Sprintf("START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\nSTART TIME: 2026-11-26 %02d:00:00 UTC\n", hour)
	rel := file{"base/1/1259", bytes.Repeat([]byte("a relation page "), 4096)}
	if from != "" {
		label += "INCREMENTAL FROM LSN: " + from + "\nINCREMENTAL FROM TLI: 1\n"
		// magic, block count, truncation length, one block number, the
		// header padded to a block, one block
		hdr := make([]byte, 8192)
		binary.LittleEndian.PutUint32(hdr[0:], 0xd3ae1f0d)
		binary.LittleEndian.PutUint32(hdr[4:], 1)
		binary.LittleEndian.PutUint32(hdr[8:], 8)
		binary.LittleEndian.PutUint32(hdr[12:], 3)
		rel = file{"base/1/INCREMENTAL.1259", append(hdr, bytes.Repeat([]byte{7}, 8192)...)}
	}
	s := buildFakeServer(t, false, []file{
		{"backup_label", []byte(label)}, {"PG_VERSION", []byte("17\n")}, rel, {"global/pg_control", ctl},
	}, nil)
	s.version, s.summarizeWAL = 170004, "on"
	return s
}

// incrOptions are options() for an incremental backup with a clock that
// gives every backup its own id.
func incrOptions(clk *fakeClock, from string) backup.Options {
	o := options()
	o.Incremental, o.From, o.Now = true, from, clk.Now
	clk.Add(time.Hour)
	return o
}

func fullOptions(clk *fakeClock) backup.Options {
	o := options()
	o.Now = clk.Now
	clk.Add(time.Hour)
	return o
}

// A full backup, an incremental against it, and a second incremental
// whose parent is chosen as the newest: the first incremental.
func TestIncrementalChain(t *testing.T) {
	ctx := context.Background()
	store := memory.New()
	putWAL(t, store, 3)
	a := archive.New(store, slog.New(slog.DiscardHandler))
	clk := &fakeClock{t: time.Date(2026, 11, 26, 10, 0, 0, 0, time.UTC)}
	full, err := backup.Push(ctx, a, server17(t, 10, ""), fullOptions(clk))
	if err != nil {
		t.Fatal(err)
	}
	if full.Type != manifest.TypeFull || full.Parent != "" {
		t.Fatalf("full backup: type %q parent %q", full.Type, full.Parent)
	}
	fullServerManifest, err := archive.ReadSealed(ctx, store, manifest.ServerKey(full.ID))
	if err != nil {
		t.Fatal(err)
	}

	srv := server17(t, 11, "0/2000028")
	var lease archive.Lease
	srv.onBackup = func() {
		id := onlyNewID(ctx, t, store, full.ID)
		lease, _, err = a.ReadLease(ctx, archive.BackupLeaseKey(id))
	}
	i1, err := backup.Push(ctx, a, srv, incrOptions(clk, ""))
	if err != nil {
		t.Fatal(err)
	}
	if lease.Parent != full.ID {
		t.Errorf("the running incremental's lease names parent %q, want %s", lease.Parent, full.ID)
	}
	if i1.Type != manifest.TypeIncremental || i1.Parent != full.ID {
		t.Fatalf("first incremental: type %q parent %q, want incremental of %s", i1.Type, i1.Parent, full.ID)
	}
	if !bytes.Equal(srv.uploaded, fullServerManifest) {
		t.Error("UPLOAD_MANIFEST did not send the parent's backup_manifest as stored")
	}
	if want := []string{"SHOW summarize_wal", "UPLOAD_MANIFEST", "BASE_BACKUP incremental=true"}; !slices.Equal(srv.calls, want) {
		t.Errorf("server saw %v, want %v", srv.calls, want)
	}
	got, err := manifest.Get(ctx, store, i1.ID)
	if err != nil || got.Type != manifest.TypeIncremental || got.Parent != full.ID {
		t.Fatalf("stored manifest of %s: %+v, %v", i1.ID, got, err)
	}

	srv2 := server17(t, 12, "0/2000028")
	i2, err := backup.Push(ctx, a, srv2, incrOptions(clk, ""))
	if err != nil {
		t.Fatal(err)
	}
	if i2.Parent != i1.ID {
		t.Errorf("second incremental's parent is %s, want the newest backup %s", i2.Parent, i1.ID)
	}
	// --from picks another.
	i3, err := backup.Push(ctx, a, server17(t, 13, "0/2000028"), incrOptions(clk, full.ID))
	if err != nil || i3.Parent != full.ID {
		t.Fatalf("--from %s: %+v, %v", full.ID, i3, err)
	}
	inv, err := catalog.Load(ctx, a, catalog.Backups)
	if err != nil {
		t.Fatal(err)
	}
	chain, err := inv.Chain(i2)
	if err != nil || len(chain) != 3 || chain[0].ID != full.ID || chain[1].ID != i1.ID {
		t.Fatalf("chain of %s: %v, %v", i2.ID, chain, err)
	}
}

// onlyNewID is the id of the one backup under backups/ other than old.
func onlyNewID(ctx context.Context, t *testing.T, store backends.Storage, old ...string) string {
	t.Helper()
	for _, k := range keysUnder(ctx, t, store, manifest.Prefix) {
		id, _, _ := strings.Cut(strings.TrimPrefix(k, manifest.Prefix), "/")
		if !slices.Contains(old, id) {
			return id
		}
	}
	t.Fatal("no new backup under backups/")
	return ""
}

// Every refusal comes before anything is written: the archive's objects
// are the same before and after, and the server was never asked for a
// backup (or, for the server's own refusal, the lease is gone again).
func TestIncrementalRefusals(t *testing.T) {
	summaries := fmt.Errorf("%w: BASE_BACKUP: %w: %w", postgres.ErrServer, postgres.ErrPrerequisite, &pgconn.PgError{
		Severity: "ERROR", Code: "55000",
		Message: "WAL summaries are required on timeline 1 from 0/2000028 to 0/5000028, but the summaries for that timeline and LSN range are incomplete",
		Detail:  "The first unsummarized LSN in this range is 0/3000000.",
	})
	cases := []struct {
		name     string
		withFull bool
		setup    func(s *fakeServer, o *backup.Options)
		want     error
		says     []string
		// backs: BASE_BACKUP was sent (and refused by the server)
		backs bool
	}{
		{"server 15", true, func(s *fakeServer, _ *backup.Options) { s.version = 150010 }, backup.ErrIncremental,
			[]string{"PostgreSQL 15", "17 or later"}, false},
		{"summarize_wal off", true, func(s *fakeServer, _ *backup.Options) { s.summarizeWAL = "off" }, backup.ErrIncremental,
			[]string{"summarize_wal is off"}, false},
		{"empty archive", false, func(*fakeServer, *backup.Options) {}, backup.ErrIncremental, []string{"no backup yet"}, false},
		{"--from unknown", true, func(_ *fakeServer, o *backup.Options) { o.From = "20200101T000000Z" }, backup.ErrIncremental,
			[]string{"--from 20200101T000000Z", "no complete backup"}, false},
		{"--from malformed", true, func(_ *fakeServer, o *backup.Options) { o.From = "latest" }, manifest.ErrBadID, nil, false},
		{"server's WAL summaries do not reach back", true, func(s *fakeServer, _ *backup.Options) { s.baseErr = summaries },
			backup.ErrIncremental, []string{"summarize_wal", "wal_summary_keep_time", "first unsummarized LSN", "start 0/2000028"}, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			store := memory.New()
			a := archive.New(store, slog.New(slog.DiscardHandler))
			clk := &fakeClock{t: time.Date(2026, 11, 26, 10, 0, 0, 0, time.UTC)}
			var full *manifest.Manifest
			if tc.withFull {
				putWAL(t, store, 3)
				var err error
				if full, err = backup.Push(ctx, a, server17(t, 10, ""), fullOptions(clk)); err != nil {
					t.Fatal(err)
				}
			}
			before := keysUnder(ctx, t, store, "")
			srv := server17(t, 11, "0/2000028")
			o := incrOptions(clk, "")
			tc.setup(srv, &o)
			_, err := backup.Push(ctx, a, srv, o)
			if !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
			t.Logf("refused: %v", err)
			for _, s := range tc.says {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not say %q", err, s)
				}
			}
			if tc.backs && !strings.Contains(err.Error(), full.ID) {
				t.Errorf("error %q does not name the parent %s", err, full.ID)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("error is not one line: %q", err)
			}
			after := keysUnder(ctx, t, store, "")
			sort.Strings(before)
			sort.Strings(after)
			if !slices.Equal(before, after) {
				t.Errorf("the refused backup changed the archive: before %v, after %v", before, after)
			}
			if tc.backs != slices.Contains(srv.calls, "BASE_BACKUP incremental=true") {
				t.Errorf("server calls %v", srv.calls)
			}
		})
	}
}

// A server that says it took the backup from another start than the
// parent's (backup_label's INCREMENTAL FROM LSN), or took a full one
// instead, fails the backup, which leaves nothing.
func TestIncrementalLabelChecked(t *testing.T) {
	for _, from := range []string{"0/1000028", ""} {
		ctx := context.Background()
		store := memory.New()
		putWAL(t, store, 3)
		a := archive.New(store, slog.New(slog.DiscardHandler))
		clk := &fakeClock{t: time.Date(2026, 11, 26, 10, 0, 0, 0, time.UTC)}
		full, err := backup.Push(ctx, a, server17(t, 10, ""), fullOptions(clk))
		if err != nil {
			t.Fatal(err)
		}
		srv := server17(t, 11, from)
		if from == "" {
			srv.version = 170004 // a full backup's files, asked for an incremental
		}
		_, err = backup.Push(ctx, a, srv, incrOptions(clk, ""))
		if !errors.Is(err, backup.ErrIncomplete) {
			t.Fatalf("INCREMENTAL FROM %q: err = %v", from, err)
		}
		if id := onlyNewIDOrEmpty(ctx, t, store, full.ID); id != "" {
			t.Errorf("INCREMENTAL FROM %q: the failed backup left %s", from, id)
		}
	}
}

func onlyNewIDOrEmpty(ctx context.Context, t *testing.T, store backends.Storage, old string) string {
	for _, k := range keysUnder(ctx, t, store, manifest.Prefix) {
		if id, _, _ := strings.Cut(strings.TrimPrefix(k, manifest.Prefix), "/"); id != old {
			return id
		}
	}
	return ""
}

func TestChooseParent(t *testing.T) {
	t0 := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	mk := func(id string, hour int, tli uint32, parent string) *manifest.Manifest {
		m := &manifest.Manifest{ID: id, SystemIdentifier: sysID, PGVersion: "17", Timeline: tli, StopTimeline: tli,
			StartTime: t0.Add(time.Duration(hour) * time.Hour), Type: manifest.TypeFull,
			StartLSN: segment.LSN(0x1000000 * uint64(hour+1)), StopLSN: segment.LSN(0x1000000*uint64(hour+1) + 0x100)}
		m.WALRanges = []manifest.WALRange{{Timeline: tli, Start: m.StartLSN, End: m.StopLSN}}
		if parent != "" {
			m.Type, m.Parent = manifest.TypeIncremental, parent
		}
		return m
	}
	f1 := mk("20261201T000000Z", 0, 1, "")
	i1 := mk("20261201T010000Z", 1, 1, f1.ID)
	// timeline 2 forked from 1 at 0/2800000: i1 (stop 0/2000100) is on
	// its history, a backup on timeline 1 after the fork is not.
	after := mk("20261201T020000Z", 2, 1, "")
	other := mk("20261201T030000Z", 3, 2, "")
	other.SystemIdentifier = 1
	old := mk("20261201T040000Z", 4, 2, "")
	old.PGVersion = "16"
	orphan := mk("20261201T050000Z", 5, 2, "20261130T000000Z")
	ahead := mk("20261201T060000Z", 6, 2, "")
	ahead.StopLSN = 0x90000000
	c := &catalog.Catalog{SegSize: segSize, Backups: []*manifest.Manifest{f1, i1, after, other, old, orphan, ahead},
		History: map[uint32][]segment.HistoryEntry{2: {{TLI: 1, SwitchLSN: 0x2800000}}}}
	sys := postgres.System{SystemIdentifier: sysID, Timeline: 2, VersionNum: 170004, XLogPos: 0x9000000}
	got, err := backup.ChooseParent(c, sys, "")
	if err != nil || got.ID != i1.ID {
		t.Fatalf("parent chosen: %v, %v; want %s", got, err, i1.ID)
	}
	for m, why := range map[*manifest.Manifest]string{
		after: "not on the history", other: "another cluster", old: "PostgreSQL 16", orphan: "chain broken", ahead: "after the server's current position",
	} {
		if _, err := backup.ChooseParent(c, sys, m.ID); !errors.Is(err, backup.ErrIncremental) || !strings.Contains(err.Error(), why) {
			t.Errorf("--from %s: %v, want a refusal saying %q", m.ID, err, why)
		}
	}
	if got, err := backup.ChooseParent(c, sys, f1.ID); err != nil || got != f1 {
		t.Errorf("--from %s: %v, %v", f1.ID, got, err)
	}
	// Timeline 3 has no history file in the archive: a backup on 2 cannot
	// be shown to be on its history.
	sys.Timeline = 3
	if _, err := backup.ChooseParent(c, sys, i1.ID); !errors.Is(err, backup.ErrIncremental) || !strings.Contains(err.Error(), "no history file") {
		t.Errorf("server on timeline 3: %v", err)
	}
}
