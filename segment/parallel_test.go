package segment

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"io"
	"runtime"
	"testing"

	"github.com/klauspost/compress/zstd"
)

func parallelUnseal(obj []byte) ([]byte, error) {
	r, err := NewReader(bytes.NewReader(obj))
	if err != nil {
		return nil, err
	}
	defer r.Close()
	var out bytes.Buffer
	n, err := r.WriteToParallel(&out)
	if err == nil && n != int64(out.Len()) {
		return nil, errors.New("count differs from bytes written")
	}
	return out.Bytes(), err
}

// sealWith seals raw in as many frames as procs cores would give.
func sealWith(t testing.TB, raw []byte, c Compression, procs int) []byte {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(procs))
	s, err := Seal(raw, c)
	if err != nil {
		t.Fatal(err)
	}
	return s.Bytes()
}

func TestWriteToParallelRoundTrip(t *testing.T) {
	for _, size := range []int{0, 1, chunkSize - 1, 3*chunkSize + 17, 4 * chunkSize} {
		raw := walLike(size)
		for _, procs := range []int{1, 2, 4} {
			for _, c := range allCompressions() {
				got, err := parallelUnseal(sealWith(t, raw, c, procs))
				if err != nil || !bytes.Equal(got, raw) {
					t.Fatalf("%v size %d, %d frames' worth: %v (equal %v)", c, size, procs, err, bytes.Equal(got, raw))
				}
			}
		}
	}
}

// Damage is caught as WriteTo catches it; a transport error comes through
// as itself at any point of the body.
func TestWriteToParallelDamage(t *testing.T) {
	raw := walLike(3*chunkSize + 5)
	obj := sealWith(t, raw, Compression{Codec: CodecZstd}, 4)
	for off := SealedHeaderSize; off < len(obj); off += len(obj) / 97 {
		bad := append([]byte(nil), obj...)
		bad[off] ^= 0x10
		if _, err := parallelUnseal(bad); !errors.Is(err, ErrChecksum) {
			t.Errorf("flip at %d: %v, want ErrChecksum", off, err)
		}
	}
	for cut := SealedHeaderSize + 1; cut < len(obj); cut += len(obj) / 89 {
		if _, err := parallelUnseal(obj[:cut]); !errors.Is(err, ErrChecksum) {
			t.Errorf("cut at %d: %v, want ErrChecksum", cut, err)
		}
		boom := errors.New("connection reset")
		r, err := NewReader(io.MultiReader(bytes.NewReader(obj[:cut]), errReader{boom}))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := r.WriteToParallel(io.Discard); !errors.Is(err, boom) || errors.Is(err, ErrChecksum) {
			t.Errorf("transport error after %d bytes: %v", cut, err)
		}
	}
	for _, tail := range [][]byte{{0}, []byte("garbage after the frames"), zstdFrameHeaderOnly()} {
		if _, err := parallelUnseal(append(append([]byte(nil), obj...), tail...)); !errors.Is(err, ErrChecksum) {
			t.Errorf("trailing %q: %v, want ErrChecksum", tail, err)
		}
	}
	boom := errors.New("disk full")
	r, _ := NewReader(bytes.NewReader(obj))
	if _, err := r.WriteToParallel(failWriter{boom}); !errors.Is(err, boom) {
		t.Errorf("write error: %v", err)
	}
}

// A frame that says it holds more than the sealed size is refused before
// it is decoded.
func TestWriteToParallelOversizedFrame(t *testing.T) {
	raw := walLike(chunkSize)
	enc, _ := zstd.NewWriter(nil)
	body := enc.EncodeAll(raw, nil)
	obj := sealedOf(raw[:len(raw)/2], body) // header says half
	if _, err := parallelUnseal(obj); !errors.Is(err, ErrChecksum) {
		t.Errorf("oversized frame: %v, want ErrChecksum", err)
	}
}

// Frames from a streaming encoder state no content size, and skippable
// frames may sit between frames: both decode, into buffers of their own.
func TestWriteToParallelForeignFrames(t *testing.T) {
	raw := walLike(2*chunkSize + 3)
	var body bytes.Buffer
	body.Write(skippable([]byte("skip me")))
	for _, part := range [][]byte{raw[:chunkSize], raw[chunkSize:]} {
		w, _ := zstd.NewWriter(&body, zstd.WithEncoderConcurrency(1))
		_, _ = w.Write(part)
		_ = w.Close()
		body.Write(skippable(nil))
	}
	got, err := parallelUnseal(sealedOf(raw, body.Bytes()))
	if err != nil || !bytes.Equal(got, raw) {
		t.Fatalf("foreign frames: %v", err)
	}
	if _, err := parallelUnseal(sealedOf(raw[:chunkSize], body.Bytes())); !errors.Is(err, ErrChecksum) {
		t.Errorf("more content than sealed: %v, want ErrChecksum", err)
	}
}

func FuzzWriteToParallel(f *testing.F) {
	for _, procs := range []int{1, 3} {
		f.Add(sealWith(f, walLike(1000), Compression{Codec: CodecZstd}, procs))
	}
	f.Add(sealedOf([]byte("x"), skippable([]byte("y"))))
	f.Fuzz(func(t *testing.T, b []byte) {
		got, err := parallelUnseal(b)
		if err == nil {
			h, _ := ParseSealedHeader(b)
			if int64(len(got)) != h.Size || sha256.Sum256(got) != h.SHA256 {
				t.Fatal("accepted content that does not match its seal")
			}
		}
		// Never stricter than the streaming reader.
		if want, _, serr := Unseal(b); serr == nil && (err != nil || !bytes.Equal(got, want)) {
			t.Fatalf("streaming accepts, parallel: %v", err)
		}
	})
}

func sealedOf(raw, body []byte) []byte {
	h := SealedHeader{Version: sealedVersion, Codec: CodecZstd, Size: int64(len(raw)), SHA256: sha256.Sum256(raw)}
	obj := make([]byte, SealedHeaderSize, SealedHeaderSize+len(body))
	h.marshal(obj)
	return append(obj, body...)
}

func skippable(data []byte) []byte {
	b := binary.LittleEndian.AppendUint32(nil, zstdSkippableMagic|7)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(data)))
	return append(b, data...)
}

func zstdFrameHeaderOnly() []byte {
	return binary.LittleEndian.AppendUint32(nil, zstdFrameMagic)
}

type failWriter struct{ err error }

func (f failWriter) Write([]byte) (int, error) { return 0, f.err }
