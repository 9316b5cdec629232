package retention

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"testing"
	"time"

	"github.com/walship/walship/archive"
	"github.com/walship/walship/backends"
	"github.com/walship/walship/backends/memory"
	"github.com/walship/walship/manifest"
)

func TestLoadPlanApply(t *testing.T) {
	ctx := context.Background()
	store := memory.New()
	a := archive.New(store, slog.New(slog.DiscardHandler))
	if _, err := a.ClaimIdentity(ctx, archive.Identity{SystemIdentifier: 1, PGVersion: "15", SegmentSize: segSize}); err != nil {
		t.Fatal(err)
	}
	put := func(key string, b []byte) {
		if err := store.Put(ctx, key, bytes.NewReader(b), int64(len(b))); err != nil {
			t.Fatal(err)
		}
	}
	for n := uint64(2); n <= 9; n++ {
		put("wal/00000001/"+name(1, n), []byte("x"))
	}
	old := mkBackup("20261120T000000Z", 1, 2, time.Now().Add(-time.Hour))
	newer := mkBackup("20261121T000000Z", 1, 6, time.Now().Add(-time.Hour))
	for _, b := range []*manifest.Manifest{old, newer} {
		b.Format = manifest.Format
		j, _ := json.Marshal(b)
		put(manifest.Prefix+b.ID+"/manifest.json", j)
		put(manifest.Prefix+b.ID+"/base.tar.00000", []byte("data"))
	}
	inv, err := Load(ctx, a)
	if err != nil {
		t.Fatal(err)
	}
	// Everything was just written: the grace period keeps it all.
	p, err := Make(inv, Policy{KeepLast: 1, Grace: DefaultGrace}, time.Now())
	if err != nil || p.DeleteCount != 0 {
		t.Fatalf("within the grace period: %d deletions, %v", p.DeleteCount, err)
	}
	p, err = Make(inv, Policy{KeepLast: 1}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if n, err := Apply(ctx, a, p, slog.New(slog.DiscardHandler)); err != nil || n != 6 {
		t.Fatalf("apply: %d, %v (want the old backup's 2 objects and segments 2..5)", n, err)
	}
	var left []string
	_ = store.List(ctx, "", func(o backends.ObjectInfo) error { left = append(left, o.Key); return nil })
	want := []string{"backups/20261121T000000Z/base.tar.00000", "backups/20261121T000000Z/manifest.json", "identity.json",
		"wal/00000001/" + name(1, 6), "wal/00000001/" + name(1, 7), "wal/00000001/" + name(1, 8), "wal/00000001/" + name(1, 9)}
	if len(left) != len(want) {
		t.Fatalf("left %v", left)
	}
	for i := range want {
		if left[i] != want[i] {
			t.Fatalf("left %v, want %v", left, want)
		}
	}
}
