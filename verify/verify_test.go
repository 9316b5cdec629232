package verify_test

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"

	"github.com/walship/walship/archive"
	"github.com/walship/walship/backends/memory"
	"github.com/walship/walship/internal/testenv"
	"github.com/walship/walship/manifest"
	"github.com/walship/walship/sealed"
	"github.com/walship/walship/segment"
	"github.com/walship/walship/verify"
)

func TestVerify(t *testing.T) {
	ctx := context.Background()
	store := memory.New()
	a := archive.New(store, slog.New(slog.DiscardHandler))
	dir := t.TempDir()
	for n := uint64(2); n <= 7; n++ {
		name := segment.Name{TLI: 1, SegNo: n}.String(1 << 20)
		if _, err := a.Push(ctx, testenv.WriteSegment(t, dir, name, 7300000000000000003, nil), sealed.Compression{Codec: sealed.CodecZstd}); err != nil {
			t.Fatal(err)
		}
	}
	r, err := verify.Run(ctx, a, verify.Options{})
	if err != nil || len(r.Problems) != 0 || r.Checked != 6 {
		t.Fatalf("clean archive: %+v %v", r, err)
	}
	if err := store.Delete(ctx, "wal/00000001/000000010000000000000004"); err != nil {
		t.Fatal(err)
	}
	store.Corrupt("wal/00000001/000000010000000000000006", 200)
	r, _ = verify.Run(ctx, a, verify.Options{Quick: true})
	if len(r.Problems) != 1 || r.Problems[0].Kind != "gap" || !strings.Contains(r.Problems[0].Detail, "000000010000000000000004") || r.Checked != 0 {
		t.Fatalf("quick: %+v", r.Problems)
	}
	r, _ = verify.Run(ctx, a, verify.Options{})
	kinds := map[string]bool{}
	for _, p := range r.Problems {
		kinds[p.Kind] = true
	}
	if !kinds["gap"] || !kinds["checksum"] {
		t.Fatalf("full: %+v", r.Problems)
	}
}

// An incremental whose parent is gone is a "chain" problem.
func TestVerifyReportsBrokenChain(t *testing.T) {
	ctx := context.Background()
	store := memory.New()
	a := archive.New(store, slog.New(slog.DiscardHandler))
	if _, err := a.ClaimIdentity(ctx, archive.Identity{SystemIdentifier: 9, PGVersion: "17", SegmentSize: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	m := manifest.Manifest{Format: manifest.Format, ID: "20261201T000000Z", SystemIdentifier: 9, SegmentSize: 1 << 20,
		Timeline: 1, StopTimeline: 1, Type: manifest.TypeIncremental, Parent: "20261130T000000Z"}
	b, _ := json.Marshal(m)
	if err := store.Put(ctx, manifest.Key(m.ID), bytes.NewReader(b), int64(len(b))); err != nil {
		t.Fatal(err)
	}
	r, err := verify.Run(ctx, a, verify.Options{Quick: true})
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, p := range r.Problems {
		found = found || (p.Kind == "chain" && p.Key == manifest.Key(m.ID) && strings.Contains(p.Detail, m.Parent))
	}
	if !found {
		t.Errorf("no chain problem for an incremental without its parent: %+v", r.Problems)
	}
}
