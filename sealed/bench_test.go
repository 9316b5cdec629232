package sealed

import (
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"testing"
)

// benchInputs is real WAL when WALSHIP_BENCH_SEGMENT names a segment file or
// a directory of them (scripts/bench.sh sets it), otherwise a synthetic
// stand-in. Each benchmark iteration handles every segment once, so MB/s and
// the ratio are over the whole set.
func benchInputs(b *testing.B) [][]byte {
	p := os.Getenv("WALSHIP_BENCH_SEGMENT")
	if p == "" {
		return [][]byte{walLike(16 << 20)}
	}
	paths := []string{p}
	if fi, err := os.Stat(p); err == nil && fi.IsDir() {
		ents, err := os.ReadDir(p)
		if err != nil {
			b.Fatal(err)
		}
		paths = paths[:0]
		for _, e := range ents {
			if e.Type().IsRegular() {
				paths = append(paths, filepath.Join(p, e.Name()))
			}
		}
		sort.Strings(paths)
	}
	var out [][]byte
	for _, p := range paths {
		raw, err := os.ReadFile(p)
		if err != nil {
			b.Fatal(err)
		}
		out = append(out, raw)
	}
	if len(out) == 0 {
		b.Fatalf("WALSHIP_BENCH_SEGMENT=%s: no segments", p)
	}
	return out
}

func totalSize(raws [][]byte) int64 {
	var n int64
	for _, r := range raws {
		n += int64(len(r))
	}
	return n
}

// benchCodecs are the codecs and levels compared in docs/BENCHMARKS.md
// ("Codec level"); zstd-1 is klauspost's SpeedFastest, zstd-3 SpeedDefault,
// zstd-7 SpeedBetterCompression.
var benchCodecs = []Compression{
	{CodecZstd, 1}, {CodecZstd, 3}, {CodecZstd, 7}, {CodecS2, 1}, {CodecS2, 2}, {CodecNone, 0},
}

func BenchmarkSeal(b *testing.B) {
	raws := benchInputs(b)
	for _, c := range benchCodecs {
		b.Run(c.Codec.String()+"-"+strconv.Itoa(c.Level), func(b *testing.B) {
			b.SetBytes(totalSize(raws))
			var out int64
			for b.Loop() {
				out = 0
				for _, raw := range raws {
					sealed, err := Seal(raw, c)
					if err != nil {
						b.Fatal(err)
					}
					out += sealed.Size()
				}
			}
			b.ReportMetric(float64(totalSize(raws))/float64(out), "ratio")
		})
	}
}

func BenchmarkUnseal(b *testing.B) {
	raws := benchInputs(b)
	for _, c := range []Compression{{CodecZstd, 1}, {CodecZstd, 3}} {
		b.Run(c.Codec.String()+"-"+strconv.Itoa(c.Level), func(b *testing.B) {
			objs := make([][]byte, len(raws))
			for i, raw := range raws {
				sealed, err := Seal(raw, c)
				if err != nil {
					b.Fatal(err)
				}
				objs[i] = sealed.Bytes()
			}
			b.SetBytes(totalSize(raws))
			for b.Loop() {
				for _, obj := range objs {
					if _, _, err := Unseal(obj); err != nil {
						b.Fatal(err)
					}
				}
			}
		})
	}
}
