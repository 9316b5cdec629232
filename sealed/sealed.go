package sealed

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"hash/crc32"
	"io"
	"runtime"
	"strconv"
	"strings"
	"sync"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/s2"
	"github.com/klauspost/compress/zstd"
)

// HeaderSize is the length of a sealed object's header. A sealed object is
// how walship stores every file: a fixed header, then the compressed bytes. The header makes the object self-describing, so a reader
// never guesses the codec from a key suffix or probes one extension after
// another, and it carries the SHA-256 of the original bytes, so integrity is
// checked end to end by walship rather than trusted to a transport.
//
//	offset size
//	0      4    magic "WSHP"
//	4      1    format version (1)
//	5      1    codec
//	6      2    zero
//	8      8    original size, big-endian
//	16     32   SHA-256 of the original bytes
//	48     4    CRC-32C of bytes 0..47, big-endian
//	52     ...  body: the codec's stream (for zstd, gzip and s2 possibly several
//	            concatenated frames, each compressed in parallel)
const HeaderSize = 52

const (
	sealedMagic   = "WSHP"
	sealedVersion = 1
	// chunkSize is how much of the input each parallel compressor takes. A
	// 16 MiB segment becomes four frames; the ratio lost to restarting the
	// window every 4 MiB is well under one percent on WAL.
	chunkSize = 4 << 20
)

// ErrChecksum is wrapped when decompressed bytes do not match the sealed
// SHA-256 or size, or the header itself is damaged.
var ErrChecksum = errors.New("checksum mismatch")

// ErrNotSealed is wrapped when an object does not start with a sealed header.
var ErrNotSealed = errors.New("not a walship sealed object")

var crcTable = crc32.MakeTable(crc32.Castagnoli)

// Codec is a compression algorithm for sealed bodies.
type Codec uint8

// The codecs. Their numbers are stored in archives: never renumber them.
const (
	CodecNone Codec = 0
	CodecZstd Codec = 1
	CodecS2   Codec = 2
	CodecGzip Codec = 3
)

func (c Codec) String() string {
	switch c {
	case CodecNone:
		return "none"
	case CodecZstd:
		return "zstd"
	case CodecS2:
		return "s2"
	case CodecGzip:
		return "gzip"
	}
	return "codec(" + strconv.Itoa(int(c)) + ")"
}

// ParseCodec accepts the names users write in --compression.
func ParseCodec(s string) (Codec, error) {
	switch strings.ToLower(s) {
	case "zstd", "zst":
		return CodecZstd, nil
	case "s2":
		return CodecS2, nil
	case "gzip", "gz":
		return CodecGzip, nil
	case "none", "off":
		return CodecNone, nil
	}
	return 0, fmt.Errorf("unknown compression %q (want zstd, s2, gzip or none)", s)
}

// Compression selects a codec and a level; level 0 means the codec's default.
type Compression struct {
	Codec Codec
	Level int
}

// Validate reports a level the codec does not have.
func (c Compression) Validate() error {
	lo, hi := 0, 0
	switch c.Codec {
	case CodecNone:
	case CodecZstd:
		lo, hi = 1, 22 // zstd's own scale, mapped onto klauspost's four speeds
	case CodecS2:
		lo, hi = 1, 3 // fast, better, best
	case CodecGzip:
		lo, hi = 1, 9
	default:
		return fmt.Errorf("unknown codec %d", c.Codec)
	}
	if c.Level != 0 && (c.Level < lo || c.Level > hi) {
		if hi == 0 {
			return fmt.Errorf("compression %s takes no level", c.Codec)
		}
		return fmt.Errorf("compression level %d out of range %d..%d for %s", c.Level, lo, hi, c.Codec)
	}
	return nil
}

// Header is the decoded header of a sealed object.
type Header struct {
	Version uint8
	Codec   Codec
	Size    int64
	SHA256  [32]byte
}

func (h Header) marshal(b []byte) {
	copy(b[0:4], sealedMagic)
	b[4] = h.Version
	b[5] = byte(h.Codec)
	b[6], b[7] = 0, 0
	binary.BigEndian.PutUint64(b[8:], uint64(h.Size))
	copy(b[16:48], h.SHA256[:])
	binary.BigEndian.PutUint32(b[48:], crc32.Checksum(b[:48], crcTable))
}

