// Package segment knows PostgreSQL's write-ahead log files: their names, the
// LSN arithmetic behind them, the long page header that opens every segment
// and the timeline history format. It does no I/O and imports only the
// standard library.
package segment

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Segment sizes PostgreSQL accepts (initdb --wal-segsize): powers of two from
// 1 MiB to 1 GiB.
const (
	MinSegmentSize     = 1 << 20
	MaxSegmentSize     = 1 << 30
	DefaultSegmentSize = 16 << 20
)

// ErrBadName is wrapped by every error about a file name that is not one
// PostgreSQL archives.
var ErrBadName = errors.New("not a WAL file name")

// Kind tells which of the files PostgreSQL hands to archive_command a name is.
type Kind int

// The kinds of archived file.
const (
	KindSegment     Kind = iota + 1 // 000000010000000000000042
	KindPartial                     // 000000010000000000000042.partial, left by a promotion
	KindHistory                     // 00000002.history
	KindBackupLabel                 // 000000010000000000000042.00000028.backup
)

func (k Kind) String() string {
	switch k {
	case KindSegment:
		return "segment"
	case KindPartial:
		return "partial segment"
	case KindHistory:
		return "timeline history"
	case KindBackupLabel:
		return "backup history"
	}
	return "unknown"
}

// File is a parsed archive file name. Log and Seg are the two halves of a
// segment name as written; turning them into a segment number needs the
// segment size (see SegNo). Offset is set for backup history files.
type File struct {
	Kind   Kind
	TLI    uint32
	Log    uint32
	Seg    uint32
	Offset uint32
}

// ParseFile parses a bare file name (no directory part). Anything that is not
// exactly one of the four kinds of name, in PostgreSQL's upper-case
// hexadecimal, is refused with an error wrapping ErrBadName. File names come
// from the command line and from archive listings, so this is the gate
// against path traversal: a valid name never contains '/', '.' beyond its
// suffix, or anything but hex digits.
func ParseFile(name string) (File, error) {
	bad := func(why string) (File, error) {
		return File{}, fmt.Errorf("%q: %w: %s", name, ErrBadName, why)
	}
	switch {
	case len(name) == 24:
		f, err := parseSegmentPart(name)
		if err != nil {
			return bad(err.Error())
		}
		f.Kind = KindSegment
		return f, nil
	case len(name) == 32 && strings.HasSuffix(name, ".partial"):
		f, err := parseSegmentPart(name[:24])
		if err != nil {
			return bad(err.Error())
		}
		f.Kind = KindPartial
		return f, nil
	case len(name) == 16 && strings.HasSuffix(name, ".history"):
		tli, err := parseHex32(name[:8])
		if err != nil {
			return bad(err.Error())
		}
		if tli == 0 {
			return bad("timeline 0 does not exist")
		}
		return File{Kind: KindHistory, TLI: tli}, nil
	case len(name) == 40 && name[24] == '.' && strings.HasSuffix(name, ".backup"):
		f, err := parseSegmentPart(name[:24])
		if err != nil {
			return bad(err.Error())
		}
		off, err := parseHex32(name[25:33])
		if err != nil {
			return bad(err.Error())
		}
		f.Kind = KindBackupLabel
		f.Offset = off
		return f, nil
	}
	return bad("expected a segment, .partial, .history or .backup name")
}

func parseSegmentPart(s string) (File, error) {
	tli, err := parseHex32(s[0:8])
	if err != nil {
		return File{}, err
	}
	if tli == 0 {
		return File{}, errors.New("timeline 0 does not exist")
	}
	log, err := parseHex32(s[8:16])
	if err != nil {
		return File{}, err
	}
	seg, err := parseHex32(s[16:24])
	if err != nil {
		return File{}, err
	}
	return File{TLI: tli, Log: log, Seg: seg}, nil
}

// parseHex32 accepts exactly eight upper-case hex digits, as PostgreSQL writes
// them; strconv alone would accept signs and lower case.
func parseHex32(s string) (uint32, error) {
	if len(s) != 8 {
		return 0, errors.New("expected 8 hex digits")
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= '0' && c <= '9' || c >= 'A' && c <= 'F') {
			return 0, fmt.Errorf("character %q is not an upper-case hex digit", c)
		}
	}
	v, err := strconv.ParseUint(s, 16, 32)
	return uint32(v), err
}

