package segment

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"io"
	"runtime"

	"github.com/klauspost/compress/zstd"
)

// maxParallelSize bounds the objects WriteToParallel holds in memory;
// bigger ones stream through WriteTo. A WAL segment is 16 MiB by default.
const maxParallelSize = 64 << 20

// The zstd frame format (RFC 8878, section 3.1), as far as splitting a
// stream into frames needs it.
const (
	zstdFrameMagic     = 0xFD2FB528
	zstdSkippableMagic = 0x184D2A50 // the low 4 bits are free
	zstdMaxBlockSize   = 128 << 10
)

// WriteToParallel is WriteTo for one object at a time, where wall time
// matters more than memory (walship fetch, the restore_command): the zstd
// frames a seal compressed in parallel are decompressed in parallel, each
// as soon as its bytes have arrived, straight into one buffer of the sealed
// size, and each is hashed and written to w in order while later ones still
// decode. w gets one Write per frame. It holds up to the compressed body
// and the decompressed content in memory at once (about twice the sealed
// size for incompressible data). Size and SHA-256 are checked as WriteTo
// checks them; on an error the caller must discard what was written.
// Codecs other than zstd, and objects over 64 MiB, go through WriteTo.
func (r *Reader) WriteToParallel(w io.Writer) (int64, error) {
	if r.hdr.Codec != CodecZstd || r.hdr.Size > maxParallelSize || r.body != nil || r.done {
		return r.WriteTo(w)
	}
	r.done = true
	workers := max(1, runtime.GOMAXPROCS(0))
	// Each frame decodes into a slice whose capacity is all it may fill
	// (WithDecodeAllCapLimit): nothing decodes past the sealed size.
	dec, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(workers), zstd.WithDecoderMaxWindow(64<<20),
		zstd.WithDecodeAllCapLimit(true),
		// The seal's SHA-256 covers every byte; the frames' xxhash would
		// only cost time.
		zstd.IgnoreChecksum(true))
	if err != nil {
		return 0, err
	}
	defer dec.Close()
	out := make([]byte, r.hdr.Size)
	frames := make(chan *zframe, workers)
	stop := make(chan struct{})
	var readErr error
	go func() {
		defer close(frames)
		readErr = r.splitFrames(dec, out, frames, stop)
	}()
	hashc := make(chan []byte, workers+1)
	sumc := make(chan [32]byte, 1)
	go func() {
		h := sha256.New()
		for b := range hashc {
			h.Write(b)
		}
		var s [32]byte
		h.Sum(s[:0])
		sumc <- s
	}()
	var written int64
	var werr error
	for f := range frames {
		<-f.done
		werr = r.checkFrame(f)
		if werr != nil {
			break
		}
		hashc <- f.out
		m, err := w.Write(f.out)
		written += int64(m)
		if err != nil {
			werr = err
			break
		}
	}
	close(hashc)
	got := <-sumc
	if werr != nil {
		// Let the reader and every decode end before the decoder closes.
		close(stop)
		for f := range frames {
			<-f.done
		}
	}
	// frames is closed: the reading goroutine is done, and r.src with it.
	switch {
	case r.src.err != nil:
		return written, r.src.err
	case werr != nil:
		return written, werr
	case readErr != nil:
		return written, readErr
	case r.n != r.hdr.Size:
		return written, fmt.Errorf("%w: body decompresses to %d bytes, sealed size %d", ErrChecksum, r.n, r.hdr.Size)
	case got != r.hdr.SHA256:
		return written, fmt.Errorf("%w: SHA-256 %x, sealed %x", ErrChecksum, got[:8], r.hdr.SHA256[:8])
	}
	return written, nil
}

// zframe is one zstd frame on its way through WriteToParallel.
type zframe struct {
	fcs  int64 // the content size its header states; -1 if it states none
	out  []byte
	err  error
	done chan struct{}
}

func (r *Reader) checkFrame(f *zframe) error {
	if f.err != nil {
		return fmt.Errorf("%w: %v", ErrChecksum, f.err)
	}
	if f.fcs >= 0 && int64(len(f.out)) != f.fcs {
		return fmt.Errorf("%w: a frame decompresses to %d bytes, its header says %d", ErrChecksum, len(f.out), f.fcs)
	}
	r.n += int64(len(f.out))
	if r.n > r.hdr.Size {
		return fmt.Errorf("%w: body decompresses to more than the sealed size %d", ErrChecksum, r.hdr.Size)
	}
	return nil
}

// splitFrames reads the body into one buffer, in reads as large as the
// source gives, and starts the decoding of each frame as soon as all its
// bytes are in: into its place in out while every frame before it stated
// its content size (walship's seals always do), else into a buffer of its
// own. The frames go to the channel in order.
func (r *Reader) splitFrames(dec *zstd.Decoder, out []byte, frames chan<- *zframe, stop <-chan struct{}) error {
	// A valid body is never much bigger than what it decompresses to (raw
	// blocks cost 3 bytes per 128 KiB): that bounds the buffer. Only what
	// is read into it is ever touched.
	b := &bodyBuf{src: r.src, b: make([]byte, 0, r.hdr.Size+r.hdr.Size/64+64<<10)}
	off, placed := int64(0), true
	for {
		select {
		case <-stop:
			return nil
		default:
		}
		in, fcs, err := b.frame(r.hdr.Size)
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		f := &zframe{fcs: fcs, done: make(chan struct{})}
		var dst []byte
		switch {
		case fcs >= 0 && placed:
			if off+fcs > r.hdr.Size {
				return fmt.Errorf("%w: body decompresses to more than the sealed size %d", ErrChecksum, r.hdr.Size)
			}
			dst = out[off : off : off+fcs]
			off += fcs
		default:
			placed = false
			dst = make([]byte, 0, r.hdr.Size)
		}
		go func() {
			defer close(f.done)
			f.out, f.err = dec.DecodeAll(in, dst)
		}()
		frames <- f
	}
}

