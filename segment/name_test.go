package segment

import (
	"errors"
	"testing"
)

func TestParseFile(t *testing.T) {
	tests := []struct {
		in   string
		want File
	}{
		{"000000010000000000000042", File{Kind: KindSegment, TLI: 1, Log: 0, Seg: 0x42}},
		{"0000000A00000003000000FF", File{Kind: KindSegment, TLI: 10, Log: 3, Seg: 0xFF}},
		{"000000010000000000000042.partial", File{Kind: KindPartial, TLI: 1, Seg: 0x42}},
		{"00000002.history", File{Kind: KindHistory, TLI: 2}},
		{"000000010000000000000002.00000028.backup", File{Kind: KindBackupLabel, TLI: 1, Seg: 2, Offset: 0x28}},
	}
	for _, tt := range tests {
		got, err := ParseFile(tt.in)
		if err != nil {
			t.Fatalf("ParseFile(%q): %v", tt.in, err)
		}
		if got != tt.want {
			t.Errorf("ParseFile(%q) = %+v, want %+v", tt.in, got, tt.want)
		}
		if got.String() != tt.in {
			t.Errorf("String() = %q, want %q", got.String(), tt.in)
		}
	}
}

func TestParseFileRefusesHostileAndMalformed(t *testing.T) {
	for _, in := range []string{
		"", "../x", "/etc/passwd", "000000010000000000000001/../..", "..", ".",
		"00000001000000000000004", "0000000100000000000000420", // wrong length
		"000000010000000000000042 ", " 000000010000000000000042",
		"00000001000000000000004g", "000000010000000000000042\x00",
		"0000000100000000000000ab", // lower case is never written by PostgreSQL
		"000000000000000000000042", // timeline 0
		"00000000.history",         // timeline 0
		"0000000G.history", "00000002.History", "00000002.historyx",
		"000000010000000000000042.partia", "000000010000000000000042.PARTIAL",
		"000000010000000000000002.0000002.backup", "000000010000000000000002-00000028.backup",
		"000000010000000000000002.00000028.backup/..",
		"+0000001000000000000000042"[:24], "-00000010000000000000042",
		"RECOVERYXLOG", "000000010000000000000042.zst",
	} {
		if _, err := ParseFile(in); !errors.Is(err, ErrBadName) {
			t.Errorf("ParseFile(%q) err = %v, want ErrBadName", in, err)
		}
	}
}

func TestSegNoForEverySize(t *testing.T) {
	for size := uint64(MinSegmentSize); size <= MaxSegmentSize; size <<= 1 {
		per := (uint64(1) << 32) / size
		for _, no := range []uint64{0, 1, per - 1, per, per + 1, 5*per + 3} {
			n := Name{TLI: 3, SegNo: no}
			s := n.String(size)
			got, err := ParseName(s, size)
			if err != nil {
				t.Fatalf("size %d segno %d: ParseName(%q): %v", size, no, s, err)
			}
			if got != n {
				t.Fatalf("size %d: round trip %+v -> %q -> %+v", size, n, s, got)
			}
			if lsn := n.StartLSN(size); lsn.SegNo(size) != no || lsn.SegOffset(size) != 0 {
				t.Fatalf("size %d: StartLSN(%d) = %s maps back to %d", size, no, lsn, lsn.SegNo(size))
			}
		}
		// The low half may not reach segmentsPerLogID.
		f := File{Kind: KindSegment, TLI: 1, Seg: uint32(per)}
		if per <= 0xFFFFFFFF {
			if _, err := f.SegNo(size); err == nil {
				t.Errorf("size %d: seg part %X accepted", size, per)
			}
		}
	}
	if _, err := ParseName("000000010000000000000100", DefaultSegmentSize); err == nil {
		t.Error("16 MiB segments: 000000010000000000000100 accepted")
	}
	if n, err := ParseName("0000000100000001000000FF", DefaultSegmentSize); err != nil || n.SegNo != 0x1FF {
		t.Errorf("ParseName = %+v, %v; want segno 0x1FF", n, err)
	}
	for _, bad := range []uint64{0, 1 << 19, 3 << 20, 2 << 30} {
		if ValidSegmentSize(bad) == nil {
			t.Errorf("segment size %d accepted", bad)
		}
	}
}

