package archive

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/walship/walship/backends"
	"github.com/walship/walship/backends/retry"
	"github.com/walship/walship/sealed"
)

// Conditional writes. PutIfAbsent relies on the store refusing a write to
// an existing key (S3: If-None-Match: *). Older Ceph RGW and several hosted
// S3-compatible servers ignore that header, and a different file would then
// silently replace an archived one. So walship probes once per archive
// whether the store enforces it, records the answer with the identity (the
// conditional_writes field of identity.json; for archives whose identity
// predates the probe, in conditional-writes.json beside it), and where the
// store does not enforce it every PutIfAbsent becomes a checked put:
//
//  1. GET the key: present is ErrExists, which callers resolve as always
//     (an identical file is fine, a different one a conflict); a GET, not a
//     HEAD, because only S3's own NoSuchKey says "absent";
//  2. PUT the object;
//  3. read it back and compare size and SHA-256 with what was sent:
//     anything else is ErrExists (another writer got there in between).
//
// The residual race: two writers of one key with different content that
// both pass step 1 before either PUT lands can both read back their own
// object and both succeed; the later PUT is what stays. No check by a
// client can close that window; only the server's condition can. A warning
// says so at the start of every command that reads such an archive's
// identity.

// CondWritesKey is where the probe's answer is kept for an archive whose
// identity.json has no conditional_writes field.
const CondWritesKey = "conditional-writes.json"

// probePrefix holds the probe's short-lived objects.
const probePrefix = "probes/"

// condRecord is the content of CondWritesKey.
type condRecord struct {
	Format   int       `json:"format"`
	Enforced bool      `json:"enforced"`
	Probed   time.Time `json:"probed"`
}

// guarded is the archive's view of its store: PutIfAbsent is conditional
// where the store enforces that, and a checked put where it does not.
type guarded struct {
	backends.Storage
	a *Archive
}

// Unwrap is the store underneath (for backends/retry.Do).
func (g *guarded) Unwrap() backends.Storage { return g.Storage }

func (g *guarded) PutIfAbsent(ctx context.Context, key string, body io.ReadSeeker, size int64) error {
	enforced, err := g.a.conditionalWrites(ctx)
	if err != nil {
		return fmt.Errorf("put %s: %w", key, err)
	}
	if enforced {
		return g.Storage.PutIfAbsent(ctx, key, body, size)
	}
	return checkedPut(ctx, g.Storage, key, body, size)
}

// ConditionalWrites reports whether the archive's store enforces
// conditional writes, probing it (once) if nobody has yet.
func (a *Archive) ConditionalWrites(ctx context.Context) (bool, error) {
	return a.conditionalWrites(ctx)
}

func (a *Archive) conditionalWrites(ctx context.Context) (bool, error) {
	if c := a.cond.Load(); c != nil {
		return *c, nil
	}
	a.condMu.Lock()
	defer a.condMu.Unlock()
	if c := a.cond.Load(); c != nil {
		return *c, nil
	}
	// Reading the identity learns the answer if it is recorded, in
	// identity.json or beside it.
	if _, err := a.Identity(ctx); err != nil && !errors.Is(err, ErrNoIdentity) {
		return false, err
	}
	if c := a.cond.Load(); c != nil {
		return *c, nil
	}
	enforced, err := a.probe(ctx)
	if err != nil {
		return false, err
	}
	rec, _ := json.MarshalIndent(condRecord{Format: 1, Enforced: enforced, Probed: a.now().UTC()}, "", "  ")
	rec = append(rec, '\n')
	if err := a.raw().Put(ctx, CondWritesKey, bytes.NewReader(rec), int64(len(rec))); err != nil {
		return false, fmt.Errorf("record the conditional-write probe: %w", err)
	}
	return enforced, nil
}

// readCondRecord reads CondWritesKey; known is false if there is none.
func (a *Archive) readCondRecord(ctx context.Context) (enforced, known bool, err error) {
	b, _, err := retry.ReadAll(ctx, a.raw(), CondWritesKey, 1<<16)
	if errors.Is(err, backends.ErrNotFound) {
		return false, false, nil
	}
	if err != nil {
		return false, false, fmt.Errorf("read %s: %w", CondWritesKey, err)
	}
	var rec condRecord
	if err := json.Unmarshal(b, &rec); err != nil || rec.Format != 1 {
		// Unreadable: probe again rather than trust it.
		return false, false, nil //nolint:nilerr // an unreadable record is as good as none: probe again
	}
	return rec.Enforced, true, nil
}

