package mapfile

import (
	"bytes"
	"crypto/rand"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

func TestRead(t *testing.T) {
	dir := t.TempDir()
	for _, size := range []int{0, 1, 4095, 4096, 16<<20 + 3} {
		want := make([]byte, size)
		_, _ = rand.Read(want)
		p := filepath.Join(dir, "f")
		if err := os.WriteFile(p, want, 0o600); err != nil {
			t.Fatal(err)
		}
		f, err := os.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		got, release, err := Read(f, int64(size))
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("size %d: %v", size, err)
		}
		release()
		release() // twice is harmless
		_ = f.Close()
	}
}

// A size that is not the file's is refused, whichever way it differs.
func TestReadSizeChanged(t *testing.T) {
	p := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(p, make([]byte, 8192), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, size := range []int64{4096, 8193, 1 << 20} {
		f, _ := os.Open(p)
		if _, _, err := Read(f, size); !errors.Is(err, ErrChanged) {
			t.Errorf("size %d of an 8192-byte file: %v, want ErrChanged", size, err)
		}
		_ = f.Close()
	}
}
