package archive

import (
	"bytes"
	"os"
	"path/filepath"
	"sort"
	"syscall"
	"testing"
	"time"

	"github.com/walship/walship/internal/testenv"
	"github.com/walship/walship/segment"
)

const (
	proofSys = 7300000000000000001
	loc      = "file:///archive-a"
)

func segName(n uint64) string { return segment.Name{TLI: 1, SegNo: n}.String(1 << 20) }

// proofFor writes the proof a batch would write for walDir/name as it is.
func proofFor(t *testing.T, walDir, name, location string, written time.Time) {
	t.Helper()
	fi, err := os.Stat(filepath.Join(walDir, name))
	if err != nil {
		t.Fatal(err)
	}
	st, ok := stampOf(fi)
	if !ok {
		t.Skip("no file stamps on this platform")
	}
	f, _ := segment.ParseFile(name)
	if err := os.MkdirAll(proofDir(walDir), 0o700); err != nil {
		t.Fatal(err)
	}
	p := proof{Format: proofFormat, Name: name, File: st, Archive: location, SystemID: proofSys,
		Key: Key(f), SHA256: "00", Stored: 1, Written: written}
	if err := writeProof(walDir, p); err != nil {
		t.Fatal(err)
	}
}

func TestProofIsTiedToTheFileAndTheArchive(t *testing.T) {
	now := time.Now()
	name := segName(5)
	cases := []struct {
		what    string
		change  func(t *testing.T, dir string) // after the proof is written
		loc     string
		at      time.Time
		trusted bool
	}{
		{"unchanged", nil, loc, now, true},
		{"rewritten in place, same size", func(t *testing.T, dir string) {
			f, err := os.OpenFile(filepath.Join(dir, name), os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			_, err = f.WriteAt([]byte{0xAA}, 5000)
			f.Close()
			if err != nil {
				t.Fatal(err)
			}
		}, loc, now, false},
		{"mtime put back after a write (ctime still moves)", func(t *testing.T, dir string) {
			p := filepath.Join(dir, name)
			fi, _ := os.Stat(p)
			if err := os.WriteFile(p, bytes.Repeat([]byte{1}, int(fi.Size())), 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Chtimes(p, fi.ModTime(), fi.ModTime()); err != nil {
				t.Fatal(err)
			}
		}, loc, now, false},
		{"replaced by an identical copy", func(t *testing.T, dir string) {
			p := filepath.Join(dir, name)
			b, _ := os.ReadFile(p)
			if err := os.Remove(p); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(p, b, 0o600); err != nil {
				t.Fatal(err)
			}
		}, loc, now, false},
		{"recycled: an old segment renamed to the name", func(t *testing.T, dir string) {
			old := testenv.WriteSegment(t, dir, segName(1), proofSys, nil)
			p := filepath.Join(dir, name)
			if err := os.Remove(p); err != nil {
				t.Fatal(err)
			}
			if err := os.Rename(old, p); err != nil {
				t.Fatal(err)
			}
		}, loc, now, false},
		{"the segment is gone", func(t *testing.T, dir string) {
			if err := os.Remove(filepath.Join(dir, name)); err != nil {
				t.Fatal(err)
			}
		}, loc, now, false},
		{"another archive", nil, "file:///archive-b", now, false},
		{"the same bucket on another endpoint", nil, loc + " endpoint=http://elsewhere", now, false},
		{"too old", nil, loc, now.Add(ProofMaxAge + time.Second), false},
		{"written in the future (the clock went back)", nil, loc, now.Add(-time.Minute), false},
	}
	for _, c := range cases {
		dir := t.TempDir()
		testenv.WriteSegment(t, dir, name, proofSys, nil)
		proofFor(t, dir, name, loc, now)
		if c.change != nil {
			c.change(t, dir)
		}
		ok, why := TakeProof(filepath.Join(dir, name), c.loc, c.at)
		if ok != c.trusted {
			t.Errorf("%s: trusted %v (%v), want %v", c.what, ok, why, c.trusted)
		}
		if !ok && why == nil {
			t.Errorf("%s: distrusted without a reason", c.what)
		}
		if exists(proofPath(dir, name)) {
			t.Errorf("%s: the proof is still there after it was taken", c.what)
		}
	}
}

func TestGarbledProofIsIgnored(t *testing.T) {
	now := time.Now()
	name := segName(5)
	cases := map[string]func(b []byte) []byte{
		"a flipped byte":      func(b []byte) []byte { b[20] ^= 0x01; return b },
		"torn in the middle":  func(b []byte) []byte { return b[:len(b)/2] },
		"empty":               func([]byte) []byte { return nil },
		"zeros":               func(b []byte) []byte { return make([]byte, len(b)) },
		"garbage after it":    func(b []byte) []byte { return append(b, "x"...) },
		"checksum of another": func(b []byte) []byte { i := bytes.IndexByte(b, '\n'); b[i+1] ^= 0x01; return b },
		"huge":                func(b []byte) []byte { return bytes.Repeat(b, 20) },
	}
	for what, garble := range cases {
		dir := t.TempDir()
		testenv.WriteSegment(t, dir, name, proofSys, nil)
		proofFor(t, dir, name, loc, now)
		b, err := os.ReadFile(proofPath(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := decodeProof(b); err != nil {
			t.Fatalf("the intact proof does not decode: %v", err)
		}
		if err := os.WriteFile(proofPath(dir, name), garble(b), 0o600); err != nil {
			t.Fatal(err)
		}
		if ok, why := TakeProof(filepath.Join(dir, name), loc, now); ok || why == nil {
			t.Errorf("%s: taken %v (%v), want ignored with a reason", what, ok, why)
		}
		if exists(proofPath(dir, name)) {
			t.Errorf("%s: a garbled proof was left behind", what)
		}
	}
	// A proof of one segment under another's name is not the other's.
	dir := t.TempDir()
	testenv.WriteSegment(t, dir, name, proofSys, nil)
	testenv.WriteSegment(t, dir, segName(6), proofSys, nil)
	proofFor(t, dir, name, loc, now)
	if err := os.Rename(proofPath(dir, name), proofPath(dir, segName(6))); err != nil {
		t.Fatal(err)
	}
	if ok, _ := TakeProof(filepath.Join(dir, segName(6)), loc, now); ok {
		t.Error("a proof renamed to another segment's name was trusted")
	}
	// Not a regular file (a FIFO would block a plain open).
	if err := syscall.Mkfifo(proofPath(dir, name), 0o600); err != nil {
		t.Fatal(err)
	}
	if ok, _ := TakeProof(filepath.Join(dir, name), loc, now); ok {
		t.Error("a FIFO was taken for a proof")
	}
}

func TestSweepKeepsOnlyUsableProofs(t *testing.T) {
	now := time.Now()
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, "archive_status"), 0o700); err != nil {
		t.Fatal(err)
	}
	for n := uint64(1); n <= 4; n++ {
		testenv.WriteSegment(t, dir, segName(n), proofSys, nil)
		proofFor(t, dir, segName(n), loc, now)
	}
	for _, n := range []uint64{1, 2, 3} {
		if err := os.WriteFile(readyPath(dir, segName(n)), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	// 1: still ready, intact: kept. 2: its segment was removed. 3: another
	// archive's. 4: PostgreSQL has it archived (no .ready any more).
	if err := os.Remove(filepath.Join(dir, segName(2))); err != nil {
		t.Fatal(err)
	}
	other := t.TempDir()
	testenv.WriteSegment(t, other, segName(3), proofSys, nil)
	proofFor(t, other, segName(3), "file:///archive-b", now)
	b, _ := os.ReadFile(proofPath(other, segName(3)))
	if err := os.WriteFile(proofPath(dir, segName(3)), b, 0o600); err != nil {
		t.Fatal(err)
	}
	// A killed writer's temporary file, and files that are not walship's.
	for _, n := range []string{"." + segName(5) + proofSuffix + proofTemp + "abc", "README", segName(6)} {
		if err := os.WriteFile(filepath.Join(proofDir(dir), n), []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	valid := sweepProofs(dir, loc, now)
	if _, ok := valid[segName(1)]; !ok || len(valid) != 1 {
		t.Errorf("valid proofs %v, want only %s", valid, segName(1))
	}
	es, _ := os.ReadDir(proofDir(dir))
	var left []string
	for _, e := range es {
		left = append(left, e.Name())
	}
	sort.Strings(left)
	want := []string{segName(1) + proofSuffix, segName(6), "README"}
	sort.Strings(want)
	if len(left) != len(want) {
		t.Fatalf("left %v, want %v", left, want)
	}
	for i := range want {
		if left[i] != want[i] {
			t.Fatalf("left %v, want %v", left, want)
		}
	}
}
