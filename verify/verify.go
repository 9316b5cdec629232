// Package verify proves an archive whole: every object's checksum (or,
// quick, its presence), the continuity of WAL from each backup's start to
// the head through the timeline history, the history files recovery needs
// to reach every archived timeline, each backup's manifest against its
// chunks, and each incremental backup's chain back to a full backup. It
// reads the archive through package catalog.
package verify

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"sync"

	"github.com/walship/walship/archive"
	"github.com/walship/walship/backends"
	"github.com/walship/walship/catalog"
	"github.com/walship/walship/manifest"
	"github.com/walship/walship/sealed"
	"github.com/walship/walship/segment"
)

// Problem is one thing wrong with the archive.
type Problem struct {
	Kind   string `json:"kind"` // gap, history, chain, missing, size, checksum, unreadable
	Key    string `json:"key,omitempty"`
	Detail string `json:"detail"`
}

// Report is what verify found.
type Report struct {
	Quick    bool      `json:"quick"`
	Objects  int       `json:"objects"`
	Bytes    int64     `json:"bytes"`
	Checked  int       `json:"checksummed"`
	Backups  int       `json:"backups"`
	Problems []Problem `json:"problems"`
	mu       sync.Mutex
}

// Options for Run.
type Options struct {
	Quick    bool // presence and continuity only, no object read
	Parallel int  // objects read at once; default 4
}

// Run verifies the archive. It returns an error only when it cannot do
// its work (the listing or a record it needs fails, or ctx ends: a report
// cut short is never returned as if whole); what it finds wrong is in the
// report.
func Run(ctx context.Context, a *archive.Archive, o Options) (*Report, error) {
	if o.Parallel <= 0 {
		o.Parallel = 4
	}
	r := &Report{Quick: o.Quick, Problems: []Problem{}}
	c, err := catalog.Load(ctx, a, catalog.Backups|catalog.Histories|catalog.Slots)
	if err != nil {
		return nil, err
	}
	sizes := map[string]int64{}
	var keys []string
	for _, obj := range c.DataObjects() {
		sizes[obj.Key] = obj.Size
		keys = append(keys, obj.Key)
		r.Bytes += obj.Size
	}
	r.Objects = len(keys)
	r.Backups = len(c.Backups)
	want := map[string]string{} // chunk key -> SHA-256 the manifest names
	for _, b := range c.Backups {
		backupProblems(c, b, sizes, want, r)
	}
	timelineGaps(c, r)
	for _, p := range c.MissingHistories() {
		r.add("history", p.Key, p.Detail)
	}
	if !o.Quick {
		checksums(ctx, a.Storage(), keys, want, o.Parallel, r)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("verify cut short after %d of %d objects: %w", r.Checked, r.Objects, context.Cause(ctx))
	}
	sort.SliceStable(r.Problems, func(i, j int) bool { return r.Problems[i].Key < r.Problems[j].Key })
	return r, nil
}

// backupProblems checks one backup's chunks against the listing and its
// WAL against the archive, and notes the SHA-256 each chunk must have.
func backupProblems(c *catalog.Catalog, b *manifest.Manifest, sizes map[string]int64, want map[string]string, r *Report) {
	chunks := []manifest.Chunk{b.ServerManifest}
	for _, ar := range b.Archives {
		chunks = append(chunks, ar.Chunks...)
	}
	for _, ch := range chunks {
		size, ok := sizes[ch.Key]
		switch {
		case !ok:
			r.add("missing", ch.Key, "backup "+b.ID+" names this chunk, the archive does not have it")
		case size != ch.StoredSize:
			r.add("size", ch.Key, fmt.Sprintf("backup %s says %d bytes, the archive holds %d", b.ID, ch.StoredSize, size))
		default:
			want[ch.Key] = ch.SHA256
		}
	}
	if _, err := c.Chain(b); err != nil {
		r.add("chain", manifest.Key(b.ID), err.Error())
	}
	missing, gap, last, err := c.MissingWAL(b)
	switch {
	case err != nil:
		r.add("gap", "", fmt.Sprintf("backup %s: %v", b.ID, err))
	case gap:
		r.add("gap", archive.SegmentKey(missing, c.SegSize), fmt.Sprintf("backup %s cannot be replayed to %s: %s is missing",
			b.ID, last.String(c.SegSize), missing.String(c.SegSize)))
	}
}

// Err is nil for a report without problems, and otherwise says how many
// there are and what the first is.
func (r *Report) Err() error {
	if len(r.Problems) == 0 {
		return nil
	}
	return fmt.Errorf("verify: %d problem(s), first: %s", len(r.Problems), r.Problems[0].Detail)
}

func (r *Report) add(kind, key, detail string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.Problems = append(r.Problems, Problem{Kind: kind, Key: key, Detail: detail})
}

// timelineGaps reports holes between a timeline's first and last archived
// segment, wherever backups are.
func timelineGaps(c *catalog.Catalog, r *Report) {
	for tli, segs := range c.WAL {
		lo, hi := uint64(1<<63), uint64(0)
		for n := range segs {
			lo, hi = min(lo, n), max(hi, n)
		}
		for n := lo; n <= hi && hi-lo < 1<<24; n++ {
			if _, ok := segs[n]; !ok {
				first := n
				for n+1 <= hi {
					if _, ok := segs[n+1]; ok {
						break
					}
					n++
				}
				name := func(x uint64) string { return segment.Name{TLI: tli, SegNo: x}.String(c.SegSize) }
				r.add("gap", archive.SegmentKey(segment.Name{TLI: tli, SegNo: first}, c.SegSize),
					fmt.Sprintf("timeline %d: %s to %s are missing", tli, name(first), name(n)))
			}
		}
	}
}

// checksums reads every object through the sealed format's checks, and
// backup chunks against their manifest's SHA-256 too.
func checksums(ctx context.Context, store backends.Storage, keys []string, want map[string]string, parallel int, r *Report) {
	work := make(chan string)
	var wg sync.WaitGroup
	for range parallel {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := range work {
				if strings.HasSuffix(k, "/manifest.json") || strings.HasSuffix(k, "/"+archive.LeaseName) {
					continue // parsed when the backups were listed; a running backup's lease
				}
				err := checkObject(ctx, store, k, want[k])
				switch {
				case err == nil:
				case ctx.Err() != nil:
					continue // cut short: Run reports that, not a problem with k
				case errors.Is(err, sealed.ErrChecksum), errors.Is(err, sealed.ErrNotSealed):
					r.add("checksum", k, err.Error())
				case errors.Is(err, backends.ErrNotFound):
					r.add("missing", k, "listed, then gone when read: "+err.Error())
				default:
					r.add("unreadable", k, err.Error())
				}
				r.mu.Lock()
				r.Checked++
				r.mu.Unlock()
			}
		}()
	}
	for _, k := range keys {
		select {
		case work <- k:
		case <-ctx.Done():
		}
	}
	close(work)
	wg.Wait()
}

func checkObject(ctx context.Context, store backends.Storage, key, sha string) error {
	rc, _, err := store.Get(ctx, key)
	if err != nil {
		return err
	}
	defer rc.Close()
	sr, err := sealed.NewReader(rc)
	if err != nil {
		return err
	}
	defer sr.Close()
	h := sr.Header()
	if sha != "" && hex.EncodeToString(h.SHA256[:]) != sha {
		return fmt.Errorf("not the chunk its backup manifest names: %w", sealed.ErrChecksum)
	}
	_, err = io.Copy(io.Discard, sr)
	return err
}
