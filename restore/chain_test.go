package restore

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/walship/walship/backends"
	"github.com/walship/walship/backends/memory"
	"github.com/walship/walship/incremental"
	"github.com/walship/walship/manifest"
	"github.com/walship/walship/sealed"
	"github.com/walship/walship/segment"
)

const testSysID = 7712376803198510374

// blk is block b of a relation as backup s has it.
func blk(s, b int) []byte {
	p := bytes.Repeat([]byte{byte(s)}, incremental.BlockSize)
	binary.LittleEndian.PutUint32(p, uint32(b))
	return p
}

// rel is a full relation file of n blocks, all from backup s.
func rel(s, n int) string {
	var out []byte
	for b := range n {
		out = append(out, blk(s, b)...)
	}
	return string(out)
}

// incr is backup s's INCREMENTAL file with truncation t and blocks.
func incr(s int, t uint32, blocks ...uint32) string {
	out := incremental.AppendHeader(nil, &incremental.Header{Blocks: blocks, Truncate: t})
	for _, b := range blocks {
		out = append(out, blk(s, int(b))...)
	}
	return string(out)
}

// blocks describes a restored relation file as backup:block per block.
func blocks(b []byte) string {
	var s []string
	for off := 0; off+incremental.BlockSize <= len(b); off += incremental.BlockSize {
		p := b[off : off+incremental.BlockSize]
		if bytes.Equal(p, make([]byte, len(p))) {
			s = append(s, "z")
		} else {
			s = append(s, fmt.Sprintf("%d:%d", p[4], binary.LittleEndian.Uint32(p)))
		}
	}
	return strings.Join(s, " ")
}

// chainLabel is a backup_label for a backup starting at start, taken from
// the backup starting at from (none for a full backup).
func chainLabel(start, from string) entry {
	l := fmt.Sprintf("START WAL LOCATION: %s (file 000000010000000000000002)\nCHECKPOINT LOCATION: %s\nSTART TIMELINE: 1\n", start, start)
	if from != "" {
		l += "INCREMENTAL FROM LSN: " + from + "\nINCREMENTAL FROM TLI: 1\n"
	}
	return file("backup_label", l)
}

func pgControl() entry {
	b := make([]byte, 8192)
	binary.LittleEndian.PutUint64(b, testSysID)
	return file("global/pg_control", string(b))
}

// serverManifest is a backup_manifest listing the regular files of the
// archives (base entries as they are, tablespace 16384's under
// pg_tblspc/16384/), with CRC-32C checksums, and its own SHA-256.
func serverManifest(archives map[string][]entry, mutate func(path string, f map[string]any)) []byte {
	var files []map[string]any
	for _, name := range []string{"base.tar", "16384.tar"} {
		prefix := map[string]string{"base.tar": "", "16384.tar": "pg_tblspc/16384/"}[name]
		for _, e := range archives[name] {
			if e.typ != '0' {
				continue
			}
			var c [4]byte
			binary.LittleEndian.PutUint32(c[:], crc32.Checksum([]byte(e.data), crc32.MakeTable(crc32.Castagnoli)))
			f := map[string]any{"Path": prefix + e.name, "Size": len(e.data), "Checksum-Algorithm": "CRC32C", "Checksum": hex.EncodeToString(c[:])}
			if mutate != nil {
				mutate(prefix+e.name, f)
			}
			files = append(files, f)
		}
	}
	fj, _ := json.Marshal(files)
	body := fmt.Sprintf("{ \"PostgreSQL-Backup-Manifest-Version\": 2,\n\"System-Identifier\": %d,\n\"Files\": %s,\n"+
		"\"WAL-Ranges\": [\n{ \"Timeline\": 1, \"Start-LSN\": \"0/2000028\", \"End-LSN\": \"0/2000100\" }\n],\n", uint64(testSysID), fj)
	sum := sha256.Sum256([]byte(body))
	return []byte(body + "\"Manifest-Checksum\": \"" + hex.EncodeToString(sum[:]) + "\"}\n")
}