// ParseHeader decodes and checks a sealed header.
func ParseHeader(b []byte) (Header, error) {
	if len(b) < HeaderSize || string(b[0:4]) != sealedMagic {
		return Header{}, ErrNotSealed
	}
	if got, want := crc32.Checksum(b[:48], crcTable), binary.BigEndian.Uint32(b[48:]); got != want {
		return Header{}, fmt.Errorf("%w: sealed header CRC %08x, stored %08x", ErrChecksum, got, want)
	}
	h := Header{Version: b[4], Codec: Codec(b[5]), Size: int64(binary.BigEndian.Uint64(b[8:]))}
	copy(h.SHA256[:], b[16:48])
	if h.Version != sealedVersion {
		return h, fmt.Errorf("%w: format version %d is newer than this walship understands", ErrNotSealed, h.Version)
	}
	if h.Codec > CodecGzip {
		return h, fmt.Errorf("%w: unknown codec %d", ErrNotSealed, h.Codec)
	}
	if h.Size < 0 {
		return h, fmt.Errorf("%w: negative size", ErrNotSealed)
	}
	return h, nil
}

// ReadHeader reads just the header from the start of an object.
func ReadHeader(r io.Reader) (Header, error) {
	var b [HeaderSize]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return Header{}, fmt.Errorf("%w: object shorter than its header", ErrNotSealed)
		}
		return Header{}, err
	}
	return ParseHeader(b[:])
}

// Object is a sealed object in memory: the header, then the compressed
// frames in order. It is kept in pieces so that no copy of the whole object
// is ever made; Reader presents it as one stream.
type Object struct {
	Header Header
	parts  [][]byte
	size   int64
}

// Size is the stored size of the object in bytes.
func (s *Object) Size() int64 { return s.size }

// Reader returns a new rewindable reader over the whole object.
func (s *Object) Reader() io.ReadSeeker { return &partsReader{parts: s.parts, size: s.size} }

// Bytes returns the object as one slice (a copy), for tests and small files.
func (s *Object) Bytes() []byte {
	out := make([]byte, 0, s.size)
	for _, p := range s.parts {
		out = append(out, p...)
	}
	return out
}

// Seal compresses raw into a sealed object. The SHA-256 is computed while
// the chunks compress, all in parallel up to GOMAXPROCS, because this runs
// once per segment for the life of a database.
func Seal(raw []byte, c Compression) (*Object, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	h := Header{Version: sealedVersion, Codec: c.Codec, Size: int64(len(raw))}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		h.SHA256 = sha256.Sum256(raw)
	}()
	body, err := compress(raw, c)
	wg.Wait()
	if err != nil {
		return nil, err
	}
	hdr := make([]byte, HeaderSize)
	h.marshal(hdr)
	s := &Object{Header: h, parts: append([][]byte{hdr}, body...), size: HeaderSize}
	for _, p := range body {
		s.size += int64(len(p))
	}
	return s, nil
}

func compress(raw []byte, c Compression) ([][]byte, error) {
	if c.Codec == CodecNone {
		return [][]byte{raw}, nil
	}
	// One frame per worker, but never frames so small that the ratio
	// suffers: on two cores a 16 MiB segment is two 8 MiB frames.
	workers := max(1, runtime.GOMAXPROCS(0))
	size := max(chunkSize, (len(raw)+workers-1)/workers)
	size = (size + 1<<20 - 1) &^ (1<<20 - 1)
	n := max(1, (len(raw)+size-1)/size)
	parts := make([][]byte, n)
	errs := make([]error, n)
	next := make(chan int, n)
	for i := range n {
		next <- i
	}
	close(next)
	var wg sync.WaitGroup
	for range min(workers, n) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			enc, err := newChunkEncoder(c, size)
			if err != nil {
				for i := range next {
					errs[i] = err
				}
				return
			}
			for i := range next {
				end := min((i+1)*size, len(raw))
				parts[i], errs[i] = enc(raw[i*size : end])
			}
		}()
	}
	wg.Wait()
	for i := range parts {
		if errs[i] != nil {
			return nil, fmt.Errorf("compress %s: %w", c.Codec, errs[i])
		}
	}
	return parts, nil
}

func nextPow2(n int) int {
	p := 1 << 10
	for p < n {
		p <<= 1
	}
	return p
}

// partsReader reads a sequence of byte slices as one seekable stream.
type partsReader struct {
	parts [][]byte
	size  int64
	off   int64
}

func (r *partsReader) Read(p []byte) (int, error) {
	if r.off >= r.size {
		return 0, io.EOF
	}
	n := 0
	pos := int64(0)
	for _, part := range r.parts {
		end := pos + int64(len(part))
		if r.off < end && n < len(p) {
			m := copy(p[n:], part[r.off-pos:])
			n += m
			r.off += int64(m)
		}
		pos = end
	}
	return n, nil
}

func (r *partsReader) Seek(offset int64, whence int) (int64, error) {
	switch whence {
	case io.SeekStart:
	case io.SeekCurrent:
		offset += r.off
	case io.SeekEnd:
		offset += r.size
	}
	if offset < 0 {
		return 0, errors.New("seek before start")
	}
	r.off = offset
	return offset, nil
}

