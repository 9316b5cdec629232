package archive

import "syscall"

// hugePage is the size of a transparent huge page on amd64 and arm64.
const hugePage = 2 << 20

// allocBuffer maps size bytes of anonymous memory aligned to a huge page
// and asks for transparent huge pages (honoured where THP is "always" or
// "madvise", the common defaults; with "never" these are ordinary pages,
// no worse than the Go heap). It falls back to the heap if the mapping
// fails. The mapping is never unmapped (see bufPool).
func allocBuffer(size int) []byte {
	if size < hugePage {
		return make([]byte, size)
	}
	m, err := syscall.Mmap(-1, 0, size+hugePage, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_PRIVATE|syscall.MAP_ANON)
	if err != nil {
		return make([]byte, size)
	}
	off := 0
	if r := uintptrOf(m) % hugePage; r != 0 {
		off = int(hugePage - r)
	}
	b := m[off : off+size : off+size]
	_ = syscall.Madvise(b, 14) // MADV_HUGEPAGE; a kernel without THP says EINVAL
	return b
}
