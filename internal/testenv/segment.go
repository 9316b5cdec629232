package testenv

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"testing"

	"github.com/walship/walship/segment"
)

// PutLongHeader writes into seg, a whole segment of len(seg) bytes, the
// long page header PostgreSQL 15 starts segment segNo of timeline tli
// with: magic, XLP_LONG_HEADER, the page's address, the system
// identifier, the segment size and 8 KiB pages.
func PutLongHeader(seg []byte, tli uint32, segNo, sysID uint64) {
	le := binary.LittleEndian
	le.PutUint16(seg[0:], 0xD110)
	le.PutUint16(seg[2:], 2)
	le.PutUint32(seg[4:], tli)
	le.PutUint64(seg[8:], segNo*uint64(len(seg)))
	le.PutUint64(seg[24:], sysID)
	le.PutUint32(seg[32:], uint32(len(seg)))
	le.PutUint32(seg[36:], 8192)
}

// WriteSegment writes a synthetic 1 MiB PostgreSQL 15 segment called name
// into dir, with a long page header that agrees with the name and sysID,
// then lets mutate alter it. It returns the path.
func WriteSegment(t testing.TB, dir, name string, sysID uint64, mutate func([]byte)) string {
	t.Helper()
	const size = 1 << 20
	f, err := segment.ParseFile(name[:24])
	if err != nil {
		t.Fatal(err)
	}
	no, _ := f.SegNo(size)
	b := make([]byte, size)
	PutLongHeader(b, f.TLI, no, sysID)
	for i := 64; i < size; i += 97 {
		b[i] = byte(i)
	}
	if mutate != nil {
		mutate(b)
	}
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}