func TestLSN(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want LSN
	}{{"0/0", 0}, {"16/B374D848", 0x16B374D848}, {"FFFFFFFF/FFFFFFFF", ^LSN(0)}, {"0/1000000", 1 << 24}, {"a/b", 0xA0000000B}} {
		got, err := ParseLSN(tt.in)
		if err != nil || got != tt.want {
			t.Errorf("ParseLSN(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
		}
	}
	for _, bad := range []string{"", "0", "/", "0/", "/0", "1/2/3", "x/0", "123456789/0", "0/-1", "+1/0"} {
		if _, err := ParseLSN(bad); err == nil {
			t.Errorf("ParseLSN(%q) accepted", bad)
		}
	}
	if s := LSN(0x16B374D848).String(); s != "16/B374D848" {
		t.Errorf("String = %q", s)
	}
	l := LSN(0x3_0500_0010)
	if l.SegNo(DefaultSegmentSize) != 0x305 || l.SegOffset(DefaultSegmentSize) != 0x10 {
		t.Errorf("SegNo/SegOffset of %s = %X/%X", l, l.SegNo(DefaultSegmentSize), l.SegOffset(DefaultSegmentSize))
	}
}

func FuzzParseFile(f *testing.F) {
	for _, s := range []string{"000000010000000000000042", "00000002.history", "000000010000000000000042.partial",
		"000000010000000000000002.00000028.backup", "../x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got, err := ParseFile(s)
		if err != nil {
			return
		}
		if got.String() != s {
			t.Fatalf("ParseFile(%q).String() = %q", s, got.String())
		}
		for _, c := range s {
			if c == '/' || c == '\\' || c == 0 {
				t.Fatalf("accepted name %q with a path character", s)
			}
		}
	})
}

func FuzzParseLSN(f *testing.F) {
	f.Add("16/B374D848")
	f.Add("0/0")
	f.Fuzz(func(t *testing.T, s string) {
		l, err := ParseLSN(s)
		if err != nil {
			return
		}
		back, err := ParseLSN(l.String())
		if err != nil || back != l {
			t.Fatalf("%q -> %v -> %q -> %v, %v", s, l, l.String(), back, err)
		}
	})
}

func FuzzNameRoundTrip(f *testing.F) {
	f.Add(uint32(1), uint64(0x42), uint8(24))
	f.Fuzz(func(t *testing.T, tli uint32, segno uint64, shift uint8) {
		size := uint64(1) << (20 + shift%11)
		if tli == 0 || segno > (^uint64(0))/size {
			return
		}
		n := Name{TLI: tli, SegNo: segno}
		got, err := ParseName(n.String(size), size)
		if segno/((1<<32)/size) > 0xFFFFFFFF {
			return // beyond what the 8-digit log half can hold
		}
		if err != nil || got != n {
			t.Fatalf("%+v size %d -> %q -> %+v, %v", n, size, n.String(size), got, err)
		}
	})
}

func TestParseHistory(t *testing.T) {
	data := "1\t0/3000158\tno recovery target specified\n\n2\t0/5000000\tat restore point \"x\"\n"
	got, err := ParseHistory(3, []byte(data))
	if err != nil || len(got) != 2 || got[1].TLI != 2 || got[1].SwitchLSN != 0x5000000 || got[0].Reason != "no recovery target specified" {
		t.Fatalf("ParseHistory = %+v, %v", got, err)
	}
	for _, bad := range []string{"", "x\t0/1\n", "1\tnope\n", "2\t0/1\n1\t0/2\n", "3\t0/1\n", "1\n"} {
		if _, err := ParseHistory(3, []byte(bad)); err == nil {
			t.Errorf("ParseHistory(%q) accepted", bad)
		}
	}
}

func FuzzParseHistory(f *testing.F) {
	f.Add(uint32(2), []byte("1\t0/3000158\tno recovery target specified\n"))
	f.Fuzz(func(t *testing.T, tli uint32, b []byte) {
		es, err := ParseHistory(tli, b)
		if err != nil {
			return
		}
		for i, e := range es {
			if e.TLI >= tli || (i > 0 && e.TLI <= es[i-1].TLI) {
				t.Fatalf("accepted %+v for timeline %d", es, tli)
			}
		}
	})
}
