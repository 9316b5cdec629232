package incremental

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"testing"
)

// memFile is an in-memory Target.
type memFile struct{ b []byte }

func (m *memFile) WriteAt(p []byte, off int64) (int, error) {
	if end := off + int64(len(p)); end > int64(len(m.b)) {
		m.b = append(m.b, make([]byte, end-int64(len(m.b)))...)
	}
	return copy(m.b[off:], p), nil
}

func (m *memFile) Truncate(size int64) error {
	if size <= int64(len(m.b)) {
		m.b = m.b[:size]
	} else {
		m.b = append(m.b, make([]byte, size-int64(len(m.b)))...)
	}
	return nil
}

// image is block b's content in backup s: every byte of it says which.
func image(s, b int) []byte {
	p := bytes.Repeat([]byte{byte(s)}, BlockSize)
	binary.LittleEndian.PutUint32(p, uint32(b))
	p[BlockSize-1] = byte(b)
	return p
}

// full is backup s's full copy of a file of n blocks.
func full(s, n int) []byte {
	var out []byte
	for b := range n {
		out = append(out, image(s, b)...)
	}
	return out
}

// incr is backup s's incremental file carrying blocks with truncation t.
func incr(s int, t uint32, blocks ...uint32) []byte {
	h := &Header{Blocks: blocks, Truncate: t}
	out := AppendHeader(nil, h)
	for _, b := range blocks {
		out = append(out, image(s, int(b))...)
	}
	return out
}

// version is one backup's copy in a test chain: a full file or an
// incremental file, as bytes.
type version struct {
	data []byte
	full bool
}

// rebuildBoth rebuilds the file from chain (oldest first) newest first
// with Reconstruct and oldest first with Apply, and checks they agree.
func rebuildBoth(t testing.TB, chain []version) ([]byte, error) {
	t.Helper()
	var srcs []Source
	for i := len(chain) - 1; i >= 0; i-- {
		v := chain[i]
		s := Source{R: bytes.NewReader(v.data), Size: int64(len(v.data))}
		if !v.full {
			h, err := ReadHeader(bytes.NewReader(v.data))
			if err != nil {
				return nil, err
			}
			s.Header = h
		}
		srcs = append(srcs, s)
	}
	var want bytes.Buffer
	n, rerr := Reconstruct(&want, srcs)
	if rerr == nil && n != int64(want.Len()) {
		t.Fatalf("Reconstruct says %d bytes, wrote %d", n, want.Len())
	}
	f := &memFile{}
	var aerr error
	for i, v := range chain {
		if v.full {
			f.b = append([]byte(nil), v.data...)
			continue
		}
		r := bytes.NewReader(v.data)
		h, err := ReadHeader(r)
		if err != nil {
			return nil, err
		}
		if i == 0 {
			aerr = ErrNoFull // an incremental with nothing under it
			break
		}
		if err := Apply(f, h, r, i == len(chain)-1, make([]byte, 3*BlockSize)); err != nil {
			t.Fatalf("Apply: %v", err)
		}
	}
	if (rerr == nil) != (aerr == nil) {
		t.Fatalf("Reconstruct: %v, Apply: %v", rerr, aerr)
	}
	if rerr == nil && !bytes.Equal(want.Bytes(), f.b) {
		t.Fatalf("Apply oldest first differs from Reconstruct newest first:\nreconstruct %s\napply       %s", describe(want.Bytes()), describe(f.b))
	}
	return want.Bytes(), rerr
}

// describe lists each block as backup:block ("z" for zeros).
func describe(b []byte) string {
	var s []string
	for off := 0; off+BlockSize <= len(b); off += BlockSize {
		p := b[off : off+BlockSize]
		if bytes.Equal(p, make([]byte, BlockSize)) {
			s = append(s, "z")
			continue
		}
		s = append(s, fmt.Sprintf("%d:%d", p[4], binary.LittleEndian.Uint32(p)))
	}
	if len(b)%BlockSize != 0 {
		s = append(s, fmt.Sprintf("+%d", len(b)%BlockSize))
	}
	return fmt.Sprint(s)
}

