package sealed

import (
	"bytes"
	"crypto/rand"
	"errors"
	"io"
	"testing"

	"github.com/klauspost/compress/zstd"
)

func walLike(n int) []byte {
	b := make([]byte, n)
	// Half repetitive records, half random bytes, like WAL with page images.
	for i := 0; i < n/2; i++ {
		b[i] = byte(i % 251)
	}
	_, _ = rand.Read(b[n/2 : n/2+n/4])
	return b
}

func allCompressions() []Compression {
	return []Compression{
		{CodecZstd, 0}, {CodecZstd, 1}, {CodecZstd, 19}, {CodecS2, 0}, {CodecS2, 3},
		{CodecGzip, 0}, {CodecGzip, 9}, {CodecNone, 0},
	}
}

func TestSealRoundTrip(t *testing.T) {
	for _, size := range []int{0, 1, chunkSize - 1, chunkSize, 3*chunkSize + 17} {
		raw := walLike(size)
		for _, c := range allCompressions() {
			sealed, err := Seal(raw, c)
			if err != nil {
				t.Fatalf("%v size %d: %v", c, size, err)
			}
			obj, h := sealed.Bytes(), sealed.Header
			if int64(len(obj)) != sealed.Size() {
				t.Fatalf("Size() = %d, bytes %d", sealed.Size(), len(obj))
			}
			viaReader, _ := io.ReadAll(sealed.Reader())
			if !bytes.Equal(viaReader, obj) {
				t.Fatal("Reader() differs from Bytes()")
			}
			if h.Size != int64(size) || h.Codec != c.Codec {
				t.Fatalf("header %+v", h)
			}
			got, h2, err := Unseal(obj)
			if err != nil {
				t.Fatalf("%v size %d: Unseal: %v", c, size, err)
			}
			if h2 != h || !bytes.Equal(got, raw) {
				t.Fatalf("%v size %d: round trip differs", c, size)
			}
		}
	}
}

func TestSealedCorruptionIsDetected(t *testing.T) {
	raw := walLike(3 * chunkSize)
	for _, c := range allCompressions() {
		sealed, err := Seal(raw, c)
		if err != nil {
			t.Fatal(err)
		}
		obj := sealed.Bytes()
		// Flip one byte at a spread of offsets, in header and body.
		for _, off := range []int{0, 5, 9, 20, 50, HeaderSize, HeaderSize + 100, len(obj) / 2, len(obj) - 1} {
			bad := append([]byte(nil), obj...)
			bad[off] ^= 0x40
			if _, _, err := Unseal(bad); err == nil {
				t.Errorf("%v: flipped byte at %d not detected", c, off)
			} else if !errors.Is(err, ErrChecksum) && !errors.Is(err, ErrNotSealed) {
				t.Errorf("%v: flipped byte at %d: err %v is neither ErrChecksum nor ErrNotSealed", c, off, err)
			}
		}
		for _, cut := range []int{0, 10, HeaderSize, len(obj) - 1} {
			if _, _, err := Unseal(obj[:cut]); err == nil {
				t.Errorf("%v: truncated to %d not detected", c, cut)
			}
		}
	}
}

// A transport error must come through as itself, not as a checksum failure.
func TestSealedTransportErrorPassesThrough(t *testing.T) {
	sealed, _ := Seal(walLike(chunkSize), Compression{Codec: CodecZstd})
	obj := sealed.Bytes()
	boom := errors.New("connection reset")
	r, err := NewReader(io.MultiReader(bytes.NewReader(obj[:len(obj)/2]), errReader{boom}))
	if err != nil {
		t.Fatal(err)
	}
	_, err = io.Copy(io.Discard, r)
	if !errors.Is(err, boom) || errors.Is(err, ErrChecksum) {
		t.Fatalf("err = %v, want the transport error", err)
	}
}

type errReader struct{ err error }

func (e errReader) Read([]byte) (int, error) { return 0, e.err }

