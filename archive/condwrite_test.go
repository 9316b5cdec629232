package archive_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/walship/walship/archive"
	"github.com/walship/walship/backends"
	"github.com/walship/walship/backends/memory"
	"github.com/walship/walship/sealed"
)

// unconditional is a store that ignores the condition of PutIfAbsent, as
// a server that ignores If-None-Match does.
type unconditional struct {
	*memory.Storage
	puts atomic.Int32
}

func (u *unconditional) PutIfAbsent(ctx context.Context, key string, body io.ReadSeeker, size int64) error {
	u.puts.Add(1)
	return u.Storage.Put(ctx, key, body, size)
}

func identityOf(t *testing.T, s backends.Storage) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(get(t, s, archive.IdentityKey), &m); err != nil {
		t.Fatal(err)
	}
	return m
}

func TestProbeRecordsEnforcedInIdentity(t *testing.T) {
	store := memory.New()
	a := archive.New(store, quiet())
	if _, err := a.Push(context.Background(), makeSegment(t, t.TempDir(), "000000010000000000000003", sysID, nil), zstd); err != nil {
		t.Fatal(err)
	}
	if v, ok := identityOf(t, store)["conditional_writes"]; !ok || v != true {
		t.Fatalf("identity.json conditional_writes = %v (present %v), want true", v, ok)
	}
	assertNoProbeLeft(t, store)
}

func assertNoProbeLeft(t *testing.T, s backends.Storage) {
	t.Helper()
	_ = s.List(context.Background(), "probes/", func(o backends.ObjectInfo) error {
		t.Errorf("probe object left: %s", o.Key)
		return nil
	})
}

func TestUnenforcedStoreGetsCheckedPuts(t *testing.T) {
	ctx := context.Background()
	store := &unconditional{Storage: memory.New()}
	var logs bytes.Buffer
	a := archive.New(store, slog.New(slog.NewTextHandler(&logs, nil)))
	dir := t.TempDir()
	p := makeSegment(t, dir, "000000010000000000000003", sysID, nil)
	res, err := a.Push(ctx, p, zstd)
	if err != nil {
		t.Fatal(err)
	}
	if v := identityOf(t, store)["conditional_writes"]; v != false {
		t.Fatalf("identity.json conditional_writes = %v, want false", v)
	}
	if !strings.Contains(logs.String(), "does not enforce conditional writes") {
		t.Fatalf("no warning: %s", logs.String())
	}
	before := get(t, store, res.Key)

	// The same file again: accepted as already archived.
	if res, err := a.Push(ctx, p, zstd); err != nil || !res.AlreadyArchived {
		t.Fatalf("identical re-push: %+v, %v", res, err)
	}
	// A different file under the name: refused, and the archive keeps the
	// first, though the store would have let it through.
	makeSegment(t, dir, "000000010000000000000003", sysID, func(b []byte) { b[5000] ^= 1 })
	if _, err := a.Push(ctx, p, zstd); !errors.Is(err, archive.ErrConflict) {
		t.Fatalf("different content: %v, want ErrConflict", err)
	}
	if !bytes.Equal(before, get(t, store, res.Key)) {
		t.Fatal("a different file replaced the archived one")
	}

	// A new process on the same archive knows from the identity, and warns.
	logs.Reset()
	b := archive.New(store, slog.New(slog.NewTextHandler(&logs, nil)))
	if _, err := b.Identity(ctx); err != nil {
		t.Fatal(err)
	}
	if enforced, err := b.ConditionalWrites(ctx); err != nil || enforced {
		t.Fatalf("ConditionalWrites = %v, %v", enforced, err)
	}
	if strings.Count(logs.String(), "does not enforce") != 1 {
		t.Fatalf("want one warning, got: %s", logs.String())
	}
	assertNoProbeLeft(t, store)
}

func TestOldIdentityIsProbedAndAnsweredBeside(t *testing.T) {
	ctx := context.Background()
	store := &unconditional{Storage: memory.New()}
	// identity.json as walship wrote it before the probe existed.
	old := []byte(`{"format":1,"system_identifier":"7300000000000000001","pg_version":"15","segment_size":1048576,` +
		`"wal_block_size":8192,"created":"2024-01-01T00:00:00Z"}` + "\n")
	if err := store.Storage.Put(ctx, archive.IdentityKey, bytes.NewReader(old), int64(len(old))); err != nil {
		t.Fatal(err)
	}
	a := archive.New(store, quiet())
	dir := t.TempDir()
	if _, err := a.Push(ctx, makeSegment(t, dir, "000000010000000000000003", sysID, nil), zstd); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(get(t, store, archive.IdentityKey), old) {
		t.Fatal("identity.json was rewritten")
	}
	var rec struct {
		Format   int  `json:"format"`
		Enforced bool `json:"enforced"`
	}
	if err := json.Unmarshal(get(t, store, archive.CondWritesKey), &rec); err != nil || rec.Format != 1 || rec.Enforced {
		t.Fatalf("%s: %+v, %v", archive.CondWritesKey, rec, err)
	}
	// A later process reads the answer instead of probing again.
	puts := store.puts.Load()
	b := archive.New(store, quiet())
	if enforced, err := b.ConditionalWrites(ctx); err != nil || enforced || store.puts.Load() != puts {
		t.Fatalf("second process: %v, %v, %d probe writes", enforced, err, store.puts.Load()-puts)
	}
	makeSegment(t, dir, "000000010000000000000003", sysID, func(x []byte) { x[5000] ^= 1 })
	if _, err := b.Push(ctx, dir+"/000000010000000000000003", sealed.Compression{Codec: sealed.CodecZstd}); !errors.Is(err, archive.ErrConflict) {
		t.Fatalf("different content on an old unenforcing archive: %v", err)
	}
}