// chainBackup is one backup of a test chain.
type chainBackup struct {
	id, parent, start string
	archives          map[string][]entry
	mutate            func(path string, f map[string]any) // changes the server manifest
}

// sealChain stores the backups as backup push would and returns their
// manifests, oldest first.
func sealChain(t *testing.T, store backends.Storage, backups []chainBackup) []*manifest.Manifest {
	t.Helper()
	ctx := context.Background()
	sl, err := sealed.NewSealer(sealed.Compression{Codec: sealed.CodecZstd})
	if err != nil {
		t.Fatal(err)
	}
	put := func(key string, raw []byte) manifest.Chunk {
		s, err := sl.Seal(raw)
		if err != nil {
			t.Fatal(err)
		}
		if err := store.PutIfAbsent(ctx, key, s.Reader(), s.Size()); err != nil {
			t.Fatal(err)
		}
		return manifest.Chunk{Key: key, Size: int64(len(raw)), StoredSize: s.Size(), SHA256: hex.EncodeToString(s.Header.SHA256[:])}
	}
	var out []*manifest.Manifest
	for _, b := range backups {
		start, err := segment.ParseLSN(b.start)
		if err != nil {
			t.Fatal(err)
		}
		m := &manifest.Manifest{Format: manifest.Format, ID: b.id, SystemIdentifier: testSysID, SegmentSize: 16 << 20,
			Timeline: 1, StopTimeline: 1, StartLSN: start, StopLSN: start + 0x100, Type: manifest.TypeFull, Parent: b.parent}
		if b.parent != "" {
			m.Type = manifest.TypeIncremental
		}
		for _, name := range []string{"base.tar", "16384.tar"} {
			es, ok := b.archives[name]
			if !ok {
				continue
			}
			data := mkTar(t, es)
			ar := manifest.Archive{Name: name, Size: int64(len(data))}
			if name != "base.tar" {
				ar.TablespaceOID, ar.Location = 16384, "/old/"+name
			}
			for seq, off := 0, 0; off < len(data) || seq == 0; seq, off = seq+1, off+9000 {
				ar.Chunks = append(ar.Chunks, put(fmt.Sprintf("%s%s/%s.%05d", manifest.Prefix, b.id, name, seq), data[off:min(off+9000, len(data))]))
			}
			m.Archives = append(m.Archives, ar)
		}
		m.ServerManifest = put(manifest.Prefix+b.id+"/backup_manifest", serverManifest(b.archives, b.mutate))
		out = append(out, m)
	}
	return out
}