// setCond records the answer and warns, once, where writes are unguarded.
func (a *Archive) setCond(enforced bool) {
	a.cond.Store(&enforced)
	if !enforced {
		a.warnOnce.Do(func() {
			a.log.Warn("this archive's storage does not enforce conditional writes (If-None-Match): walship checks "+
				"before and after each new object instead, which cannot exclude two writers of one name racing; "+
				"use storage that enforces them", "archive", a.store.String())
		})
	}
}

// probe writes a fresh key twice with PutIfAbsent: a store that enforces
// the condition refuses the second.
func (a *Archive) probe(ctx context.Context) (bool, error) {
	var r [8]byte
	_, _ = rand.Read(r[:])
	key := probePrefix + "conditional-write-" + hex.EncodeToString(r[:])
	store := a.raw()
	defer func() {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		_ = store.Delete(dctx, key)
	}()
	// ErrExists for a key nobody else knows is an earlier try of ours
	// that stored it: the write happened.
	if err := store.PutIfAbsent(ctx, key, bytes.NewReader([]byte("1")), 1); err != nil && !errors.Is(err, backends.ErrExists) {
		return false, fmt.Errorf("probe whether the storage enforces conditional writes: %w", err)
	}
	err := store.PutIfAbsent(ctx, key, bytes.NewReader([]byte("2")), 1)
	switch {
	case errors.Is(err, backends.ErrExists):
		a.setCond(true)
		return true, nil
	case err != nil:
		return false, fmt.Errorf("probe whether the storage enforces conditional writes: %w", err)
	}
	a.setCond(false)
	return false, nil
}

// checkedPut is PutIfAbsent for a store that does not enforce the
// condition (see the comment at the top of this file).
func checkedPut(ctx context.Context, store backends.Storage, key string, body io.ReadSeeker, size int64) error {
	rc, _, err := store.Get(ctx, key)
	if err == nil {
		rc.Close()
		return fmt.Errorf("checked put %s: %w", key, backends.ErrExists)
	}
	if !errors.Is(err, backends.ErrNotFound) {
		return fmt.Errorf("checked put %s: is it there: %w", key, err)
	}
	want, err := hashReader(body, size)
	if err != nil {
		return backends.Permanent(fmt.Errorf("checked put %s: %w", key, err))
	}
	if err := store.Put(ctx, key, body, size); err != nil {
		return err
	}
	var got [sha256.Size]byte
	var n int64
	_, err = retry.Do(ctx, store, 0, nil, func(ctx context.Context) error {
		rc, _, err := store.Get(ctx, key)
		if err != nil {
			return err
		}
		defer rc.Close()
		h := sha256.New()
		if n, err = io.Copy(h, rc); err != nil {
			return err
		}
		copy(got[:], h.Sum(nil))
		return nil
	})
	if err != nil {
		return fmt.Errorf("checked put %s: read back: %w", key, err)
	}
	if n != size || got != want {
		return fmt.Errorf("checked put %s: %w: another writer stored a different object under the name at the same moment",
			key, backends.ErrExists)
	}
	return nil
}

func hashReader(body io.ReadSeeker, size int64) ([sha256.Size]byte, error) {
	var sum [sha256.Size]byte
	if _, err := body.Seek(0, io.SeekStart); err != nil {
		return sum, err
	}
	h := sha256.New()
	n, err := io.Copy(h, io.LimitReader(body, size+1))
	if err != nil {
		return sum, err
	}
	if n != size {
		return sum, fmt.Errorf("body has %d bytes, expected %d", n, size)
	}
	copy(sum[:], h.Sum(nil))
	return sum, nil
}

// readArchivedHeader reads the sealed header of an archived object, retried
// under the storage's policy. A transfer that fails is an error (err); a
// header that reads whole but is damaged is unreadable, and only once it
// was so on every try, so that a byte flipped in transit does not pass for
// a different file.
func (a *Archive) readArchivedHeader(ctx context.Context, key string) (have sealed.Header, unreadable, err error) {
	_, err = retry.Do(ctx, a.store, 0, nil, func(ctx context.Context) error {
		unreadable = nil
		rc, _, err := a.store.Get(ctx, key)
		if err != nil {
			return err
		}
		defer rc.Close()
		tr := &transferReader{r: rc}
		have, err = sealed.ReadHeader(tr)
		switch {
		case tr.err != nil:
			return tr.err
		case err != nil:
			unreadable = err
			return err
		}
		return nil
	})
	return have, unreadable, err
}

// transferReader keeps the first failure of the reader underneath, which
// is the transfer's (a short object ends with io.EOF, not an error).
type transferReader struct {
	r   io.Reader
	err error
}

func (t *transferReader) Read(p []byte) (int, error) {
	n, err := t.r.Read(p)
	if err != nil && err != io.EOF && t.err == nil {
		t.err = err
	}
	return n, err
}
