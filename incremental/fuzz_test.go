package incremental

import (
	"bytes"
	"testing"
)

// FuzzReadHeader: any bytes either parse into a header that writes back
// as the same bytes, or fail with ErrFormat; never a panic or a huge
// allocation.
func FuzzReadHeader(f *testing.F) {
	f.Add(AppendHeader(nil, &Header{Blocks: []uint32{0, 5, 2}, Truncate: 9}))
	f.Add(AppendHeader(nil, &Header{Truncate: 3}))
	f.Add([]byte{0x0d, 0x1f, 0xae, 0xd3, 1, 0, 0, 0, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		r := bytes.NewReader(b)
		h, err := ReadHeader(r)
		if err != nil {
			return
		}
		used := len(b) - r.Len()
		if int64(used) != h.Size() {
			t.Fatalf("read %d bytes of header, Size says %d", used, h.Size())
		}
		again := AppendHeader(nil, h)
		if !bytes.Equal(again[:12+4*len(h.Blocks)], b[:12+4*len(h.Blocks)]) {
			t.Fatalf("header does not write back as read")
		}
		if h.Length() < h.Truncate || h.Length() > SegmentBlocks {
			t.Fatalf("length %d with truncation %d", h.Length(), h.Truncate)
		}
	})
}

// FuzzRebuild builds a chain from the fuzzer's bytes (a full copy, then
// incrementals with any truncation lengths and block sets, perhaps another
// full copy between) and checks that Apply, oldest first, and Reconstruct,
// newest first, give the same file, and that it has the newest header's
// length.
func FuzzRebuild(f *testing.F) {
	f.Add([]byte{4, 1, 0b1010, 3, 0b0110, 0xff, 2, 0b1})
	f.Add([]byte{8, 2, 0b11110000, 0, 0, 6, 0b100000})
	f.Add([]byte{1, 12, 0b1, 0b10, 0xfe, 3})
	f.Fuzz(func(t *testing.T, spec []byte) {
		if len(spec) == 0 || len(spec) > 64 {
			return
		}
		// spec: full length, then per backup: truncation length and a
		// 16-bit block set (0xfe as the length: a full copy of the next
		// byte's length instead).
		chain := []version{{full(1, int(spec[0]%24)), true}}
		var last *Header
		for i, s := 1, 2; i+1 < len(spec); s++ {
			if spec[i] == 0xfe {
				chain = append(chain, version{full(s, int(spec[i+1]%24)), true})
				last, i = nil, i+2
				continue
			}
			h := &Header{Truncate: uint32(spec[i] % 24)}
			set := uint16(spec[i+1])
			if i+2 < len(spec) {
				set |= uint16(spec[i+2]) << 8
			}
			for b := range uint32(16) {
				if set&(1<<b) != 0 {
					h.Blocks = append(h.Blocks, b+uint32(spec[i]%3))
				}
			}
			chain = append(chain, version{incr(s, h.Truncate, h.Blocks...), false})
			last, i = h, i+3
		}
		got, err := rebuildBoth(t, chain)
		if err != nil {
			t.Fatal(err)
		}
		if last != nil && int64(len(got)) != int64(last.Length())*BlockSize {
			t.Fatalf("rebuilt %d bytes, the newest header says %d blocks", len(got), last.Length())
		}
	})
}
