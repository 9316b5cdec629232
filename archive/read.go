package archive

import (
	"fmt"
	"os"
	"sync"
	"syscall"

	"github.com/walship/walship/segment"
)

// localFile is a file read for pushing: its bytes, and what fstat said of
// the file as it was read (see fileStamp). release gives the buffer back;
// raw must not be used after it.
type localFile struct {
	raw     []byte
	stamp   fileStamp
	stamped bool // the platform gave a full stamp (device, inode, ctime)
	release func()
}

// readLocal reads the file to push. Segments must be a valid segment size
// (the header check compares it with what the header says); small files are
// bounded. Only a regular file is opened: opening a FIFO for reading blocks
// until a writer comes, where no signal gets push out. The open is
// non-blocking in case path changes kind after the stat, and the open file
// is checked again. A file that changes while it is read is refused.
//
// Segments are read into a buffer from a process-wide pool (readBuffer),
// not a fresh zeroed 16 MiB slice each time.
func readLocal(path string, f segment.File) (localFile, error) {
	st, err := os.Stat(path)
	if err != nil {
		return localFile{}, fmt.Errorf("%w: %w", ErrLocal, err)
	}
	if !st.Mode().IsRegular() {
		return localFile{}, notRegularFile(path, st.Mode())
	}
	fh, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return localFile{}, fmt.Errorf("%w: %w", ErrLocal, err)
	}
	defer fh.Close()
	st, err = fh.Stat()
	if err != nil {
		return localFile{}, fmt.Errorf("%w: %w", ErrLocal, err)
	}
	if !st.Mode().IsRegular() {
		return localFile{}, notRegularFile(path, st.Mode())
	}
	size := st.Size()
	lf := localFile{release: func() {}}
	switch f.Kind {
	case segment.KindSegment, segment.KindPartial:
		if size < segment.LongHeaderSize || size > segment.MaxSegmentSize {
			return lf, fmt.Errorf("%s: %w: %d bytes is no WAL segment size (truncated?)", path, segment.ErrBadHeader, size)
		}
		buf := readBuffer(int(size))
		lf.raw, lf.release = buf[:size], func() { returnBuffer(buf) }
	default:
		if size > maxSmallFile {
			return lf, fmt.Errorf("%s: %w: %d bytes is too large for a %s", path, segment.ErrBadHeader, size, f.Kind)
		}
		lf.raw = make([]byte, size)
	}
	lf.stamp, lf.stamped = stampOf(st)
	n, err := readFull(fh, lf.raw)
	if err == nil && int64(n) != size {
		err = fmt.Errorf("%w: %s changed size while being read", ErrLocal, path)
	} else if err != nil {
		err = fmt.Errorf("%w: read %s: %w", ErrLocal, path, err)
	}
	if err == nil {
		if after, aerr := fh.Stat(); aerr != nil {
			err = fmt.Errorf("%w: %w", ErrLocal, aerr)
		} else if s, ok := stampOf(after); ok != lf.stamped || s != lf.stamp {
			err = fmt.Errorf("%w: %s changed while being read", ErrLocal, path)
		}
	}
	if err != nil {
		lf.release()
		return localFile{}, err
	}
	return lf, nil
}

func notRegularFile(path string, m os.FileMode) error {
	return fmt.Errorf("%w: %s is %s; refusing to read it", ErrLocal, path, NotRegular(m))
}

// NotRegular says what a file that is not a regular file is, as "a named
// pipe (FIFO), not a regular file".
func NotRegular(m os.FileMode) string {
	kind := "special file"
	switch {
	case m&os.ModeNamedPipe != 0:
		kind = "named pipe (FIFO)"
	case m.IsDir():
		kind = "directory"
	case m&os.ModeSymlink != 0:
		kind = "symbolic link"
	case m&os.ModeSocket != 0:
		kind = "socket"
	case m&os.ModeCharDevice != 0:
		kind = "character device"
	case m&os.ModeDevice != 0:
		kind = "block device"
	}
	return "a " + kind + ", not a regular file"
}

func readFull(f *os.File, buf []byte) (int, error) {
	n := 0
	for n < len(buf) {
		m, err := f.Read(buf[n:])
		n += m
		if err != nil {
			if n == len(buf) {
				return n, nil
			}
			return n, err
		}
		if m == 0 {
			break
		}
	}
	return n, nil
}

// The segment read buffers. A push process reads one or a few segments and
// exits, so what a read costs is mostly the first touch of fresh memory:
// 4096 page faults for 16 MiB of Go heap. allocBuffer asks the kernel for
// huge pages where it can (buffer_linux.go), which makes that first touch
// several times cheaper, and buffers are reused across the segments of a
// call and the calls of a process. They are never unmapped: a request
// abandoned on a timeout may still read its body for a moment after the
// call returned, and must not find the memory gone. The free list is
// bounded; what exceeds it is left to the garbage collector or the
// process's end.
var bufPool struct {
	mu   sync.Mutex
	free map[int][][]byte // by capacity
}

const maxFreeBuffers = 64

// readBuffer returns a buffer of at least size bytes. Its contents are
// whatever the last user left; readers overwrite all of it.
func readBuffer(size int) []byte {
	c := bufferCap(size)
	bufPool.mu.Lock()
	if l := bufPool.free[c]; len(l) > 0 {
		b := l[len(l)-1]
		bufPool.free[c] = l[:len(l)-1]
		bufPool.mu.Unlock()
		return b
	}
	bufPool.mu.Unlock()
	return allocBuffer(c)
}

func returnBuffer(b []byte) {
	c := cap(b)
	bufPool.mu.Lock()
	defer bufPool.mu.Unlock()
	if bufPool.free == nil {
		bufPool.free = make(map[int][][]byte)
	}
	if len(bufPool.free[c]) < maxFreeBuffers {
		bufPool.free[c] = append(bufPool.free[c], b[:c])
	}
}

// bufferCap rounds size up to a power of two, so that the segments of one
// cluster (all the same size) share buffers; a .partial file is the full
// segment size too.
func bufferCap(size int) int {
	c := 1 << 16
	for c < size {
		c <<= 1
	}
	return c
}
