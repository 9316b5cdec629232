// Package verify proves an archive whole: every object's checksum (or,
// quick, its presence), the continuity of WAL from each backup's start to
// the head through the timeline history, the history files recovery needs
// to reach every archived timeline, and each backup's manifest against its
// chunks.
package verify

import (
	"context"
	"encoding/hex"
	"fmt"
	"io"
	"sort"
	"strings"
	"sync"

	"github.com/walship/walship/archive"
	"github.com/walship/walship/backends"
	"github.com/walship/walship/manifest"
	"github.com/walship/walship/restore"
	"github.com/walship/walship/sealed"
	"github.com/walship/walship/segment"
)

// Problem is one thing wrong with the archive.
type Problem struct {
	Kind   string `json:"kind"` // gap, history, missing, size, checksum, unreadable
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
// its work (a listing fails); what it finds wrong is in the report.
func Run(ctx context.Context, a *archive.Archive, o Options) (*Report, error) {
	if o.Parallel <= 0 {
		o.Parallel = 4
	}
	r := &Report{Quick: o.Quick, Problems: []Problem{}}
	inv, err := restore.LoadInventory(ctx, a)
	if err != nil {
		return nil, err
	}
	store := a.Storage()
	sizes := map[string]int64{}
	var keys []string
	for _, prefix := range []string{"wal/", "history/", manifest.Prefix} {
		err := store.List(ctx, prefix, func(oi backends.ObjectInfo) error {
			sizes[oi.Key] = oi.Size
			keys = append(keys, oi.Key)
			r.Bytes += oi.Size
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("list %s: %w", prefix, err)
		}
	}
	r.Objects = len(keys)
	r.Backups = len(inv.Backups)
	want := map[string]string{} // chunk key -> SHA-256 the manifest names
	for _, b := range inv.Backups {
		chunks := []manifest.Chunk{b.ServerManifest}
		for _, ar := range b.Archives {
			chunks = append(chunks, ar.Chunks...)
		}
		for _, c := range chunks {
			size, ok := sizes[c.Key]
			switch {
			case !ok:
				r.add("missing", c.Key, "backup "+b.ID+" names this chunk, the archive does not have it")
			case size != c.StoredSize:
				r.add("size", c.Key, fmt.Sprintf("backup %s says %d bytes, the archive holds %d", b.ID, c.StoredSize, size))
			default:
				want[c.Key] = c.SHA256
			}
		}
		missing, gap, last, err := inv.MissingWAL(b)
		switch {
		case err != nil:
			r.add("gap", "", fmt.Sprintf("backup %s: %v", b.ID, err))
		case gap:
			r.add("gap", archive.SegmentKey(missing, inv.SegSize), fmt.Sprintf("backup %s cannot be replayed to %s: %s is missing",
				b.ID, last.String(inv.SegSize), missing.String(inv.SegSize)))
		}
	}
	timelineGaps(inv, r)
	if err := historyProblems(ctx, a, inv, r); err != nil {
		return nil, err
	}
	if !o.Quick {
		checksums(ctx, store, keys, want, o.Parallel, r)
	}
	sort.SliceStable(r.Problems, func(i, j int) bool { return r.Problems[i].Key < r.Problems[j].Key })
	return r, nil
}

// historyProblems reports the history files recovery from the archive's
// backups and slots needs and the archive lacks.
func historyProblems(ctx context.Context, a *archive.Archive, inv *restore.Inventory, r *Report) error {
	slots, err := a.ListSlots(ctx)
	if err != nil {
		return err
	}
	starts, have, hist := map[uint32]bool{}, map[uint32]bool{}, map[uint32]bool{}
	for tli := range inv.WAL {
		have[tli] = true
	}
	for _, b := range inv.Backups {
		starts[b.Timeline], have[b.StopTimeline] = true, true
	}
	for _, s := range slots {
		if n, err := segment.ParseName(s.Position, inv.SegSize); err == nil {
			starts[n.TLI] = true
		}
	}
	for tli := range inv.History {
		hist[tli] = true
	}
	for _, p := range MissingHistory(starts, have, hist) {
		r.add(p.Kind, p.Key, p.Detail)
	}
	return nil
}

func (r *Report) add(kind, key, detail string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.Problems = append(r.Problems, Problem{Kind: kind, Key: key, Detail: detail})
}

// timelineGaps reports holes between a timeline's first and last archived
// segment, wherever backups are.
func timelineGaps(inv *restore.Inventory, r *Report) {
	for tli, segs := range inv.WAL {
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
				name := func(x uint64) string { return segment.Name{TLI: tli, SegNo: x}.String(inv.SegSize) }
				r.add("gap", archive.SegmentKey(segment.Name{TLI: tli, SegNo: first}, inv.SegSize),
					fmt.Sprintf("timeline %d: %s to %s are missing", tli, name(first), name(n)))
			}
		}
	}
}

// MissingHistory finds the history files recovery needs and the archive
// lacks. starts are the timelines a restore or a follower starts from (the
// backups' start timelines, the slots' positions), have the timelines the
// archive holds WAL or backups of, history those it has history files of.
// Recovery moves onto timeline N only through N's history file, and
// PostgreSQL finds the latest timeline by probing history files one after
// another from its own timeline up, stopping at the first missing one. So
// from the lowest start to the highest timeline the archive knows, every
// history file must be there; otherwise a restore or a follower silently
// stays on an older timeline. An archive whose backups and slots are all
// on its newest timeline needs none (a copy promoted with archiving off
// starts such an archive, perhaps with a stray segment of its old
// timeline).
func MissingHistory(starts, have, history map[uint32]bool) []Problem {
	low, high := uint32(0), uint32(0)
	for tli := range starts {
		if low == 0 || tli < low {
			low = tli
		}
	}
	if low == 0 {
		return nil
	}
	for _, set := range []map[uint32]bool{starts, have, history} {
		for tli := range set {
			high = max(high, tli)
		}
	}
	var out []Problem
	for tli := low + 1; tli <= high && tli-low <= 1<<16; tli++ {
		if history[tli] {
			continue
		}
		f := segment.File{Kind: segment.KindHistory, TLI: tli}
		var detail string
		if have[tli] || starts[tli] {
			detail = fmt.Sprintf("timeline %d has WAL or backups in the archive but no history file %s: a restore or follower starting on timeline %d (a backup or slot is there) "+
				"cannot reach it and silently stays on an older timeline; push it from the server's pg_wal (walship push pg_wal/%s)", tli, f, low, f)
		} else {
			detail = fmt.Sprintf("timeline %d has no history file %s: PostgreSQL looking for the latest timeline from timeline %d stops there and never reaches timeline %d; "+
				"push it from the server's pg_wal (walship push pg_wal/%s)", tli, f, low, high, f)
		}
		out = append(out, Problem{Kind: "history", Key: archive.Key(f), Detail: detail})
	}
	return out
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
				if err := checkObject(ctx, store, k, want[k]); err != nil {
					kind := "checksum"
					if !strings.Contains(err.Error(), "checksum") && !strings.Contains(err.Error(), "manifest") {
						kind = "unreadable"
					}
					r.add(kind, k, err.Error())
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
