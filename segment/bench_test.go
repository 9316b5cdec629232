package segment

import (
	"os"
	"testing"
)

// benchInput is real WAL when WALSHIP_BENCH_SEGMENT names a segment file
// (scripts/bench.sh sets it), otherwise a synthetic stand-in.
func benchInput(b *testing.B) []byte {
	if p := os.Getenv("WALSHIP_BENCH_SEGMENT"); p != "" {
		raw, err := os.ReadFile(p)
		if err != nil {
			b.Fatal(err)
		}
		return raw
	}
	return walLike(DefaultSegmentSize)
}

func BenchmarkSeal(b *testing.B) {
	raw := benchInput(b)
	for _, c := range []Compression{{CodecZstd, 0}, {CodecZstd, 1}, {CodecS2, 0}, {CodecNone, 0}} {
		b.Run(c.Codec.String()+"-"+itoa(c.Level), func(b *testing.B) {
			b.SetBytes(int64(len(raw)))
			var out int
			for b.Loop() {
				sealed, err := Seal(raw, c)
				if err != nil {
					b.Fatal(err)
				}
				out = int(sealed.Size())
			}
			b.ReportMetric(float64(len(raw))/float64(out), "ratio")
		})
	}
}

func BenchmarkUnseal(b *testing.B) {
	raw := benchInput(b)
	sealed, err := Seal(raw, Compression{Codec: CodecZstd})
	if err != nil {
		b.Fatal(err)
	}
	obj := sealed.Bytes()
	b.SetBytes(int64(len(raw)))
	for b.Loop() {
		if _, _, err := Unseal(obj); err != nil {
			b.Fatal(err)
		}
	}
}

func itoa(i int) string {
	if i == 0 {
		return "default"
	}
	return string(rune('0' + i))
}