func TestRebuild(t *testing.T) {
	for _, tc := range []struct {
		name  string
		chain []version
		want  string
	}{
		{"unchanged", []version{{full(1, 3), true}, {incr(2, 3), false}}, "[1:0 1:1 1:2]"},
		{"changed block", []version{{full(1, 3), true}, {incr(2, 3, 1), false}}, "[1:0 2:1 1:2]"},
		// VACUUM cut the relation to 2 blocks; the newest truncation
		// length drops the full copy's tail.
		{"truncated", []version{{full(1, 5), true}, {incr(2, 2), false}}, "[1:0 1:1]"},
		{"truncated with a change", []version{{full(1, 5), true}, {incr(2, 2, 0), false}}, "[2:0 1:1]"},
		// The relation grew: the new blocks are in the incremental.
		{"grew", []version{{full(1, 2), true}, {incr(2, 5, 2, 3, 4), false}}, "[1:0 1:1 2:2 2:3 2:4]"},
		// Blocks beyond the truncation length the file does not carry are
		// zeros, not the older backup's.
		{"beyond the truncation length", []version{{full(1, 6), true}, {incr(2, 2, 4), false}}, "[1:0 1:1 z z 2:4]"},
		// A block in no backup, below the truncation length (the server
		// extended the file without WAL for it): zeros, as
		// pg_combinebackup fills it.
		{"block in no backup", []version{{full(1, 2), true}, {incr(2, 4, 3), false}}, "[1:0 1:1 z 2:3]"},
		// Two incrementals: the newest copy of each block wins.
		{"chain", []version{{full(1, 4), true}, {incr(2, 4, 1, 2), false}, {incr(3, 4, 2), false}}, "[1:0 2:1 3:2 1:3]"},
		// Truncated in the middle, grown again: pg_combinebackup reads
		// below the newest truncation length from older backups whatever
		// the middle one's length says.
		{"truncated then regrown", []version{{full(1, 4), true}, {incr(2, 1), false}, {incr(3, 4, 1, 2), false}}, "[1:0 3:1 3:2 1:3]"},
		{"middle truncation, newest longer", []version{{full(1, 3), true}, {incr(2, 1, 0), false}, {incr(3, 3), false}}, "[2:0 1:1 1:2]"},
		// A full copy in the middle of the chain ends the search.
		{"full in the middle", []version{{full(1, 4), true}, {incr(2, 4, 3), false}, {full(3, 2), true}, {incr(4, 3, 2), false}}, "[3:0 3:1 4:2]"},
		{"newest full", []version{{full(1, 4), true}, {incr(2, 4, 3), false}, {full(3, 2), true}}, "[3:0 3:1]"},
		// An empty relation.
		{"emptied", []version{{full(1, 3), true}, {incr(2, 0), false}}, "[]"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := rebuildBoth(t, tc.chain)
			if err != nil {
				t.Fatal(err)
			}
			if describe(got) != tc.want {
				t.Errorf("got %s, want %s", describe(got), tc.want)
			}
		})
	}
}

func TestNoFullCopy(t *testing.T) {
	_, err := rebuildBoth(t, []version{{incr(1, 2, 0), false}, {incr(2, 2, 1), false}})
	if !errors.Is(err, ErrNoFull) {
		t.Fatalf("chain of incrementals only: %v", err)
	}
	if _, err := Reconstruct(io.Discard, nil); !errors.Is(err, ErrNoFull) {
		t.Fatalf("empty chain: %v", err)
	}
}

