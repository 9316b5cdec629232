package segment

import (
	"encoding/binary"
	"errors"
	"strings"
	"testing"
)

// longHeader builds the first bytes of a segment as PostgreSQL 15 writes them.
func longHeader(tli uint32, pageAddr LSN, sysID uint64, segSize uint32) []byte {
	b := make([]byte, LongHeaderSize)
	le := binary.LittleEndian
	le.PutUint16(b[0:], 0xD110)
	le.PutUint16(b[2:], xlpLongHeader)
	le.PutUint32(b[4:], tli)
	le.PutUint64(b[8:], uint64(pageAddr))
	le.PutUint64(b[24:], sysID)
	le.PutUint32(b[32:], segSize)
	le.PutUint32(b[36:], 8192)
	return b
}

func TestParseAndCheckHeader(t *testing.T) {
	const sys = 7301234567890123456
	name := "000000020000000100000003"
	f, _ := ParseFile(name)
	addr := LSN(0x1_03000000)
	h, err := ParseHeader(longHeader(2, addr, sys, DefaultSegmentSize))
	if err != nil {
		t.Fatal(err)
	}
	if h.Version() != "15" || h.SysID != sys || h.BlockSize != 8192 {
		t.Fatalf("header = %+v version %s", h, h.Version())
	}
	if err := CheckHeader(h, f, DefaultSegmentSize, sys); err != nil {
		t.Fatalf("CheckHeader: %v", err)
	}
	// Unknown archive identity (first push): no system id check.
	if err := CheckHeader(h, f, DefaultSegmentSize, 0); err != nil {
		t.Fatalf("CheckHeader without sysid: %v", err)
	}
	// A new timeline's first segment may carry its parent's timeline.
	hp, _ := ParseHeader(longHeader(1, addr, sys, DefaultSegmentSize))
	if err := CheckHeader(hp, f, DefaultSegmentSize, sys); err != nil {
		t.Fatalf("ancestor timeline refused: %v", err)
	}

	refusals := map[string]func() error{
		"truncated": func() error { return CheckHeader(h, f, DefaultSegmentSize-8192, sys) },
		"padded":    func() error { return CheckHeader(h, f, DefaultSegmentSize+1, sys) },
		"foreign cluster": func() error {
			return CheckHeader(h, f, DefaultSegmentSize, sys+1)
		},
		"later timeline": func() error {
			h3, _ := ParseHeader(longHeader(3, addr, sys, DefaultSegmentSize))
			return CheckHeader(h3, f, DefaultSegmentSize, sys)
		},
		"misnamed (page address)": func() error {
			other, _ := ParseFile("000000020000000100000004")
			return CheckHeader(h, other, DefaultSegmentSize, sys)
		},
		"recycled (old page address)": func() error {
			old, _ := ParseHeader(longHeader(2, addr-DefaultSegmentSize*8, sys, DefaultSegmentSize))
			return CheckHeader(old, f, DefaultSegmentSize, sys)
		},
	}
	for what, check := range refusals {
		if err := check(); !errors.Is(err, ErrBadHeader) {
			t.Errorf("%s: err = %v, want ErrBadHeader", what, err)
		}
	}
}

func TestParseHeaderRefusals(t *testing.T) {
	good := longHeader(1, 0, 42, DefaultSegmentSize)
	mutate := map[string]func(b []byte){
		"short":            nil,
		"zero page":        func(b []byte) { clear(b) },
		"unknown magic":    func(b []byte) { binary.LittleEndian.PutUint16(b, 0xD0FF) },
		"big-endian magic": func(b []byte) { binary.BigEndian.PutUint16(b, 0xD110) },
		"short header":     func(b []byte) { binary.LittleEndian.PutUint16(b[2:], 0) },
		"bad seg size":     func(b []byte) { binary.LittleEndian.PutUint32(b[32:], 3<<20) },
		"bad block size":   func(b []byte) { binary.LittleEndian.PutUint32(b[36:], 1000) },
		"zero sysid":       func(b []byte) { binary.LittleEndian.PutUint64(b[24:], 0) },
	}
	for what, m := range mutate {
		b := append([]byte(nil), good...)
		if m == nil {
			b = b[:LongHeaderSize-1]
		} else {
			m(b)
		}
		if _, err := ParseHeader(b); !errors.Is(err, ErrBadHeader) {
			t.Errorf("%s: err = %v, want ErrBadHeader", what, err)
		}
	}
	for magic, v := range map[uint16]string{0xD093: "9.6", 0xD097: "10", 0xD101: "12", 0xD113: "16", 0xD116: "17", 0xD118: "18", 0xD121: "19"} {
		if got, ok := VersionForMagic(magic); !ok || got != v {
			t.Errorf("VersionForMagic(%04X) = %q", magic, got)
		}
	}
}

func FuzzParseHeader(f *testing.F) {
	f.Add(longHeader(1, 0x1000000, 99, DefaultSegmentSize))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := ParseHeader(b)
		if err != nil {
			return
		}
		if h.Version() == "" || ValidSegmentSize(uint64(h.SegSize)) != nil {
			t.Fatalf("accepted header %+v", h)
		}
		fl := File{Kind: KindSegment, TLI: h.TLI, Log: 0, Seg: 0}
		_ = CheckHeader(h, fl, int64(h.SegSize), h.SysID)
	})
}

// A segment of 19 from beta3 on is accepted; 19's early beta format and a
// PostgreSQL newer than walship are refused with one line naming what is
// supported, never taken for damage; random bytes stay "not a segment".
func TestFutureMagic(t *testing.T) {
	withMagic := func(m uint16) []byte {
		b := longHeader(1, 0, 42, DefaultSegmentSize)
		binary.LittleEndian.PutUint16(b, m)
		return b
	}
	if h, err := ParseHeader(withMagic(0xD121)); err != nil || h.Version() != "19" {
		t.Fatalf("19: %v, version %q", err, h.Version())
	}
	for magic, want := range map[uint16]string{
		0xD120: "19 before beta3",
		0xD122: "newer than this walship supports",
		0xD1F0: "newer than this walship supports",
		0x1234: "not a WAL segment",
	} {
		_, err := ParseHeader(withMagic(magic))
		if !errors.Is(err, ErrBadHeader) || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), Supported) || strings.Contains(err.Error(), "\n") {
			t.Errorf("magic %04X: %v, want one line saying %q and %q", magic, err, want, Supported)
		}
	}
}

// LSNs as PostgreSQL 19 prints them, zero-padded, parse to the same value.
func TestParseLSNZeroPadded(t *testing.T) {
	for s, want := range map[string]LSN{"0/016D30F8": 0x16D30F8, "00000000/016D30F8": 0x16D30F8, "0/16D30F8": 0x16D30F8, "0000001A/00000000": 0x1A << 32} {
		if got, err := ParseLSN(s); err != nil || got != want {
			t.Errorf("ParseLSN(%q) = %v, %v; want %v", s, got, err, want)
		}
	}
}