// newChunkEncoder returns a function that compresses one chunk into one
// self-contained frame (zstd frame, gzip member, s2 stream); the decoders read
// such frames back to back as a single stream.
func newChunkEncoder(c Compression, window int) (func([]byte) ([]byte, error), error) {
	switch c.Codec {
	case CodecZstd:
		lvl := zstd.SpeedDefault
		if c.Level != 0 {
			lvl = zstd.EncoderLevelFromZstd(c.Level)
		}
		// Up to the default level, zstd -3's 2 MiB window (pgBackRest's zst
		// has it) rather than the frame's size: on real WAL the ratio is
		// within 0.25% of an 8 MiB window's, and the decoder's history,
		// which every fetch faults in fresh, is a quarter
		// (docs/BENCHMARKS.md, "Codec level"). Higher levels keep the
		// frame's size, as zstd's own higher levels have larger windows.
		w := min(nextPow2(window), zstd.MaxWindowSize)
		if lvl <= zstd.SpeedDefault {
			w = min(w, sealerWindow)
		}
		enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(lvl), zstd.WithEncoderConcurrency(1),
			zstd.WithWindowSize(w), zstd.WithZeroFrames(true))
		if err != nil {
			return nil, err
		}
		return func(src []byte) ([]byte, error) {
			// Capacity for the worst case, so the output never regrows:
			// pages that are never written cost no memory.
			return enc.EncodeAll(src, make([]byte, 0, len(src)+len(src)/128+1024)), nil
		}, nil
	case CodecS2:
		opts := []s2.WriterOption{s2.WriterConcurrency(1)}
		switch c.Level {
		case 2:
			opts = append(opts, s2.WriterBetterCompression())
		case 3:
			opts = append(opts, s2.WriterBestCompression())
		}
		return func(src []byte) ([]byte, error) {
			var buf bytes.Buffer
			w := s2.NewWriter(&buf, opts...)
			if _, err := w.Write(src); err != nil {
				return nil, err
			}
			err := w.Close()
			return buf.Bytes(), err
		}, nil
	case CodecGzip:
		lvl := gzip.DefaultCompression
		if c.Level != 0 {
			lvl = c.Level
		}
		return func(src []byte) ([]byte, error) {
			var buf bytes.Buffer
			w, err := gzip.NewWriterLevel(&buf, lvl)
			if err != nil {
				return nil, err
			}
			if _, err := w.Write(src); err != nil {
				return nil, err
			}
			err = w.Close()
			return buf.Bytes(), err
		}, nil
	}
	return nil, fmt.Errorf("unknown codec %d", c.Codec)
}

// Reader decompresses a sealed object as a stream and checks it: Read returns
// io.EOF only after the size and SHA-256 of everything read matched the
// header; otherwise the last Read returns an error wrapping ErrChecksum.
type Reader struct {
	hdr   Header
	body  io.Reader
	close func()
	src   *srcReader
	sum   hash.Hash
	n     int64
	done  bool
}

// NewReader reads the sealed header from r and prepares to decompress the body.
func NewReader(r io.Reader) (*Reader, error) {
	h, err := ReadHeader(r)
	if err != nil {
		return nil, err
	}
	sr := &Reader{hdr: h, sum: sha256.New(), close: func() {}, src: &srcReader{r: r}}
	r = sr.src
	switch h.Codec {
	case CodecNone:
		sr.body = r
	case CodecZstd:
		d, err := zstd.NewReader(r, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxWindow(64<<20))
		if err != nil {
			return nil, err
		}
		sr.body, sr.close = d, d.Close
	case CodecS2:
		sr.body = s2.NewReader(r)
	case CodecGzip:
		g, err := gzip.NewReader(r)
		if err != nil {
			if sr.src.err != nil {
				return nil, sr.src.err
			}
			return nil, fmt.Errorf("%w: %v", ErrChecksum, err) //nolint:errorlint // codec error is damage only; wrapped, its io.EOF would read as end of stream
		}
		sr.body, sr.close = g, func() { _ = g.Close() }
	}
	return sr, nil
}

// Header is the sealed header read from the object.
func (r *Reader) Header() Header { return r.hdr }

