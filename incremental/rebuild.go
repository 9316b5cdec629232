package incremental

import (
	"errors"
	"fmt"
	"io"
)

// ErrNoFull is wrapped when the chain holds the file only in incremental
// form, so the blocks its incrementals do not carry are in no backup.
var ErrNoFull = errors.New("no backup of the chain holds the file in full")

// Target is a relation file being rebuilt in place (an *os.File).
type Target interface {
	io.WriterAt
	Truncate(size int64) error
}

// Apply patches f, which holds the file as the chain's older backups left
// it, with one incremental file: h, and its block images read from r.
//
// Applied oldest first, incrementals give what pg_combinebackup's
// newest-first search gives, provided only the newest one's truncation is
// applied (newest true, at the start): every block an incremental carries
// overwrites what older backups left, so the newest copy of each block
// wins; a full copy in a backup replaces the file (the caller's part), so
// the search ends there; and pg_combinebackup reads a block of an older
// backup whenever it lies below the newest truncation length, whatever
// the truncation lengths of the backups between say. Cutting the file at
// an older incremental's length would zero such a block (a relation
// truncated, then grown again without WAL for that block) where
// pg_combinebackup keeps the older image, so older lengths are ignored.
// The newest cut comes first: blocks at or above the newest length exist
// only if the newest file carries them, and the holes between are zeros;
// below it, blocks no backup carries are zeros too, as pg_combinebackup
// fills them.
//
// buf, if at least BlockSize, is used for reading; runs of consecutive
// blocks are written with one call per buffer.
func Apply(f Target, h *Header, r io.Reader, newest bool, buf []byte) error {
	if err := h.check(); err != nil {
		return err
	}
	if len(buf) < BlockSize {
		buf = make([]byte, 64*BlockSize)
	}
	per := len(buf) / BlockSize
	if newest {
		if err := f.Truncate(int64(h.Truncate) * BlockSize); err != nil {
			return fmt.Errorf("incremental rebuild: truncate: %w", err)
		}
	}
	for i := 0; i < len(h.Blocks); {
		// A run of consecutive block numbers, at most per long.
		n := 1
		for n < per && i+n < len(h.Blocks) && h.Blocks[i+n] == h.Blocks[i]+uint32(n) {
			n++
		}
		chunk := buf[:n*BlockSize]
		if _, err := io.ReadFull(r, chunk); err != nil {
			return readErr("block images", err)
		}
		if _, err := f.WriteAt(chunk, int64(h.Blocks[i])*BlockSize); err != nil {
			return fmt.Errorf("incremental rebuild: write: %w", err)
		}
		i += n
	}
	return nil
}

// Source is one backup's copy of a relation file, for Reconstruct: a full
// file of Size bytes (Header nil), or an incremental file, whole, header
// included.
type Source struct {
	R      io.ReaderAt
	Header *Header
	Size   int64
}

// blockRef says where a rebuilt block comes from: source src (-1: zeros),
// at byte offset off.
type blockRef struct {
	src int32
	off int64
}

// Reconstruct writes to w the file chain describes, chain[0] the newest
// backup's copy: pg_combinebackup's reconstruction. Each block below the
// rebuilt length comes from the newest copy that has it; the newest
// incremental's blocks always, older incrementals' blocks and a full
// copy's only below the newest truncation length; the first full copy
// ends the search. Blocks no copy has are zeros. Memory is a few bytes per
// block of one segment file, and one block buffer. It returns the bytes
// written.
func Reconstruct(w io.Writer, chain []Source) (int64, error) {
	if len(chain) == 0 {
		return 0, ErrNoFull
	}
	if chain[0].Header == nil {
		return io.Copy(w, io.NewSectionReader(chain[0].R, 0, chain[0].Size))
	}
	refs, err := plan(chain)
	if err != nil {
		return 0, err
	}
	buf := make([]byte, BlockSize)
	var done int64
	for _, ref := range refs {
		clear(buf)
		if ref.src >= 0 {
			if n, err := chain[ref.src].R.ReadAt(buf, ref.off); n < len(buf) {
				return done, readErr("block image", err)
			}
		}
		n, err := w.Write(buf)
		done += int64(n)
		if err != nil {
			return done, err
		}
	}
	return done, nil
}

// plan maps each block of the rebuilt file to its source.
func plan(chain []Source) ([]blockRef, error) {
	newest := chain[0].Header
	if err := newest.check(); err != nil {
		return nil, err
	}
	refs := make([]blockRef, newest.Length())
	for i := range refs {
		refs[i].src = -1
	}
	for i, b := range newest.Blocks {
		refs[b] = blockRef{0, newest.Size() + int64(i)*BlockSize}
	}
	limit := newest.Truncate
	for s := 1; s < len(chain); s++ {
		src := chain[s]
		if src.Header == nil {
			for b := uint32(0); b < limit && int64(b) < src.Size/BlockSize; b++ {
				if refs[b].src < 0 {
					refs[b] = blockRef{int32(s), int64(b) * BlockSize}
				}
			}
			return refs, nil
		}
		if err := src.Header.check(); err != nil {
			return nil, err
		}
		for i, b := range src.Header.Blocks {
			if b < limit && refs[b].src < 0 {
				refs[b] = blockRef{int32(s), src.Header.Size() + int64(i)*BlockSize}
			}
		}
	}
	return nil, ErrNoFull
}