// testChain: a full backup and two incrementals of a data directory with
// tablespace 16384.
//
//	base/5/100  3 blocks; block 1 changed in I1, block 2 in I2
//	base/5/200  2 blocks; truncated to 1 in I1, grown to 3 in I2 (block 2
//	            new; block 1 not in I2, so pg_combinebackup takes F's)
//	base/5/300  dropped in I1
//	base/5/500  created in I1 (in full), unchanged in I2
//	base/6/     a database dropped in I2
//	ts 400      2 blocks, grown to 4 in I1
//	postgresql.conf changed in I1
func testChain() []chainBackup {
	ts := func(es ...entry) []entry {
		return append([]entry{dir("PG_17_202406281"), dir("PG_17_202406281/5")}, es...)
	}
	base := func(start, from string, es ...entry) []entry {
		e := []entry{chainLabel(start, from), dir("base"), dir("base/5"), dir("global"), dir("pg_wal"), dir("pg_tblspc"), file("PG_VERSION", "17\n")}
		return append(append(e, es...), pgControl())
	}
	return []chainBackup{
		{id: "20260101T000000Z", start: "0/2000028", archives: map[string][]entry{
			"base.tar": base("0/2000028", "", file("postgresql.conf", "port = 5432\n"), file("base/5/100", rel(1, 3)), file("base/5/200", rel(1, 2)),
				file("base/5/300", rel(1, 1)), dir("base/6"), file("base/6/7", rel(1, 1))),
			"16384.tar": ts(file("PG_17_202406281/5/400", rel(1, 2))),
		}},
		{id: "20260101T010000Z", parent: "20260101T000000Z", start: "0/4000028", archives: map[string][]entry{
			"base.tar": base("0/4000028", "0/2000028", file("postgresql.conf", "port = 5433\n"), file("base/5/INCREMENTAL.100", incr(2, 3, 1)),
				file("base/5/INCREMENTAL.200", incr(2, 1)), file("base/5/500", rel(2, 2)), dir("base/6"), file("base/6/INCREMENTAL.7", incr(2, 1))),
			"16384.tar": ts(file("PG_17_202406281/5/INCREMENTAL.400", incr(2, 4, 2, 3))),
		}},
		{id: "20260101T020000Z", parent: "20260101T010000Z", start: "0/6000028", archives: map[string][]entry{
			"base.tar": base("0/6000028", "0/4000028", file("postgresql.conf", "port = 5433\n"), file("base/5/INCREMENTAL.100", incr(3, 3, 2)),
				file("base/5/INCREMENTAL.200", incr(3, 3, 2)), file("base/5/INCREMENTAL.500", incr(3, 2))),
			"16384.tar": ts(file("PG_17_202406281/5/INCREMENTAL.400", incr(3, 4))),
		}},
	}
}

func restoreChainTest(t *testing.T, backups []chainBackup) (string, string, error) {
	t.Helper()
	store := memory.New()
	chain := sealChain(t, store, backups)
	ts := filepath.Join(t.TempDir(), "ts")
	dir, err := restorePlan(t, store, &Plan{Backup: chain[len(chain)-1], Chain: chain},
		Options{TablespaceMap: map[string]string{"/old/16384.tar": ts}, Parallel: 2})
	return dir, ts, err
}

