//go:build unix

package mapfile

import (
	"os"
	"sync"
	"syscall"
)

func mapFile(f *os.File, size int64) ([]byte, func(), error) {
	if int64(int(size)) != size {
		return nil, nil, syscall.EFBIG
	}
	flags := syscall.MAP_PRIVATE | populate
	b, err := syscall.Mmap(int(f.Fd()), 0, int(size), syscall.PROT_READ, flags)
	if err != nil {
		return nil, nil, err
	}
	var once sync.Once
	return b, func() { once.Do(func() { _ = syscall.Munmap(b) }) }, nil
}