// String formats the file name back exactly as PostgreSQL writes it.
func (f File) String() string {
	switch f.Kind {
	case KindHistory:
		return fmt.Sprintf("%08X.history", f.TLI)
	case KindPartial:
		return fmt.Sprintf("%08X%08X%08X.partial", f.TLI, f.Log, f.Seg)
	case KindBackupLabel:
		return fmt.Sprintf("%08X%08X%08X.%08X.backup", f.TLI, f.Log, f.Seg, f.Offset)
	}
	return fmt.Sprintf("%08X%08X%08X", f.TLI, f.Log, f.Seg)
}

// SegNo is the segment number a segment-bearing name stands for, given the
// cluster's segment size. A name whose low half is out of range for that size
// (000000010000000000000100 with 16 MiB segments) is refused.
func (f File) SegNo(segSize uint64) (uint64, error) {
	if err := ValidSegmentSize(segSize); err != nil {
		return 0, err
	}
	if f.Kind == KindHistory {
		return 0, fmt.Errorf("%s: %w: a history file has no segment number", f, ErrBadName)
	}
	per := segmentsPerLogID(segSize)
	if uint64(f.Seg) >= per {
		return 0, fmt.Errorf("%s: %w: segment part %08X out of range for %d-byte segments", f, ErrBadName, f.Seg, segSize)
	}
	return uint64(f.Log)*per + uint64(f.Seg), nil
}

// Name identifies one WAL segment: a timeline and a segment number.
type Name struct {
	TLI   uint32
	SegNo uint64
}

// ParseName parses a plain segment name (no suffix) for the given segment size.
func ParseName(s string, segSize uint64) (Name, error) {
	f, err := ParseFile(s)
	if err != nil {
		return Name{}, err
	}
	if f.Kind != KindSegment {
		return Name{}, fmt.Errorf("%q: %w: a %s, not a segment", s, ErrBadName, f.Kind)
	}
	no, err := f.SegNo(segSize)
	if err != nil {
		return Name{}, err
	}
	return Name{TLI: f.TLI, SegNo: no}, nil
}

// String formats the segment name for the given segment size.
func (n Name) String(segSize uint64) string {
	per := segmentsPerLogID(segSize)
	return fmt.Sprintf("%08X%08X%08X", n.TLI, uint32(n.SegNo/per), uint32(n.SegNo%per))
}

// Next is the segment after n on the same timeline.
func (n Name) Next() Name { return Name{TLI: n.TLI, SegNo: n.SegNo + 1} }

// StartLSN is the position of the first byte of the segment.
func (n Name) StartLSN(segSize uint64) LSN { return LSN(n.SegNo * segSize) }

// ValidSegmentSize reports whether size is one PostgreSQL can be built with.
func ValidSegmentSize(size uint64) error {
	if size < MinSegmentSize || size > MaxSegmentSize || size&(size-1) != 0 {
		return fmt.Errorf("segment size %d is not a power of two between 1 MiB and 1 GiB", size)
	}
	return nil
}

func segmentsPerLogID(segSize uint64) uint64 { return (1 << 32) / segSize }

// LSN is a position in the write-ahead log.
type LSN uint64

// ParseLSN parses PostgreSQL's text form, "16/B374D848".
func ParseLSN(s string) (LSN, error) {
	hi, lo, ok := strings.Cut(s, "/")
	if !ok || hi == "" || lo == "" || len(hi) > 8 || len(lo) > 8 {
		return 0, fmt.Errorf("LSN %q: expected two hex numbers like 16/B374D848", s)
	}
	h, err := strconv.ParseUint(hi, 16, 32)
	if err != nil {
		return 0, fmt.Errorf("LSN %q: %w", s, err)
	}
	l, err := strconv.ParseUint(lo, 16, 32)
	if err != nil {
		return 0, fmt.Errorf("LSN %q: %w", s, err)
	}
	return LSN(h<<32 | l), nil
}

func (l LSN) String() string { return fmt.Sprintf("%X/%X", uint32(l>>32), uint32(l)) }

// SegNo is the segment that holds the byte at l.
func (l LSN) SegNo(segSize uint64) uint64 { return uint64(l) / segSize }

// SegOffset is l's offset inside its segment.
func (l LSN) SegOffset(segSize uint64) uint64 { return uint64(l) % segSize }

// MarshalText writes l in PostgreSQL's text form, for JSON and YAML.
func (l LSN) MarshalText() ([]byte, error) { return []byte(l.String()), nil }

// UnmarshalText parses PostgreSQL's text form.
func (l *LSN) UnmarshalText(b []byte) error {
	v, err := ParseLSN(string(b))
	if err != nil {
		return err
	}
	*l = v
	return nil
}
