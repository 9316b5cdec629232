package segment

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// LongHeaderSize is the size of XLogLongPageHeaderData, which opens the first
// page of every segment.
const LongHeaderSize = 40

// xlp_info flag that marks the long header.
const xlpLongHeader = 0x0002

// ErrBadHeader is wrapped by every error about a segment whose first page does
// not say what its name and the archive say it should.
var ErrBadHeader = errors.New("bad WAL page header")

// magicVersions maps XLOG_PAGE_MAGIC to the PostgreSQL major version that
// writes it. The magic changes whenever the WAL format does, so it is how a
// segment tells which server produced it.
var magicVersions = map[uint16]string{
	0xD093: "9.6",
	0xD097: "10",
	0xD098: "11",
	0xD101: "12",
	0xD106: "13",
	0xD10D: "14",
	0xD110: "15",
	0xD113: "16",
	0xD116: "17",
	0xD118: "18",
	0xD121: "19", // from 19beta3 on (19's earlier betas wrote 0xD120, refused)
}

// newestMagic is the highest magic walship knows; a higher one in the same
// range is a newer PostgreSQL, and is refused by name rather than taken for
// damage.
const newestMagic = 0xD121

// Supported names the majors walship archives, for refusals.
const Supported = "PostgreSQL 9.6 to 19"

// VersionForMagic returns the PostgreSQL major version that writes magic.
func VersionForMagic(magic uint16) (string, bool) {
	v, ok := magicVersions[magic]
	return v, ok
}

// Header is the long page header at the start of a segment. WAL is written in
// the server's byte order; walship reads little-endian, the order of every
// platform PostgreSQL is commonly deployed on, and a big-endian segment fails
// the magic check rather than being misread.
type Header struct {
	Magic     uint16
	Info      uint16
	TLI       uint32
	PageAddr  LSN
	RemLen    uint32
	SysID     uint64
	SegSize   uint32
	BlockSize uint32
}

// ParseHeader decodes the long page header from the first bytes of a segment.
// It checks only what the header says of itself: a known magic, the long-header
// flag, and sizes PostgreSQL can have. CheckHeader compares it with the name.
func ParseHeader(b []byte) (Header, error) {
	if len(b) < LongHeaderSize {
		return Header{}, fmt.Errorf("%w: %d bytes, need %d", ErrBadHeader, len(b), LongHeaderSize)
	}
	le := binary.LittleEndian
	h := Header{
		Magic:     le.Uint16(b[0:]),
		Info:      le.Uint16(b[2:]),
		TLI:       le.Uint32(b[4:]),
		PageAddr:  LSN(le.Uint64(b[8:])),
		RemLen:    le.Uint32(b[16:]),
		SysID:     le.Uint64(b[24:]),
		SegSize:   le.Uint32(b[32:]),
		BlockSize: le.Uint32(b[36:]),
	}
	if _, ok := magicVersions[h.Magic]; !ok {
		return h, unknownMagic(h.Magic)
	}
	if h.Info&xlpLongHeader == 0 {
		return h, fmt.Errorf("%w: first page lacks the long header flag", ErrBadHeader)
	}
	if err := ValidSegmentSize(uint64(h.SegSize)); err != nil {
		return h, fmt.Errorf("%w: %w", ErrBadHeader, err)
	}
	if h.BlockSize < 1024 || h.BlockSize > 65536 || h.BlockSize&(h.BlockSize-1) != 0 {
		return h, fmt.Errorf("%w: WAL block size %d", ErrBadHeader, h.BlockSize)
	}
	if h.SysID == 0 {
		return h, fmt.Errorf("%w: system identifier is zero", ErrBadHeader)
	}
	return h, nil
}

// unknownMagic says what an unknown magic most likely is: a PostgreSQL newer
// than this walship (a major upgrade must fail loudly at its first push,
// not be mistaken for corruption), 19's early beta format, or not WAL.
func unknownMagic(m uint16) error {
	switch {
	case m == 0xD120:
		return fmt.Errorf("%w: WAL page magic 0xD120 is PostgreSQL 19 before beta3, whose WAL format changed in beta3; walship supports %s (19 from beta3 on)", ErrBadHeader, Supported)
	case m > newestMagic && m < 0xD200:
		return fmt.Errorf("%w: WAL page magic 0x%04X is from a PostgreSQL newer than this walship supports (%s): upgrade walship before the server", ErrBadHeader, m, Supported)
	}
	return fmt.Errorf("%w: unknown magic 0x%04X (not a WAL segment, or from an unsupported PostgreSQL; walship supports %s)", ErrBadHeader, m, Supported)
}

// Version is the PostgreSQL major version that wrote the segment.
func (h Header) Version() string { return magicVersions[h.Magic] }

// CheckHeader verifies that a segment's header agrees with the file's name,
// its size on disk and, when sysID is not zero, the cluster the archive
// belongs to. A segment from another cluster, a recycled file whose header
// still names an older position, and a truncated file are all caught here.
func CheckHeader(h Header, f File, fileSize int64, sysID uint64) error {
	if f.Kind != KindSegment && f.Kind != KindPartial {
		return fmt.Errorf("%s: a %s has no page header", f, f.Kind)
	}
	if int64(h.SegSize) != fileSize {
		return fmt.Errorf("%w: file is %d bytes, header says segments are %d (truncated or padded file)", ErrBadHeader, fileSize, h.SegSize)
	}
	segNo, err := f.SegNo(uint64(h.SegSize))
	if err != nil {
		return err
	}
	// The first segment of a new timeline starts as a copy of its parent's
	// segment, so its first page may carry an ancestor's timeline; never a
	// later one.
	if h.TLI == 0 || h.TLI > f.TLI {
		return fmt.Errorf("%w: header is on timeline %d, name says %d", ErrBadHeader, h.TLI, f.TLI)
	}
	want := Name{TLI: f.TLI, SegNo: segNo}.StartLSN(uint64(h.SegSize))
	if h.PageAddr != want {
		return fmt.Errorf("%w: header page address %s, name says %s", ErrBadHeader, h.PageAddr, want)
	}
	if sysID != 0 && h.SysID != sysID {
		return fmt.Errorf("%w: system identifier %d, archive belongs to %d (another cluster)", ErrBadHeader, h.SysID, sysID)
	}
	return nil
}