func TestRestoreChain(t *testing.T) {
	dir, ts, err := restoreChainTest(t, testChain())
	if err != nil {
		t.Fatal(err)
	}
	read := func(p string) string {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	for p, want := range map[string]string{
		"base/5/100":                  "1:0 2:1 3:2",
		"base/5/200":                  "1:0 1:1 3:2",
		"base/5/500":                  "2:0 2:1",
		ts + "/PG_17_202406281/5/400": "1:0 1:1 2:2 2:3",
	} {
		if !filepath.IsAbs(p) {
			p = filepath.Join(dir, p)
		}
		if got := blocks([]byte(read(p))); got != want {
			t.Errorf("%s: %s, want %s", p, got, want)
		}
	}
	if got := read(filepath.Join(dir, "postgresql.conf")); got != "port = 5433\n" {
		t.Errorf("postgresql.conf: %q", got)
	}
	for _, gone := range []string{"base/5/300", "base/6", "base/5/INCREMENTAL.100", "backup_manifest"} {
		if _, err := os.Lstat(filepath.Join(dir, gone)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s is in the restored directory (%v)", gone, err)
		}
	}
	label := read(filepath.Join(dir, "backup_label"))
	if !strings.HasPrefix(label, "START WAL LOCATION: 0/6000028 ") || strings.Contains(label, "INCREMENTAL") {
		t.Errorf("backup_label:\n%s", label)
	}
	if _, err := os.Stat(filepath.Join(dir, "recovery.signal")); err != nil {
		t.Error(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "pg_wal")); err != nil {
		t.Error(err)
	}
}

func TestRestoreChainRefuses(t *testing.T) {
	edit := func(f func(c []chainBackup)) []chainBackup {
		c := testChain()
		f(c)
		return c
	}
	replace := func(es []entry, name, data string) []entry {
		out := append([]entry(nil), es...)
		for i := range out {
			if out[i].name == name {
				out[i].data = data
			}
		}
		return out
	}
	cases := []struct {
		name  string
		chain []chainBackup
		want  error
	}{
		{"incremental file with no full copy under it", edit(func(c []chainBackup) {
			c[1].archives["base.tar"] = append(c[1].archives["base.tar"], file("base/5/INCREMENTAL.900", incr(2, 1, 0)))
		}), incremental.ErrNoFull},
		{"parent is not the backup it was taken from", edit(func(c []chainBackup) {
			c[2].archives["base.tar"] = replace(c[2].archives["base.tar"], "backup_label", chainLabel("0/6000028", "0/3000028").data)
		}), ErrDamaged},
		{"full backup labelled incremental", edit(func(c []chainBackup) {
			c[0].archives["base.tar"] = replace(c[0].archives["base.tar"], "backup_label", chainLabel("0/2000028", "0/1000028").data)
		}), ErrDamaged},
		{"label and manifest disagree", edit(func(c []chainBackup) {
			c[1].archives["base.tar"] = replace(c[1].archives["base.tar"], "backup_label", chainLabel("0/4000000", "0/2000028").data)
		}), ErrDamaged},
		{"older backup's file fails its CRC", edit(func(c []chainBackup) {
			c[1].mutate = func(p string, f map[string]any) {
				if p == "base/5/INCREMENTAL.100" {
					f["Checksum"] = "00000000"
				}
			}
		}), sealed.ErrChecksum},
		{"a file its manifest does not list", edit(func(c []chainBackup) {
			c[1].mutate = func(p string, f map[string]any) {
				if p == "base/5/500" {
					f["Path"] = "base/5/501"
				}
			}
		}), ErrDamaged},
		{"bad incremental header", edit(func(c []chainBackup) {
			c[2].archives["base.tar"] = replace(c[2].archives["base.tar"], "base/5/INCREMENTAL.500", strings.Repeat("x", 12))
		}), incremental.ErrFormat},
		{"incremental of another block size", edit(func(c []chainBackup) {
			// A 16 KiB-block server's file: its header padded to 16 KiB.
			h := incremental.AppendHeader(nil, &incremental.Header{Blocks: []uint32{0}, Truncate: 1})[:16]
			c[2].archives["base.tar"] = replace(c[2].archives["base.tar"], "base/5/INCREMENTAL.500", string(append(h, make([]byte, 2*16384-16)...)))
		}), incremental.ErrFormat},
		{"pg_control of another cluster", edit(func(c []chainBackup) {
			c[1].archives["base.tar"] = replace(c[1].archives["base.tar"], "global/pg_control", strings.Repeat("c", 8192))
		}), ErrDamaged},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir, ts, err := restoreChainTest(t, c.chain)
			if !errors.Is(err, c.want) {
				t.Fatalf("want %v, got %v", c.want, err)
			}
			t.Log(err)
			for _, d := range []string{dir, ts} {
				if _, serr := os.Stat(d); !errors.Is(serr, os.ErrNotExist) {
					t.Errorf("the failed restore left %s (%v)", d, serr)
				}
			}
		})
	}
}

// A tablespace dropped before the newest backup is not restored, and its
// archives in older backups are not downloaded.
func TestRestoreChainDroppedTablespace(t *testing.T) {
	c := testChain()
	delete(c[2].archives, "16384.tar")
	store := memory.New()
	chain := sealChain(t, store, c)
	for _, m := range chain[:2] {
		for _, ch := range m.Archives[1].Chunks {
			if err := store.Delete(context.Background(), ch.Key); err != nil {
				t.Fatal(err)
			}
		}
	}
	dir, err := restorePlan(t, store, &Plan{Backup: chain[2], Chain: chain}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "base/5/100")); err != nil {
		t.Fatal(err)
	}
}

func TestRestoreIncrementalWithoutChain(t *testing.T) {
	store := memory.New()
	chain := sealChain(t, store, testChain())
	if _, err := restorePlan(t, store, &Plan{Backup: chain[2]}, Options{}); !errors.Is(err, ErrUnreachable) {
		t.Fatalf("an incremental without its chain: %v", err)
	}
}
