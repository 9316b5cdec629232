package spool

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"syscall"

	"github.com/walship/walship/archive"

	"github.com/walship/walship/segment"
)

// VerifyFile opens a spool file as fetch would and checks its size and
// page header.
func VerifyFile(path, name string, segSize, sysID uint64) error {
	f, err := OpenFile(path)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = CheckOpenFile(f, name, segSize, sysID)
	return err
}

// OpenFile opens without following a symbolic link and without
// blocking on a FIFO.
func OpenFile(path string) (*os.File, error) {
	return os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
}

// CheckOpenFile checks that f is a regular file of segSize bytes whose
// page header agrees with name and the cluster sysID.
func CheckOpenFile(f *os.File, name string, segSize, sysID uint64) (fs.FileInfo, error) {
	file, err := segment.ParseFile(name)
	if err != nil {
		return nil, err
	}
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, errors.New(archive.NotRegular(fi.Mode()))
	}
	if uint64(fi.Size()) != segSize {
		return nil, fmt.Errorf("%d bytes, segments are %d", fi.Size(), segSize)
	}
	var b [segment.LongHeaderSize]byte
	if _, err := io.ReadFull(io.NewSectionReader(f, 0, int64(len(b))), b[:]); err != nil {
		return nil, fmt.Errorf("read page header: %w", err)
	}
	h, err := segment.ParseHeader(b[:])
	if err == nil {
		err = segment.CheckHeader(h, file, fi.Size(), sysID)
	}
	return fi, err
}
