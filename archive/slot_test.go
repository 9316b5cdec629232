package archive_test

import (
	"context"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/walship/walship/archive"
	"github.com/walship/walship/backends"
	"github.com/walship/walship/backends/memory"
)

func TestHeadFollowsPushes(t *testing.T) {
	ctx := context.Background()
	a := archive.New(memory.New(), quiet())
	dir := t.TempDir()
	if _, err := a.ReadHead(ctx, 1); err == nil {
		t.Fatal("head of an empty archive")
	}
	for _, n := range []string{"000000010000000000000003", "000000010000000000000004"} {
		if _, err := a.Push(ctx, makeSegment(t, dir, n, sysID, nil), zstd); err != nil {
			t.Fatal(err)
		}
	}
	h, err := a.ReadHead(ctx, 1)
	if err != nil || h.Segment != "000000010000000000000004" || h.Timeline != 1 {
		t.Fatalf("head %+v, %v", h, err)
	}
	// A re-push of an older segment (after a crash) does not move it back.
	if _, err := a.Push(ctx, makeSegment(t, dir, "000000010000000000000003", sysID, nil), zstd); err != nil {
		t.Fatal(err)
	}
	if h, _ := a.ReadHead(ctx, 1); h.Segment != "000000010000000000000004" {
		t.Fatalf("head moved back to %s", h.Segment)
	}
}

func TestSlots(t *testing.T) {
	ctx := context.Background()
	a := archive.New(memory.New(), quiet())
	for _, bad := range []string{"", "Upper", "with-dash", "../x", string(make([]byte, 64))} {
		if _, err := a.CreateSlot(ctx, bad, time.Hour); !errors.Is(err, archive.ErrBadSlot) {
			t.Errorf("create %q: %v", bad, err)
		}
	}
	if _, err := a.CreateSlot(ctx, "dr1", time.Hour); err != nil {
		t.Fatal(err)
	}
	if _, err := a.CreateSlot(ctx, "dr1", time.Hour); !errors.Is(err, archive.ErrSlotExists) {
		t.Fatalf("second create: %v", err)
	}
	up := func(u archive.SlotUpdate) archive.Slot {
		s, err := a.UpdateSlot(ctx, "dr1", u)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	up(archive.SlotUpdate{Position: "000000010000000000000005"})
	if s := up(archive.SlotUpdate{Position: "000000010000000000000003"}); s.Position != "000000010000000000000005" {
		t.Errorf("position moved backwards to %s", s.Position)
	}
	if s := up(archive.SlotUpdate{Position: "000000020000000000000006", Replayed: "000000020000000000000007"}); s.Position != "000000020000000000000006" || s.Replayed == "" {
		t.Errorf("position %s replayed %s", s.Position, s.Replayed)
	}
	if s := up(archive.SlotUpdate{Position: "000000010000000000000002", Reset: true}); s.Position != "000000010000000000000002" || s.Replayed != "" {
		t.Errorf("reset: %+v", s)
	}
	if _, err := a.UpdateSlot(ctx, "dr1", archive.SlotUpdate{Position: "%r"}); !errors.Is(err, archive.ErrBadSlot) {
		t.Errorf("bad position: %v", err)
	}
	if _, err := a.UpdateSlot(ctx, "nope", archive.SlotUpdate{}); !errors.Is(err, archive.ErrNoSlot) {
		t.Errorf("update of a missing slot: %v", err)
	}
	s, _ := a.GetSlot(ctx, "dr1")
	if s.Expired(s.Heartbeat.Add(59*time.Minute)) || !s.Expired(s.Heartbeat.Add(61*time.Minute)) {
		t.Error("TTL of one hour not honoured")
	}
	if _, err := a.CreateSlot(ctx, "dr2", time.Minute); err != nil {
		t.Fatal(err)
	}
	l, err := a.ListSlots(ctx)
	if err != nil || len(l) != 2 || l[0].Name != "dr1" || l[1].Name != "dr2" {
		t.Fatalf("list %+v %v", l, err)
	}
	if err := a.DropSlot(ctx, "dr1"); err != nil {
		t.Fatal(err)
	}
	if err := a.DropSlot(ctx, "dr1"); !errors.Is(err, archive.ErrNoSlot) {
		t.Errorf("second drop: %v", err)
	}
	// A dropped slot is not brought back by a late heartbeat.
	if _, err := a.UpdateSlot(ctx, "dr1", archive.SlotUpdate{}); !errors.Is(err, archive.ErrNoSlot) {
		t.Errorf("heartbeat after drop: %v", err)
	}
}

func TestSegmentAfter(t *testing.T) {
	for _, c := range []struct {
		x, y string
		want bool
	}{
		{"000000010000000000000005", "000000010000000000000004", true},
		{"000000010000000000000004", "000000010000000000000005", false},
		{"000000010000000100000000", "0000000100000000000000FF", true},
		{"000000020000000000000004", "000000010000000000000005", false},
		{"000000020000000000000005", "000000010000000000000005", true},
	} {
		if got := archive.SegmentAfter(c.x, c.y); got != c.want {
			t.Errorf("SegmentAfter(%s, %s) = %v", c.x, c.y, got)
		}
	}
}

func TestPushRecordsGaps(t *testing.T) {
	ctx := context.Background()
	store := memory.New()
	a := archive.New(store, quiet())
	dir := t.TempDir()
	for _, n := range []string{"000000010000000000000003", "000000010000000000000006", "000000010000000000000007"} {
		if _, err := a.Push(ctx, makeSegment(t, dir, n, sysID, nil), zstd); err != nil {
			t.Fatal(err)
		}
	}
	var keys []string
	_ = store.List(ctx, "gaps/", func(o backends.ObjectInfo) error { keys = append(keys, o.Key); return nil })
	if len(keys) != 1 || keys[0] != "gaps/00000001/000000010000000000000004.json" {
		t.Fatalf("gap records %v, want one for 4..5", keys)
	}
	rc, _, _ := store.Get(ctx, keys[0])
	var g archive.Gap
	_ = json.NewDecoder(rc).Decode(&g)
	rc.Close()
	if g.From != "000000010000000000000004" || g.To != "000000010000000000000005" || g.Before != "000000010000000000000006" {
		t.Fatalf("gap %+v", g)
	}
	// A middle segment deleted from the archive is found by the next push.
	if err := store.Delete(ctx, "wal/00000001/000000010000000000000007"); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Push(ctx, makeSegment(t, dir, "000000010000000000000008", sysID, nil), zstd); err != nil {
		t.Fatal(err)
	}
	if _, err := store.Stat(ctx, "gaps/00000001/000000010000000000000007.json"); err != nil {
		t.Fatalf("deleted segment 7 not recorded as a gap: %v", err)
	}
}
