// Command benchfill writes a synthetic archive for the benchmark scripts
// (scripts/bench-archive.sh, scripts/bench-list.sh) without PostgreSQL: an
// identity (1 MiB segments), N sealed segments spread over -timelines
// timelines (switching at segment boundaries, each with its history file
// and head), -backups small base backups (at 1%, 50%, 90%, ... of the WAL)
// and -slots slots. Only for benchmarks: the segments are synthetic, the
// backups hold one chunk.
package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/walship/walship/archive"
	"github.com/walship/walship/backends"
	"github.com/walship/walship/backends/fs"
	"github.com/walship/walship/backends/s3"
	"github.com/walship/walship/manifest"
	"github.com/walship/walship/sealed"
	"github.com/walship/walship/segment"
)

const (
	segSize = 1 << 20
	sysID   = 7400000000000000001
)

// backupAt places the backups, as fractions of the WAL.
var backupAt = []float64{0.01, 0.5, 0.9, 0.95, 0.99}

type filler struct {
	ctx       context.Context //nolint:containedctx // a one-shot command: main's context for its whole life
	store     backends.Storage
	n         uint64 // segments
	timelines uint32
}

func main() {
	dir := flag.String("fs", "", "filesystem archive root")
	bucket := flag.String("s3-bucket", "", "S3 bucket (endpoint from WALSHIP_S3_ENDPOINT)")
	n := flag.Int("segments", 10000, "segments to write")
	timelines := flag.Int("timelines", 1, "timelines the segments are spread over (1 to 16)")
	backups := flag.Int("backups", 2, fmt.Sprintf("base backups to write (0 to %d)", len(backupAt)))
	slots := flag.Int("slots", 0, "slots to write")
	flag.Parse()
	if *n < *timelines || *timelines < 1 || *timelines > 16 || *backups < 0 || *backups > len(backupAt) || *slots < 0 {
		fatal(fmt.Errorf("want 1 <= -timelines <= 16, -timelines <= -segments, 0 <= -backups <= %d, -slots >= 0", len(backupAt)))
	}
	ctx := context.Background()
	store, err := open(ctx, *dir, *bucket)
	if err != nil {
		fatal(err)
	}
	f := &filler{ctx: ctx, store: store, n: uint64(*n), timelines: uint32(*timelines)}
	a := archive.New(store, slog.New(slog.DiscardHandler))
	if _, err := a.ClaimIdentity(ctx, archive.Identity{SystemIdentifier: sysID, PGVersion: "15", SegmentSize: segSize}); err != nil {
		fatal(err)
	}
	f.segments()
	f.timelineRecords()
	for i := range *backups {
		f.backup(i, uint64(float64(f.n)*backupAt[i]))
	}
	for i := range *slots {
		f.slot(i)
	}
	fmt.Printf("wrote %d segments on %d timeline(s), %d backups and %d slots\n", *n, *timelines, *backups, *slots)
}

func open(ctx context.Context, dir, bucket string) (backends.Storage, error) {
	if dir != "" {
		return fs.New(dir)
	}
	st, err := s3.New(ctx, s3.Config{Bucket: bucket, Endpoint: os.Getenv("WALSHIP_S3_ENDPOINT"), PathStyle: true})
	if err != nil {
		return nil, err
	}
	return st, st.CreateBucket(ctx)
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "benchfill:", err)
	os.Exit(1)
}

func (f *filler) put(key string, b []byte) {
	if err := f.store.Put(f.ctx, key, bytes.NewReader(b), int64(len(b))); err != nil {
		fatal(err)
	}
}

// first is the first segment of timeline tli (1-based); timeline t holds
// first(t) to first(t+1)-1, the last one up to n.
func (f *filler) first(tli uint32) uint64 {
	return 1 + uint64(tli-1)*f.n/uint64(f.timelines)
}

// tli is the timeline holding segment no.
func (f *filler) tli(no uint64) uint32 {
	t := uint32(1)
	for t < f.timelines && f.first(t+1) <= no {
		t++
	}
	return t
}

