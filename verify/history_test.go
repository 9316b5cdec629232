package verify_test

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/walship/walship/archive"
	"github.com/walship/walship/backends/memory"
	"github.com/walship/walship/internal/testenv"
	"github.com/walship/walship/sealed"
	"github.com/walship/walship/segment"
	"github.com/walship/walship/verify"
)

// WAL on timeline 2 whose history file is not archived is a problem once
// something starts on timeline 1 (here a follower's slot): it would
// silently stay there.
func TestVerifyReportsMissingHistory(t *testing.T) {
	ctx := context.Background()
	store := memory.New()
	a := archive.New(store, slog.New(slog.DiscardHandler))
	dir := t.TempDir()
	const sysID = 7300000000000000003
	zstd := sealed.Compression{Codec: sealed.CodecZstd}
	push := func(tli uint32, n uint64) {
		name := segment.Name{TLI: tli, SegNo: n}.String(1 << 20)
		if _, err := a.Push(ctx, testenv.WriteSegment(t, dir, name, sysID, nil), zstd); err != nil {
			t.Fatal(err)
		}
	}
	for n := uint64(2); n <= 4; n++ {
		push(1, n)
	}
	push(2, 4)
	push(2, 5)
	r, err := verify.Run(ctx, a, verify.Options{Quick: true})
	if err != nil || len(r.Problems) != 0 {
		t.Fatalf("nothing starts on timeline 1 yet: %+v %v", r.Problems, err)
	}
	if _, err := a.CreateSlot(ctx, "dr", time.Hour); err != nil {
		t.Fatal(err)
	}
	if _, err := a.UpdateSlot(ctx, "dr", archive.SlotUpdate{Position: segment.Name{TLI: 1, SegNo: 3}.String(1 << 20)}); err != nil {
		t.Fatal(err)
	}
	r, err = verify.Run(ctx, a, verify.Options{Quick: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Problems) != 1 || r.Problems[0].Kind != "history" || r.Problems[0].Key != "history/00000002.history" {
		t.Fatalf("problems %+v, want the missing history of timeline 2", r.Problems)
	}
	hist := filepath.Join(dir, "00000002.history")
	if err := os.WriteFile(hist, []byte("1\t0/4000000\tno recovery target specified\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Push(ctx, hist, zstd); err != nil {
		t.Fatal(err)
	}
	if r, err = verify.Run(ctx, a, verify.Options{}); err != nil || len(r.Problems) != 0 {
		t.Fatalf("with the history file: %+v %v", r.Problems, err)
	}
}