func TestCompressionValidate(t *testing.T) {
	for _, bad := range []Compression{{CodecZstd, 23}, {CodecZstd, -1}, {CodecS2, 4}, {CodecGzip, 10}, {CodecNone, 1}, {Codec(9), 0}} {
		if bad.Validate() == nil {
			t.Errorf("%+v accepted", bad)
		}
	}
	for _, s := range []string{"zstd", "ZSTD", "s2", "gzip", "none"} {
		if _, err := ParseCodec(s); err != nil {
			t.Errorf("ParseCodec(%q): %v", s, err)
		}
	}
	if _, err := ParseCodec("lz5"); err == nil {
		t.Error("lz5 accepted")
	}
}

func FuzzUnseal(f *testing.F) {
	for _, c := range allCompressions() {
		sealed, _ := Seal([]byte("hello, write-ahead log"), c)
		f.Add(sealed.Bytes())
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		got, h, err := Unseal(b)
		if err != nil {
			return
		}
		if int64(len(got)) != h.Size {
			t.Fatalf("accepted object of %d bytes, header says %d", len(got), h.Size)
		}
		again, err := Seal(got, Compression{Codec: h.Codec})
		if err != nil {
			t.Fatal(err)
		}
		if back, _, err := Unseal(again.Bytes()); err != nil || !bytes.Equal(back, got) {
			t.Fatalf("re-seal round trip failed: %v", err)
		}
	})
}

func TestWriteToChecksLikeRead(t *testing.T) {
	raw := walLike(3*chunkSize + 5)
	sealed, _ := Seal(raw, Compression{Codec: CodecZstd})
	obj := sealed.Bytes()
	r, _ := NewReader(bytes.NewReader(obj))
	var out bytes.Buffer
	if n, err := r.WriteTo(&out); err != nil || n != int64(len(raw)) || !bytes.Equal(out.Bytes(), raw) {
		t.Fatalf("WriteTo: %d, %v", n, err)
	}
	for _, off := range []int{20, len(obj) / 2, len(obj) - 2} {
		bad := append([]byte(nil), obj...)
		bad[off] ^= 0x10
		r, err := NewReader(bytes.NewReader(bad))
		if err != nil {
			continue // header damage is caught up front
		}
		if _, err := r.WriteTo(io.Discard); !errors.Is(err, ErrChecksum) {
			t.Errorf("flip at %d: %v, want ErrChecksum", off, err)
		}
	}
	if _, err := NewReader(bytes.NewReader(obj[:len(obj)-100])); err == nil {
		r, _ := NewReader(bytes.NewReader(obj[:len(obj)-100]))
		if _, err := r.WriteTo(io.Discard); !errors.Is(err, ErrChecksum) {
			t.Errorf("truncated: %v, want ErrChecksum", err)
		}
	}
	boom := errors.New("connection reset")
	r, _ = NewReader(io.MultiReader(bytes.NewReader(obj[:len(obj)/2]), errReader{boom}))
	if _, err := r.WriteTo(io.Discard); !errors.Is(err, boom) {
		t.Errorf("transport error: %v", err)
	}
}

// Up to the default level a seal's frames ask for zstd -3's 2 MiB window,
// whatever the frame size: what every fetch's decoder has to allocate.
func TestSealWindow(t *testing.T) {
	raw := walLike(4 * chunkSize)
	for _, c := range []struct {
		comp Compression
		max  uint64
	}{{Compression{CodecZstd, 0}, sealerWindow}, {Compression{CodecZstd, 1}, sealerWindow}, {Compression{CodecZstd, 19}, 16 << 20}} {
		s, err := Seal(raw, c.comp)
		if err != nil {
			t.Fatal(err)
		}
		var h zstd.Header
		if err := h.Decode(s.Bytes()[HeaderSize:]); err != nil {
			t.Fatal(err)
		}
		window := h.WindowSize
		if h.SingleSegment { // no window descriptor: the frame is the window
			window = h.FrameContentSize
		}
		if window > c.max || window < 1<<20 {
			t.Errorf("%v: window %d, want 1 MiB to %d", c.comp, window, c.max)
		}
	}
}
