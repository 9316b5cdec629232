// Package mapfile reads a whole file without copying it: on Unix a
// read-only private mapping of its pages, which for a WAL segment that
// PostgreSQL has just written are already in the page cache. A fresh 16 MiB
// buffer costs 4096 page faults and a copy before the first byte is used;
// measured on the 2-core test machine, read(2) into one took 16 ms, the
// mapping 1.5-2.5 ms (docs/BENCHMARKS.md, "Process start").
//
// The bytes of a mapping follow the file: the caller must know that nobody
// writes or truncates it while they are in use (PostgreSQL never touches a
// segment between marking it .ready and archive_command's success). Reading
// past the end of a file truncated meanwhile kills the process with SIGBUS,
// which is a failure, never a false success.
package mapfile

import (
	"errors"
	"fmt"
	"io"
	"os"
)

// ErrChanged is wrapped when the file's size changed while it was read.
var ErrChanged = errors.New("file changed size while being read")

// Read returns the first size bytes of f, which must be a regular file of
// that size, and a function that releases them; the bytes must not be used
// after release. Where mapping is not possible the bytes are read into a
// new buffer and release does nothing.
func Read(f *os.File, size int64) ([]byte, func(), error) {
	if size > 0 {
		if b, release, err := mapFile(f, size); err == nil {
			// The size again: a file cut before the mapping was made
			// must fail here, not on first touch.
			st, err := f.Stat()
			if err != nil || st.Size() != size {
				release()
				if err != nil {
					return nil, nil, err
				}
				return nil, nil, fmt.Errorf("%w: %d bytes, then %d", ErrChanged, size, st.Size())
			}
			return b, release, nil
		}
	}
	b := make([]byte, size)
	if _, err := io.ReadFull(f, b); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
			return nil, nil, fmt.Errorf("%w: shorter than %d bytes", ErrChanged, size)
		}
		return nil, nil, err
	}
	var one [1]byte
	if n, _ := f.Read(one[:]); n > 0 {
		return nil, nil, fmt.Errorf("%w: longer than %d bytes", ErrChanged, size)
	}
	return b, func() {}, nil
}