// segments writes segments 1..n, 16 at a time.
func (f *filler) segments() {
	jobs := make(chan uint64)
	var wg sync.WaitGroup
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			raw := make([]byte, segSize)
			for no := range jobs {
				tli := f.tli(no)
				le := binary.LittleEndian
				le.PutUint16(raw[0:], 0xD110)
				le.PutUint16(raw[2:], 2)
				le.PutUint32(raw[4:], tli)
				le.PutUint64(raw[8:], no*segSize)
				le.PutUint64(raw[24:], sysID)
				le.PutUint32(raw[32:], segSize)
				le.PutUint32(raw[36:], 8192)
				le.PutUint64(raw[4096:], no)
				s, err := sealed.Seal(raw, sealed.Compression{Codec: sealed.CodecZstd})
				if err != nil {
					fatal(err)
				}
				f.put(archive.SegmentKey(segment.Name{TLI: tli, SegNo: no}, segSize), s.Bytes())
			}
		}()
	}
	for no := uint64(1); no <= f.n; no++ {
		jobs <- no
	}
	close(jobs)
	wg.Wait()
}

// timelineRecords writes each timeline's head and, from timeline 2 on,
// its history file: timeline t+1 branched from t where t's segments end.
func (f *filler) timelineRecords() {
	var history strings.Builder
	for t := uint32(1); t <= f.timelines; t++ {
		last := f.n
		if t < f.timelines {
			last = f.first(t+1) - 1
		}
		head, _ := json.Marshal(archive.Head{Timeline: t, Segment: segment.Name{TLI: t, SegNo: last}.String(segSize), Pushed: time.Now().UTC()})
		f.put(archive.HeadKey(t), head)
		if t == 1 {
			continue
		}
		fmt.Fprintf(&history, "%d\t%s\tno recovery target specified\n", t-1, segment.LSN(f.first(t)*segSize))
		s, err := sealed.Seal([]byte(history.String()), sealed.Compression{Codec: sealed.CodecZstd})
		if err != nil {
			fatal(err)
		}
		f.put(archive.Key(segment.File{Kind: segment.KindHistory, TLI: t}), s.Bytes())
	}
}

// backup writes backup i, started in segment at: its one chunk, its
// server manifest and its manifest.
func (f *filler) backup(i int, at uint64) {
	at = max(at, 1)
	tli := f.tli(at)
	id := time.Date(2026, 11, 20+i, 0, 0, 0, 0, time.UTC).Format("20060102T150405Z")
	chunk, _ := sealed.Seal([]byte("a tar stream"), sealed.Compression{Codec: sealed.CodecZstd})
	sm, _ := sealed.Seal([]byte("{}"), sealed.Compression{Codec: sealed.CodecZstd})
	start := segment.LSN(at*segSize + 0x28)
	stopped := time.Now().Add(time.Duration(i-len(backupAt)) * time.Hour)
	m := manifest.Manifest{Format: manifest.Format, ID: id, PGVersion: "15", SystemIdentifier: sysID, SegmentSize: segSize,
		Timeline: tli, StopTimeline: tli, StartLSN: start, StopLSN: start + 0x100,
		StartTime: stopped, StopTime: stopped,
		WALRanges: []manifest.WALRange{{Timeline: tli, Start: start, End: start + 0x100}},
		Size:      12, StoredSize: chunk.Size(),
		Archives: []manifest.Archive{{Name: "base.tar", Size: 12, StoredSize: chunk.Size(), Chunks: []manifest.Chunk{{Key: manifest.Prefix + id + "/base.tar.00000",
			Size: 12, StoredSize: chunk.Size(), SHA256: hex.EncodeToString(chunk.Header.SHA256[:])}}}},
		ServerManifest: manifest.Chunk{Key: manifest.ServerKey(id), Size: 2, StoredSize: sm.Size(), SHA256: hex.EncodeToString(sm.Header.SHA256[:])}}
	f.put(m.Archives[0].Chunks[0].Key, chunk.Bytes())
	f.put(m.ServerManifest.Key, sm.Bytes())
	b, _ := json.Marshal(m)
	f.put(manifest.Key(id), b)
}

// slot writes slot i, alive, its position 100 segments behind the head.
func (f *filler) slot(i int) {
	now := time.Now().UTC()
	no := max(f.n-100*uint64(i+1), 1)
	s := archive.Slot{Name: fmt.Sprintf("follower_%d", i+1), Position: segment.Name{TLI: f.tli(no), SegNo: no}.String(segSize),
		TTL: archive.Duration(archive.DefaultSlotTTL), Created: now, Heartbeat: now}
	b, _ := json.MarshalIndent(s, "", "  ")
	f.put(archive.SlotKey(s.Name), b)
}