// bodyBuf holds the body read so far; pos is where parsing has reached.
// Bytes before pos are never written again, so frames handed out stay
// valid while reading goes on behind them.
type bodyBuf struct {
	src io.Reader
	b   []byte
	pos int
	eof bool
}

// need makes n bytes from pos available; io.EOF if the body ends exactly
// at pos.
func (b *bodyBuf) need(n int) error {
	for len(b.b)-b.pos < n {
		if b.eof {
			if len(b.b) == b.pos {
				return io.EOF
			}
			return fmt.Errorf("%w: body ends inside a zstd frame", ErrChecksum)
		}
		if len(b.b) == cap(b.b) {
			return fmt.Errorf("%w: body larger than its content could compress to", ErrChecksum)
		}
		m, err := b.src.Read(b.b[len(b.b):cap(b.b)])
		b.b = b.b[:len(b.b)+m]
		if err == io.EOF {
			b.eof = true
		} else if err != nil {
			return err
		}
	}
	return nil
}

// take returns the next n bytes, which need made available.
func (b *bodyBuf) take(n int) []byte {
	p := b.b[b.pos : b.pos+n]
	b.pos += n
	return p
}

// frame returns the next zstd frame's bytes, passing over skippable
// frames, and the content size its header states (-1 if none); io.EOF at
// a clean end between frames. size bounds a frame's content size.
func (b *bodyBuf) frame(size int64) ([]byte, int64, error) {
	for {
		if err := b.need(4); err != nil {
			return nil, 0, err
		}
		magic := binary.LittleEndian.Uint32(b.b[b.pos:])
		if magic == zstdFrameMagic {
			break
		}
		if magic&^0xF != zstdSkippableMagic {
			return nil, 0, fmt.Errorf("%w: body holds something other than a zstd frame", ErrChecksum)
		}
		if err := b.need(8); err != nil {
			return nil, 0, ended(err)
		}
		n := binary.LittleEndian.Uint32(b.b[b.pos+4:])
		if uint64(n) > uint64(cap(b.b)) {
			return nil, 0, fmt.Errorf("%w: body larger than its content could compress to", ErrChecksum)
		}
		if err := b.need(8 + int(n)); err != nil {
			return nil, 0, ended(err)
		}
		b.take(8 + int(n))
	}
	start := b.pos
	if err := b.need(5); err != nil {
		return nil, 0, ended(err)
	}
	fhd := b.b[b.pos+4]
	if fhd&0x08 != 0 {
		return nil, 0, fmt.Errorf("%w: zstd frame header has its reserved bit set", ErrChecksum)
	}
	single, fcsFlag := fhd&0x20 != 0, fhd>>6
	n := [4]int{0, 1, 2, 4}[fhd&3] // dictionary id
	if !single {
		n++ // window descriptor
	}
	fcsLen := [4]int{0, 2, 4, 8}[fcsFlag]
	if fcsFlag == 0 && single {
		fcsLen = 1
	}
	if err := b.need(5 + n + fcsLen); err != nil {
		return nil, 0, ended(err)
	}
	h := b.take(5 + n + fcsLen)
	fcs := int64(-1)
	if fcsLen > 0 {
		var v [8]byte
		copy(v[:], h[5+n:])
		fcs = int64(binary.LittleEndian.Uint64(v[:]))
		if fcsLen == 2 {
			fcs += 256
		}
		if fcs < 0 || fcs > size {
			return nil, 0, fmt.Errorf("%w: body decompresses to more than the sealed size %d", ErrChecksum, size)
		}
	}
	for last := false; !last; {
		if err := b.need(3); err != nil {
			return nil, 0, ended(err)
		}
		bh := b.take(3)
		v := uint32(bh[0]) | uint32(bh[1])<<8 | uint32(bh[2])<<16
		typ, bsize := v>>1&3, int(v>>3)
		last = v&1 != 0
		if typ == 3 || bsize > zstdMaxBlockSize {
			return nil, 0, fmt.Errorf("%w: damaged zstd block header", ErrChecksum)
		}
		if typ == 1 { // RLE: one byte, repeated bsize times
			bsize = 1
		}
		if err := b.need(bsize); err != nil {
			return nil, 0, ended(err)
		}
		b.take(bsize)
	}
	if fhd&0x04 != 0 { // content checksum
		if err := b.need(4); err != nil {
			return nil, 0, ended(err)
		}
		b.take(4)
	}
	return b.b[start:b.pos:b.pos], fcs, nil
}

// ended makes an end of the body inside a frame a checksum failure.
func ended(err error) error {
	if err == io.EOF {
		return fmt.Errorf("%w: body ends inside a zstd frame", ErrChecksum)
	}
	return err
}
