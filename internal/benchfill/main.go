// Command benchfill writes a synthetic archive for scripts/bench-archive.sh:
// an identity (1 MiB segments), N sealed segments on timeline 1, their
// head, and two small base backups (at 1% and 50% of the WAL). Only for
// benchmarks: the segments are synthetic, the backups hold one chunk.
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
	"sync"
	"time"

	"github.com/walship/walship/archive"
	"github.com/walship/walship/backends"
	"github.com/walship/walship/backends/fs"
	"github.com/walship/walship/backends/s3"
	"github.com/walship/walship/internal/testenv"
	"github.com/walship/walship/manifest"
	"github.com/walship/walship/sealed"
	"github.com/walship/walship/segment"
)

const segSize = 1 << 20

const sys = 7400000000000000001

func main() {
	dir := flag.String("fs", "", "filesystem archive root")
	bucket := flag.String("s3-bucket", "", "S3 bucket (endpoint from WALSHIP_S3_ENDPOINT)")
	n := flag.Int("segments", 10000, "segments to write")
	flag.Parse()
	ctx := context.Background()
	store, err := openStore(ctx, *dir, *bucket)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	a := archive.New(store, slog.New(slog.DiscardHandler))
	if _, err := a.ClaimIdentity(ctx, archive.Identity{SystemIdentifier: sys, PGVersion: "15", SegmentSize: segSize}); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	put := func(key string, b []byte) {
		if err := store.Put(ctx, key, bytes.NewReader(b), int64(len(b))); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
	}
	writeSegments(put, *n)
	head, _ := json.Marshal(archive.Head{Timeline: 1, Segment: segment.Name{TLI: 1, SegNo: uint64(*n)}.String(segSize), Pushed: time.Now().UTC()})
	put(archive.HeadKey(1), head)
	for i, at := range []int{*n / 100, *n / 2} {
		writeBackup(put, time.Date(2026, 11, 20+i, 0, 0, 0, 0, time.UTC).Format("20060102T150405Z"), at)
	}
	fmt.Printf("wrote %d segments and 2 backups\n", *n)
}

// openStore opens the filesystem archive at dir, or else the S3 bucket,
// which it creates.
func openStore(ctx context.Context, dir, bucket string) (backends.Storage, error) {
	if dir != "" {
		return fs.New(dir)
	}
	st, err := s3.New(ctx, s3.Config{Bucket: bucket, Endpoint: os.Getenv("WALSHIP_S3_ENDPOINT"), PathStyle: true})
	if err == nil {
		err = st.CreateBucket(ctx)
	}
	return st, err
}

// writeSegments writes n sealed synthetic segments of timeline 1, 16 at
// once.
func writeSegments(put func(string, []byte), n int) {
	jobs := make(chan int)
	var wg sync.WaitGroup
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			raw := make([]byte, segSize)
			for i := range jobs {
				no := uint64(i + 1)
				testenv.PutLongHeader(raw, 1, no, sys)
				binary.LittleEndian.PutUint64(raw[4096:], no)
				sealed, err := sealed.Seal(raw, sealed.Compression{Codec: sealed.CodecZstd})
				if err != nil {
					panic(err)
				}
				put(archive.SegmentKey(segment.Name{TLI: 1, SegNo: no}, segSize), sealed.Bytes())
			}
		}()
	}
	for i := range n {
		jobs <- i
	}
	close(jobs)
	wg.Wait()
}

// writeBackup writes a backup id of one chunk whose WAL starts in
// segment at.
func writeBackup(put func(string, []byte), id string, at int) {
	chunk, _ := sealed.Seal([]byte("a tar stream"), sealed.Compression{Codec: sealed.CodecZstd})
	sm, _ := sealed.Seal([]byte("{}"), sealed.Compression{Codec: sealed.CodecZstd})
	start := segment.LSN(uint64(at)*segSize + 0x28)
	m := manifest.Manifest{Format: manifest.Format, ID: id, PGVersion: "15", SystemIdentifier: sys, SegmentSize: segSize,
		Timeline: 1, StopTimeline: 1, StartLSN: start, StopLSN: start + 0x100,
		StartTime: time.Now().Add(-time.Hour), StopTime: time.Now().Add(-time.Hour),
		WALRanges: []manifest.WALRange{{Timeline: 1, Start: start, End: start + 0x100}},
		Archives: []manifest.Archive{{Name: "base.tar", Chunks: []manifest.Chunk{{Key: manifest.Prefix + id + "/base.tar.00000",
			Size: 12, StoredSize: chunk.Size(), SHA256: hex.EncodeToString(chunk.Header.SHA256[:])}}}},
		ServerManifest: manifest.Chunk{Key: manifest.Prefix + id + "/backup_manifest", Size: 2, StoredSize: sm.Size(), SHA256: hex.EncodeToString(sm.Header.SHA256[:])}}
	put(m.Archives[0].Chunks[0].Key, chunk.Bytes())
	put(m.ServerManifest.Key, sm.Bytes())
	b, _ := json.Marshal(m)
	put(manifest.Prefix+id+"/manifest.json", b)
}
