// Package incremental is PostgreSQL's incremental relation file, as the
// server writes it into an incremental base backup (PostgreSQL 17 and
// later, BASE_BACKUP INCREMENTAL): the INCREMENTAL.<relfile> header (magic,
// block count, truncation block length, block numbers, padding to a block
// boundary when blocks follow) and the rebuilding of a relation file from a
// chain of backups, the way pg_combinebackup does it. Apply patches the
// file in place, oldest backup first, which is what a streaming restore can
// do; Reconstruct is the newest-first definition from random-access
// sources. Both give the same bytes (the fuzz target checks it). Standard
// library only, no I/O of its own.
package incremental

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"
)

const (
	// Magic opens every incremental file (INCREMENTAL_MAGIC), in the
	// server's byte order; walship reads files of little-endian servers.
	Magic uint32 = 0xd3ae1f0d
	// BlockSize is PostgreSQL's BLCKSZ. Servers built with another block
	// size write files whose length does not match their header, and are
	// refused (CheckSize).
	BlockSize = 8192
	// SegmentBlocks is RELSEG_SIZE: the most blocks one relation segment
	// file holds (1 GiB of 8 KiB blocks). No count in a header exceeds it.
	SegmentBlocks = 131072
	// Prefix is the name prefix of an incremental file.
	Prefix = "INCREMENTAL."
	// fixedSize is the magic, the block count and the truncation length.
	fixedSize = 12
)

// ErrFormat is wrapped by every error about bytes that are not an
// incremental file PostgreSQL writes.
var ErrFormat = errors.New("not a PostgreSQL incremental file")

// Header is an incremental file's header.
type Header struct {
	// Blocks are the relative block numbers whose images follow the
	// header, in file order (the server sorts them).
	Blocks []uint32
	// Truncate is truncation_block_length: the length, in blocks, of the
	// file the server saw. Blocks below it that the file does not carry
	// come from an older backup; blocks at or above it exist only if this
	// file carries them.
	Truncate uint32
}

// HeaderSize is the bytes a header with n blocks takes: 12 bytes and 4 per
// block, rounded up to a whole block when any block image follows
// (GetIncrementalHeaderSize).
func HeaderSize(n int) int64 {
	s := int64(fixedSize + 4*n)
	if n > 0 && s%BlockSize != 0 {
		s += BlockSize - s%BlockSize
	}
	return s
}

// Size is the header's bytes, padding included.
func (h *Header) Size() int64 { return HeaderSize(len(h.Blocks)) }

// FileSize is the whole incremental file's bytes: the header and one image
// per block (GetIncrementalFileSize).
func (h *Header) FileSize() int64 { return h.Size() + int64(len(h.Blocks))*BlockSize }

// Length is the rebuilt file's length in blocks: the truncation length,
// or more if the file carries blocks beyond it
// (find_reconstructed_block_length).
func (h *Header) Length() uint32 {
	n := h.Truncate
	for _, b := range h.Blocks {
		n = max(n, b+1)
	}
	return n
}

// CheckSize compares the size an archive gives for the file with what the
// header says, which also refuses a server built with another BLCKSZ.
func (h *Header) CheckSize(size int64) error {
	if size != h.FileSize() {
		return fmt.Errorf("%w: %d bytes, but its header with %d blocks of %d bytes makes %d (a server built with another block size?)",
			ErrFormat, size, len(h.Blocks), BlockSize, h.FileSize())
	}
	return nil
}

// check validates the header's numbers: as pg_combinebackup does, counts
// up to SegmentBlocks; and each block number below SegmentBlocks and given
// once, since a block given twice has no single meaning.
func (h *Header) check() error {
	if len(h.Blocks) > SegmentBlocks {
		return fmt.Errorf("%w: %d blocks, more than a segment's %d", ErrFormat, len(h.Blocks), SegmentBlocks)
	}
	if h.Truncate > SegmentBlocks {
		return fmt.Errorf("%w: truncation length %d blocks, more than a segment's %d", ErrFormat, h.Truncate, SegmentBlocks)
	}
	var seen [SegmentBlocks / 64]uint64
	for _, b := range h.Blocks {
		if b >= SegmentBlocks {
			return fmt.Errorf("%w: block number %d is beyond a segment's %d blocks", ErrFormat, b, SegmentBlocks)
		}
		if seen[b/64]&(1<<(b%64)) != 0 {
			return fmt.Errorf("%w: block %d given twice", ErrFormat, b)
		}
		seen[b/64] |= 1 << (b % 64)
	}
	return nil
}

// ReadHeader reads an incremental file's header and its padding from r,
// which is left at the first block image.
func ReadHeader(r io.Reader) (*Header, error) {
	var fixed [fixedSize]byte
	if _, err := io.ReadFull(r, fixed[:]); err != nil {
		return nil, readErr("header", err)
	}
	switch m := binary.LittleEndian.Uint32(fixed[0:]); m {
	case Magic:
	case 0x0d1faed3:
		return nil, fmt.Errorf("%w: written by a big-endian server, which walship does not read", ErrFormat)
	default:
		return nil, fmt.Errorf("%w: magic %#08x, want %#08x", ErrFormat, m, Magic)
	}
	n := binary.LittleEndian.Uint32(fixed[4:])
	h := &Header{Truncate: binary.LittleEndian.Uint32(fixed[8:])}
	if n > SegmentBlocks {
		return nil, fmt.Errorf("%w: %d blocks, more than a segment's %d", ErrFormat, n, SegmentBlocks)
	}
	if n > 0 {
		raw := make([]byte, 4*n)
		if _, err := io.ReadFull(r, raw); err != nil {
			return nil, readErr("block numbers", err)
		}
		h.Blocks = make([]uint32, n)
		for i := range h.Blocks {
			h.Blocks[i] = binary.LittleEndian.Uint32(raw[4*i:])
		}
	}
	if err := h.check(); err != nil {
		return nil, err
	}
	if pad := h.Size() - fixedSize - 4*int64(n); pad > 0 {
		if _, err := io.CopyN(io.Discard, r, pad); err != nil {
			return nil, readErr("header padding", err)
		}
	}
	return h, nil
}

// readErr: a file that ends early (a short read, with or without an
// error) is not an incremental file; any other error is the reader's own.
func readErr(what string, err error) error {
	if err == nil || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("%w: it ends inside its %s", ErrFormat, what)
	}
	return fmt.Errorf("incremental file %s: %w", what, err)
}

// AppendHeader appends h as the server writes it, padding included.
func AppendHeader(dst []byte, h *Header) []byte {
	dst = binary.LittleEndian.AppendUint32(dst, Magic)
	dst = binary.LittleEndian.AppendUint32(dst, uint32(len(h.Blocks)))
	dst = binary.LittleEndian.AppendUint32(dst, h.Truncate)
	for _, b := range h.Blocks {
		dst = binary.LittleEndian.AppendUint32(dst, b)
	}
	pad := h.Size() - fixedSize - 4*int64(len(h.Blocks))
	return append(dst, make([]byte, pad)...)
}

// Name splits an incremental file's name: "base/5/INCREMENTAL.16384" is
// the incremental form of "base/5/16384".
func Name(path string) (rel string, ok bool) {
	dir, base := "", path
	if i := strings.LastIndexByte(path, '/'); i >= 0 {
		dir, base = path[:i+1], path[i+1:]
	}
	if !strings.HasPrefix(base, Prefix) || len(base) == len(Prefix) {
		return "", false
	}
	return dir + base[len(Prefix):], true
}