func (r *Reader) Read(p []byte) (int, error) {
	if r.done {
		return 0, io.EOF
	}
	// Never hand out more than the header promised: a body that decompresses
	// to more is damaged, and must not fill a disk first.
	if rem := r.hdr.Size - r.n; int64(len(p)) > rem+1 {
		p = p[:rem+1]
	}
	n, err := r.body.Read(p)
	r.sum.Write(p[:n])
	r.n += int64(n)
	if r.n > r.hdr.Size {
		return 0, fmt.Errorf("%w: body decompresses to more than the sealed size %d", ErrChecksum, r.hdr.Size)
	}
	if err == io.EOF {
		r.done = true
		if r.n != r.hdr.Size {
			return n, fmt.Errorf("%w: body decompresses to %d bytes, sealed size %d", ErrChecksum, r.n, r.hdr.Size)
		}
		var got [32]byte
		r.sum.Sum(got[:0])
		if got != r.hdr.SHA256 {
			return n, fmt.Errorf("%w: SHA-256 %x, sealed %x", ErrChecksum, got[:8], r.hdr.SHA256[:8])
		}
		return n, io.EOF
	}
	if err != nil && !errors.Is(err, ErrChecksum) {
		// An error from the source is transport trouble and passes through
		// unchanged, so callers can retry it; anything else the codec said
		// means the body is damaged.
		if r.src.err != nil {
			return n, r.src.err
		}
		return n, fmt.Errorf("%w: %v", ErrChecksum, err) //nolint:errorlint // codec error is damage only; wrapped, its io.EOF would read as end of stream
	}
	return n, err
}

// WriteTo decompresses the rest of the object into w, hashing on a second
// goroutine while this one decodes and writes, so the SHA-256 costs no wall
// time on a machine with two cores. It checks size and SHA-256 like Read
// and returns an error wrapping ErrChecksum on a mismatch; the caller must
// then discard what was written.
func (r *Reader) WriteTo(w io.Writer) (int64, error) {
	// Small buffers: each is faulted in fresh in a fetch process, and the
	// hash keeps up with decoding.
	const bufSize, nbuf = 256 << 10, 4
	free := make(chan []byte, nbuf)
	for range nbuf {
		free <- make([]byte, bufSize)
	}
	full := make(chan []byte, nbuf)
	sum := make(chan [32]byte, 1)
	go func() {
		h := sha256.New()
		for b := range full {
			h.Write(b)
			free <- b[:cap(b)]
		}
		var out [32]byte
		h.Sum(out[:0])
		sum <- out
	}()
	var written int64
	finish := func(err error) (int64, error) {
		close(full)
		got := <-sum
		r.done = true
		if err != nil {
			return written, err
		}
		if r.n != r.hdr.Size {
			return written, fmt.Errorf("%w: body decompresses to %d bytes, sealed size %d", ErrChecksum, r.n, r.hdr.Size)
		}
		if got != r.hdr.SHA256 {
			return written, fmt.Errorf("%w: SHA-256 %x, sealed %x", ErrChecksum, got[:8], r.hdr.SHA256[:8])
		}
		return written, nil
	}
	for {
		buf := <-free
		n, err := fill(r.body, buf)
		if n > 0 {
			r.n += int64(n)
			if r.n > r.hdr.Size {
				return finish(fmt.Errorf("%w: body decompresses to more than the sealed size %d", ErrChecksum, r.hdr.Size))
			}
			m, werr := w.Write(buf[:n])
			written += int64(m)
			full <- buf[:n]
			if werr != nil {
				return finish(werr)
			}
		} else {
			free <- buf
		}
		if errors.Is(err, io.EOF) {
			return finish(nil)
		}
		if err != nil {
			if r.src.err != nil {
				return finish(r.src.err)
			}
			return finish(fmt.Errorf("%w: %v", ErrChecksum, err)) //nolint:errorlint // codec error is damage only; wrapped, its io.EOF would read as end of stream
		}
	}
}

// fill reads until buf is full or the reader fails; unlike io.ReadFull it
// passes io.EOF and every other error through unchanged.
func fill(r io.Reader, buf []byte) (int, error) {
	n := 0
	for n < len(buf) {
		m, err := r.Read(buf[n:])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// srcReader remembers the first error of the underlying reader other than
// io.EOF, to tell a broken transport from a broken body.
type srcReader struct {
	r   io.Reader
	err error
}

func (s *srcReader) Read(p []byte) (int, error) {
	n, err := s.r.Read(p)
	if err != nil && err != io.EOF && s.err == nil {
		s.err = err
	}
	return n, err
}

// Close releases the decoder.
func (r *Reader) Close() error {
	r.close()
	return nil
}

// Unseal reads and checks a whole sealed object held in memory.
func Unseal(obj []byte) ([]byte, Header, error) {
	r, err := NewReader(bytes.NewReader(obj))
	if err != nil {
		return nil, Header{}, err
	}
	defer r.Close()
	out := make([]byte, 0, min(r.hdr.Size, 64<<20)) // the size is untrusted until checked
	buf := bytes.NewBuffer(out)
	if _, err := io.Copy(buf, r); err != nil {
		return nil, r.hdr, err
	}
	return buf.Bytes(), r.hdr, nil
}
