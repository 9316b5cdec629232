package testenv

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"testing"

	"github.com/walship/walship/segment"
)

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
	le := binary.LittleEndian
	le.PutUint16(b[0:], 0xD110)
	le.PutUint16(b[2:], 2)
	le.PutUint32(b[4:], f.TLI)
	le.PutUint64(b[8:], no*size)
	le.PutUint64(b[24:], sysID)
	le.PutUint32(b[32:], size)
	le.PutUint32(b[36:], 8192)
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
