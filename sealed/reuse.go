package sealed

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"io"

	"github.com/klauspost/compress/zstd"
)

// Sealer seals one object at a time on one goroutine, reusing its encoder
// and output buffer. It is for callers that work on many objects in
// parallel (base backup chunks), where Seal's per-call parallel frames and
// fresh encoders would only add memory.
type Sealer struct {
	c   Compression
	zst *zstd.Encoder
	enc func([]byte) ([]byte, error)
	out []byte
}

// sealerWindow is the zstd window of a Sealer: zstd -3's, 2 MiB.
const sealerWindow = 2 << 20

// NewSealer prepares a Sealer for c.
func NewSealer(c Compression) (*Sealer, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	s := &Sealer{c: c}
	switch c.Codec {
	case CodecZstd:
		lvl := zstd.SpeedDefault
		if c.Level != 0 {
			lvl = zstd.EncoderLevelFromZstd(c.Level)
		}
		enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(lvl), zstd.WithEncoderConcurrency(1),
			zstd.WithWindowSize(sealerWindow), zstd.WithZeroFrames(true),
			// The seal's SHA-256 covers the content; zstd's own xxhash would
			// only cost time.
			zstd.WithEncoderCRC(false))
		if err != nil {
			return nil, err
		}
		s.zst = enc
	case CodecNone:
	default:
		enc, err := newChunkEncoder(c, sealerWindow)
		if err != nil {
			return nil, err
		}
		s.enc = enc
	}
	return s, nil
}

// Seal seals raw as one frame. The result aliases the Sealer's buffer (and
// raw itself when uncompressed): it is valid until the next call.
func (s *Sealer) Seal(raw []byte) (*Object, error) {
	h := Header{Version: sealedVersion, Codec: s.c.Codec, Size: int64(len(raw))}
	done := make(chan struct{})
	go func() {
		h.SHA256 = sha256.Sum256(raw)
		close(done)
	}()
	var body []byte
	var err error
	switch {
	case s.zst != nil:
		// Capacity for the worst case, so the output never regrows (an
		// output grown by appends leaves about four times its size in
		// garbage); pages that are never written cost no memory.
		if worst := len(raw) + len(raw)/128 + 1024; cap(s.out) < worst {
			s.out = make([]byte, 0, worst)
		}
		s.out = s.zst.EncodeAll(raw, s.out[:0])
		body = s.out
	case s.enc != nil:
		body, err = s.enc(raw)
	default:
		body = raw
	}
	<-done
	if err != nil {
		return nil, fmt.Errorf("compress %s: %w", s.c.Codec, err)
	}
	hdr := make([]byte, HeaderSize)
	h.marshal(hdr)
	return &Object{Header: h, parts: [][]byte{hdr, body}, size: int64(HeaderSize + len(body))}, nil
}

// Unsealer checks and decompresses whole sealed objects into a buffer the
// caller owns, reusing its zstd decoder.
type Unsealer struct {
	zst *zstd.Decoder
}

// NewUnsealer prepares an Unsealer. maxSize bounds the decompressed size
// it accepts.
func NewUnsealer(maxSize int64) (*Unsealer, error) {
	d, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxWindow(64<<20),
		zstd.WithDecoderMaxMemory(uint64(maxSize)))
	if err != nil {
		return nil, err
	}
	return &Unsealer{zst: d}, nil
}

// Close releases the decoder.
func (u *Unsealer) Close() { u.zst.Close() }

// Unseal checks obj and decompresses it into dst[:0], returning the bytes
// (which may be a new slice if dst was too small) and the header.
func (u *Unsealer) Unseal(obj, dst []byte) ([]byte, Header, error) {
	if len(obj) < HeaderSize {
		return nil, Header{}, fmt.Errorf("%w: object of %d bytes", ErrNotSealed, len(obj))
	}
	h, err := ParseHeader(obj[:HeaderSize])
	if err != nil {
		return nil, h, err
	}
	body := obj[HeaderSize:]
	var out []byte
	switch h.Codec {
	case CodecNone:
		out = append(dst[:0], body...) //nolint:gocritic // into dst's storage on purpose, as Unseal promises
	case CodecZstd:
		out, err = u.zst.DecodeAll(body, dst[:0])
		if err != nil {
			return nil, h, fmt.Errorf("%w: %v", ErrChecksum, err) //nolint:errorlint // codec error is damage only; wrapped, its io.EOF would read as end of stream
		}
	default:
		r, err := NewReader(bytes.NewReader(obj))
		if err != nil {
			return nil, h, err
		}
		defer r.Close()
		w := bytes.NewBuffer(dst[:0])
		if _, err := io.Copy(w, r); err != nil {
			return nil, h, err
		}
		return w.Bytes(), h, nil
	}
	if int64(len(out)) != h.Size || sha256.Sum256(out) != h.SHA256 {
		return nil, h, fmt.Errorf("%w: content does not match the sealed size and SHA-256", ErrChecksum)
	}
	return out, h, nil
}