func TestHeader(t *testing.T) {
	h := &Header{Blocks: []uint32{7, 3, 9}, Truncate: 12}
	b := AppendHeader(nil, h)
	if len(b) != BlockSize || h.Size() != BlockSize || h.FileSize() != 4*BlockSize || h.Length() != 12 {
		t.Fatalf("sizes: header %d, Size %d, FileSize %d, Length %d", len(b), h.Size(), h.FileSize(), h.Length())
	}
	// As PostgreSQL lays it out: magic, count, truncation, numbers, zeros.
	want := []uint32{Magic, 3, 12, 7, 3, 9}
	for i, w := range want {
		if got := binary.LittleEndian.Uint32(b[4*i:]); got != w {
			t.Errorf("word %d: %#x, want %#x", i, got, w)
		}
	}
	if !bytes.Equal(b[24:], make([]byte, BlockSize-24)) {
		t.Error("padding is not zeros")
	}
	got, err := ReadHeader(bytes.NewReader(append(b, 'x')))
	if err != nil || fmt.Sprint(got.Blocks) != "[7 3 9]" || got.Truncate != 12 {
		t.Fatalf("ReadHeader: %+v, %v", got, err)
	}
	// No blocks: 12 bytes, no padding.
	e := &Header{Truncate: 5}
	if n := len(AppendHeader(nil, e)); n != 12 || e.FileSize() != 12 || e.Length() != 5 {
		t.Fatalf("empty header: %d bytes, FileSize %d", n, e.FileSize())
	}
	// A block beyond the truncation length lengthens the file.
	if g := (&Header{Blocks: []uint32{9}, Truncate: 2}).Length(); g != 10 {
		t.Errorf("Length %d, want 10", g)
	}
	if err := h.CheckSize(4 * BlockSize); err != nil {
		t.Error(err)
	}
	// A 16 KiB-block server's file with the same header is refused.
	if err := h.CheckSize(2*BlockSize + 3*2*BlockSize); !errors.Is(err, ErrFormat) {
		t.Errorf("another block size: %v", err)
	}
}

func TestReadHeaderRefuses(t *testing.T) {
	word := func(ws ...uint32) []byte {
		var b []byte
		for _, w := range ws {
			b = binary.LittleEndian.AppendUint32(b, w)
		}
		return b
	}
	padded := func(b []byte) []byte { return append(b, make([]byte, BlockSize-len(b))...) }
	for name, b := range map[string][]byte{
		"empty":             nil,
		"short":             word(Magic, 1),
		"bad magic":         word(0x12345678, 0, 0),
		"big-endian":        word(0x0d1faed3, 0, 0),
		"too many blocks":   word(Magic, SegmentBlocks+1, 0),
		"truncation":        word(Magic, 0, SegmentBlocks+1),
		"cut block numbers": word(Magic, 2, 3, 1),
		"block beyond":      padded(word(Magic, 1, 3, SegmentBlocks)),
		"duplicate":         padded(word(Magic, 2, 3, 1, 1)),
		"cut padding":       word(Magic, 1, 3, 1, 0),
	} {
		if _, err := ReadHeader(bytes.NewReader(b)); !errors.Is(err, ErrFormat) {
			t.Errorf("%s: %v", name, err)
		}
	}
	// A reader's own failure keeps its error.
	boom := errors.New("boom")
	if _, err := ReadHeader(io.MultiReader(bytes.NewReader(word(Magic)), iotestErr{boom})); !errors.Is(err, boom) || errors.Is(err, ErrFormat) {
		t.Errorf("reader error: %v", err)
	}
}

type iotestErr struct{ err error }

func (e iotestErr) Read([]byte) (int, error) { return 0, e.err }

func TestApplyShortImages(t *testing.T) {
	b := incr(2, 3, 0, 1)
	r := bytes.NewReader(b[:len(b)-1])
	h, err := ReadHeader(r)
	if err != nil {
		t.Fatal(err)
	}
	if err := Apply(&memFile{b: full(1, 3)}, h, r, true, nil); !errors.Is(err, ErrFormat) {
		t.Fatalf("cut block image: %v", err)
	}
}

func TestName(t *testing.T) {
	for in, want := range map[string]string{
		"base/5/INCREMENTAL.16384":        "base/5/16384",
		"INCREMENTAL.1_vm":                "1_vm",
		"global/INCREMENTAL.1262.1":       "global/1262.1",
		"base/5/16384":                    "",
		"base/5/INCREMENTAL.":             "",
		"base/INCREMENTAL.x/16384":        "",
		"PG_17_202406281/5/INCREMENTAL.7": "PG_17_202406281/5/7",
	} {
		got, ok := Name(in)
		if got != want || ok != (want != "") {
			t.Errorf("Name(%q) = %q, %v; want %q", in, got, ok, want)
		}
	}
}
