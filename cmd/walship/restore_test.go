package main

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/walship/walship/archive"
	"github.com/walship/walship/backends/fs"
	"github.com/walship/walship/config"
	"github.com/walship/walship/fetch"
	"github.com/walship/walship/manifest"
	"github.com/walship/walship/sealed"
	"github.com/walship/walship/segment"
)

// fsBackup makes a directory archive holding WAL segment 2 and one backup
// (id 20260101T000000Z) whose base.tar is built from entries by add; mutate
// may change the manifest before it is written.
func fsBackup(t *testing.T, add func(tw *tar.Writer), mutate func(*manifest.Manifest)) string {
	t.Helper()
	ctx := context.Background()
	dir := t.TempDir()
	store, err := fs.New(dir)
	if err != nil {
		t.Fatal(err)
	}
	a := archive.New(store, slog.New(slog.DiscardHandler))
	if _, err := a.ClaimIdentity(ctx, archive.Identity{SystemIdentifier: 42, PGVersion: "15", SegmentSize: 16 << 20, BlockSize: 8192}); err != nil {
		t.Fatal(err)
	}
	if err := store.PutIfAbsent(ctx, archive.SegmentKey(segment.Name{TLI: 1, SegNo: 2}, 16<<20), strings.NewReader("x"), 1); err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	reg := func(name, data string) {
		_ = tw.WriteHeader(&tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o600, Size: int64(len(data))})
		_, _ = tw.Write([]byte(data))
	}
	reg("backup_label", "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\n")
	reg("PG_VERSION", "15\n")
	add(tw)
	reg("global/pg_control", strings.Repeat("c", 8192))
	_ = tw.Close()
	sl, err := sealed.NewSealer(sealed.Compression{Codec: sealed.CodecZstd})
	if err != nil {
		t.Fatal(err)
	}
	const id = "20260101T000000Z"
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
	m := &manifest.Manifest{Format: manifest.Format, ID: id, SystemIdentifier: 42, SegmentSize: 16 << 20,
		Timeline: 1, StopTimeline: 1, StartLSN: 0x2000028, StopLSN: 0x2000100, WALRanges: []manifest.WALRange{{Timeline: 1, Start: 0x2000028, End: 0x2000100}},
		Archives: []manifest.Archive{{Name: "base.tar", Size: int64(b.Len()),
			Chunks: []manifest.Chunk{put(manifest.Prefix+id+"/base.tar.00000", b.Bytes())}}},
		ServerManifest: put(manifest.Prefix+id+"/backup_manifest", []byte("{}")),
	}
	if mutate != nil {
		mutate(m)
	}
	mb, _ := json.Marshal(m)
	if err := store.PutIfAbsent(ctx, manifest.Prefix+id+"/manifest.json", bytes.NewReader(mb), int64(len(mb))); err != nil {
		t.Fatal(err)
	}
	return dir
}

// Damaged or hostile backup content is status 4 (damaged), never 3
// (unreachable), and leaves no data directory behind.
func TestRestoreDamagedBackupStatus(t *testing.T) {
	hdr := func(h tar.Header) func(*tar.Writer) {
		return func(tw *tar.Writer) { _ = tw.WriteHeader(&h) }
	}
	cases := []struct {
		name   string
		add    func(*tar.Writer)
		mutate func(*manifest.Manifest)
		want   string
	}{
		{"symlink", hdr(tar.Header{Name: "pg_tblspc/16385", Typeflag: tar.TypeSymlink, Linkname: "/etc"}), nil, "symbolic link"},
		{"hard link", hdr(tar.Header{Name: "x", Typeflag: tar.TypeLink, Linkname: "PG_VERSION"}), nil, "hard link"},
		{"device", hdr(tar.Header{Name: "null", Typeflag: tar.TypeChar, Devmajor: 1, Devminor: 3}), nil, "device"},
		{"fifo", hdr(tar.Header{Name: "pipe", Typeflag: tar.TypeFifo}), nil, "FIFO"},
		{"no archives", func(*tar.Writer) {}, func(m *manifest.Manifest) { m.Archives = nil }, "base.tar"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			arch := fsBackup(t, c.add, c.mutate)
			pgdata := filepath.Join(t.TempDir(), "pgdata")
			code, out := runIn(t, t.TempDir(), nil, "restore", "--archive", arch, "--pgdata", pgdata, "--target-immediate")
			if code != exitIntegrity || !strings.Contains(out, c.want) {
				t.Errorf("status %d, want %d, naming %q: %s", code, exitIntegrity, c.want, out)
			}
			if _, err := os.Stat(pgdata); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("left %s behind (%v)", pgdata, err)
			}
		})
	}
	t.Run("not tar", func(t *testing.T) {
		// A chunk that is sealed correctly but holds no tar stream.
		arch := fsBackup(t, func(*tar.Writer) {}, nil)
		store, _ := fs.New(arch)
		sl, _ := sealed.NewSealer(sealed.Compression{Codec: sealed.CodecZstd})
		junk := bytes.Repeat([]byte("not a tar stream "), 200)
		s, _ := sl.Seal(junk)
		key := manifest.Prefix + "20260101T000000Z/base.tar.00000"
		if err := store.Put(context.Background(), key, s.Reader(), s.Size()); err != nil {
			t.Fatal(err)
		}
		mkey := manifest.Prefix + "20260101T000000Z/manifest.json"
		mb, _ := os.ReadFile(filepath.Join(arch, mkey))
		var m manifest.Manifest
		_ = json.Unmarshal(mb, &m)
		m.Archives[0].Chunks[0] = manifest.Chunk{Key: key, Size: int64(len(junk)), StoredSize: s.Size(), SHA256: hex.EncodeToString(s.Header.SHA256[:])}
		mb, _ = json.Marshal(m)
		if err := store.Put(context.Background(), mkey, bytes.NewReader(mb), int64(len(mb))); err != nil {
			t.Fatal(err)
		}
		code, out := runIn(t, t.TempDir(), nil, "restore", "--archive", arch, "--pgdata", filepath.Join(t.TempDir(), "p"), "--target-immediate")
		if code != exitIntegrity || !strings.Contains(out, "not a valid tar") {
			t.Errorf("status %d, want %d: %s", code, exitIntegrity, out)
		}
	})
	t.Run("missing chunk", func(t *testing.T) {
		arch := fsBackup(t, func(*tar.Writer) {}, nil)
		if err := os.Remove(filepath.Join(arch, manifest.Prefix+"20260101T000000Z/base.tar.00000")); err != nil {
			t.Fatal(err)
		}
		pgdata := filepath.Join(t.TempDir(), "p")
		code, out := runIn(t, t.TempDir(), nil, "restore", "--archive", arch, "--pgdata", pgdata, "--target-immediate")
		if code != exitIntegrity || !strings.Contains(out, "is missing") {
			t.Errorf("status %d, want %d: %s", code, exitIntegrity, out)
		}
		if _, err := os.Stat(pgdata); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("left %s behind (%v)", pgdata, err)
		}
	})
	t.Run("intact", func(t *testing.T) {
		arch := fsBackup(t, func(*tar.Writer) {}, nil)
		pgdata := filepath.Join(t.TempDir(), "pgdata")
		if code, out := runIn(t, t.TempDir(), nil, "restore", "--archive", arch, "--pgdata", pgdata, "--target-immediate"); code != 0 {
			t.Fatalf("status %d: %s", code, out)
		}
		if _, err := os.Stat(filepath.Join(pgdata, "recovery.signal")); err != nil {
			t.Error(err)
		}
	})
}

// --pgdata never means the working directory by accident.
func TestRestoreDataDirFlag(t *testing.T) {
	arch := fsBackup(t, func(*tar.Writer) {}, nil)
	wd := t.TempDir()
	for _, v := range []string{"", " ", ".", wd, "/"} {
		code, out := runIn(t, wd, nil, "restore", "--archive", arch, "--pgdata", v, "--target-immediate")
		if code != exitUsage || !strings.Contains(out, "--pgdata") {
			t.Errorf("--pgdata %q: status %d, want %d: %s", v, code, exitUsage, out)
		}
		if ents, _ := os.ReadDir(wd); len(ents) != 0 {
			t.Fatalf("--pgdata %q: restore wrote into the working directory: %v", v, ents)
		}
	}
	// A relative path is taken from the working directory.
	code, out := runIn(t, wd, nil, "restore", "--archive", arch, "--pgdata", "sub/pgdata", "--target-immediate")
	if code != 0 {
		t.Fatalf("relative --pgdata: status %d: %s", code, out)
	}
	if _, err := os.Stat(filepath.Join(wd, "sub", "pgdata", "PG_VERSION")); err != nil {
		t.Errorf("relative --pgdata: %v", err)
	}
	b, _ := os.ReadFile(filepath.Join(wd, "sub", "pgdata", "postgresql.auto.conf"))
	if !strings.Contains(string(b), fmt.Sprintf("--archive %s ", arch)) {
		t.Errorf("restore_command: %s", b)
	}
}

// The restore_command's shell takes only a regular file from the spool:
// a directory, a symlink or nothing named like the segment falls through
// to walship fetch.
func TestSpoolTakeMovesOnlyRegularFiles(t *testing.T) {
	const seg = "000000010000000000000007"
	for _, kind := range []string{"file", "dir", "symlink", "none"} {
		spool, pgwal := t.TempDir(), t.TempDir()
		p := filepath.Join(spool, seg)
		switch kind {
		case "file":
			if err := os.WriteFile(p, []byte("wal"), 0o600); err != nil {
				t.Fatal(err)
			}
		case "dir":
			if err := os.Mkdir(p, 0o700); err != nil {
				t.Fatal(err)
			}
		case "symlink":
			if err := os.Symlink("/etc/passwd", p); err != nil {
				t.Fatal(err)
			}
		}
		dest := filepath.Join(pgwal, "RECOVERYXLOG")
		line := strings.NewReplacer("%f", seg, "%p", dest).Replace(spoolTake(spool) + "echo fallback")
		out, err := exec.Command("sh", "-c", line).CombinedOutput()
		if err != nil {
			t.Fatalf("%s: %v %s", kind, err, out)
		}
		st, serr := os.Lstat(dest)
		moved := serr == nil
		if kind == "file" {
			if !moved || !st.Mode().IsRegular() || strings.Contains(string(out), "fallback") {
				t.Errorf("a regular spool file was not taken by rename: %q", out)
			}
			continue
		}
		if moved || !strings.Contains(string(out), "fallback") {
			t.Errorf("%s in the spool: moved=%v, output %q; want the fallback", kind, moved, out)
		}
	}
}

// An incremental backup whose parent is not in the archive cannot be
// restored: status 6, naming the broken chain, and nothing written.
func TestRestoreBrokenChainStatus(t *testing.T) {
	arch := fsBackup(t, func(*tar.Writer) {}, func(m *manifest.Manifest) {
		m.Type, m.Parent = manifest.TypeIncremental, "20251231T000000Z"
	})
	pgdata := filepath.Join(t.TempDir(), "pgdata")
	code, out := runIn(t, t.TempDir(), nil, "restore", "--archive", arch, "--pgdata", pgdata, "--backup", "20260101T000000Z")
	if code != exitUnreachable || !strings.Contains(out, "chain broken") || !strings.Contains(out, "20251231T000000Z") {
		t.Errorf("status %d, want %d naming the missing parent: %s", code, exitUnreachable, out)
	}
	if _, err := os.Stat(pgdata); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("left %s behind (%v)", pgdata, err)
	}
}

// restoreCommandIn reads the restore_command restore wrote into pgdata.
func restoreCommandIn(t *testing.T, pgdata string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(pgdata, "postgresql.auto.conf"))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "restore_command = '"); ok {
			return strings.ReplaceAll(strings.TrimSuffix(v, "'"), "''", "'")
		}
	}
	t.Fatalf("no restore_command in:\n%s", b)
	return ""
}

// The restore_command walship restore writes for a recovery without the
// agent moves a segment out of the prefetcher's spool with mv before it
// starts walship: exactly this shell, and, run by /bin/sh in a data
// directory as PostgreSQL runs it, only a regular file, only while the
// mark of this archive's prefetcher is there, only from a spool of this
// user; everything else falls through to walship fetch. With --prefetch 0
// there is no mv.
func TestRestoreCommandTakesPrefetchedByMv(t *testing.T) {
	const seg = "000000010000000000000007"
	arch := fsBackup(t, func(*tar.Writer) {}, nil)
	pgdata := filepath.Join(t.TempDir(), "pgdata")
	if code, out := runIn(t, t.TempDir(), fetchEnv(nil), "restore", "--archive", arch, "--pgdata", pgdata, "--target-immediate"); code != 0 {
		t.Fatalf("restore: status %d: %s", code, out)
	}
	line := restoreCommandIn(t, pgdata)
	const dir = "pg_wal/.walship-prefetch"
	mark := fetch.PrefetchMark("file://" + arch)
	want := "[ -O " + dir + " ] && [ -f " + dir + "/" + mark + " ] && [ -f " + dir + "/%f ] && [ ! -h " + dir + "/%f ] && mv -f " +
		dir + "/%f %p 2>/dev/null || "
	exe, _ := os.Executable()
	if line != want+exe+" fetch --archive "+arch+" --prefetch 16 %f %p" {
		t.Fatalf("restore_command\n%s\nwant\n%s<walship> fetch --archive %s --prefetch 16 %%f %%p", line, want, arch)
	}

	for _, kind := range []string{"placed", "no mark", "another archive's mark", "none", "dir", "symlink", "spool of another user"} {
		t.Run(kind, func(t *testing.T) {
			data := t.TempDir() // the data directory, where PostgreSQL runs restore_command
			sp := filepath.Join(data, dir)
			if err := os.MkdirAll(sp, 0o700); err != nil {
				t.Fatal(err)
			}
			m := filepath.Join(sp, mark)
			switch kind {
			case "another archive's mark":
				m = filepath.Join(sp, fetch.PrefetchMark("file:///elsewhere"))
			case "no mark":
				m = ""
			}
			if m != "" {
				if err := os.WriteFile(m, nil, 0o600); err != nil {
					t.Fatal(err)
				}
			}
			p := filepath.Join(sp, seg)
			switch kind {
			case "dir":
				if err := os.Mkdir(p, 0o700); err != nil {
					t.Fatal(err)
				}
			case "symlink":
				if err := os.Symlink("/etc/passwd", p); err != nil {
					t.Fatal(err)
				}
			case "none":
			default:
				if err := os.WriteFile(p, []byte("wal"), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			if kind == "spool of another user" {
				if os.Geteuid() != 0 {
					t.Skip("needs root to give the spool to another user")
				}
				if err := os.Chown(sp, 65534, 65534); err != nil {
					t.Fatal(err)
				}
			}
			// The shell as written, walship fetch replaced by an echo.
			sh := strings.NewReplacer("%f", seg, "%p", "pg_wal/RECOVERYXLOG").Replace(want + "echo fallback")
			cmd := exec.Command("/bin/sh", "-c", sh)
			cmd.Dir = data
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("%v %s", err, out)
			}
			got, rerr := os.ReadFile(filepath.Join(data, "pg_wal", "RECOVERYXLOG"))
			if kind == "placed" {
				if rerr != nil || string(got) != "wal" || strings.Contains(string(out), "fallback") {
					t.Fatalf("a placed segment was not moved (%v), output %q", rerr, out)
				}
				if _, err := os.Lstat(p); err == nil {
					t.Fatal("the segment is still in the spool after mv")
				}
				return
			}
			if rerr == nil || !strings.Contains(string(out), "fallback") {
				t.Fatalf("moved %q, output %q; want nothing moved and walship fetch run", got, out)
			}
		})
	}

	off := filepath.Join(t.TempDir(), "pgdata")
	if code, out := runIn(t, t.TempDir(), fetchEnv(map[string]string{config.EnvFetchPrefetch: "0"}), "restore", "--archive", arch, "--pgdata", off, "--target-immediate"); code != 0 {
		t.Fatalf("restore with prefetch off: status %d: %s", code, out)
	}
	if line := restoreCommandIn(t, off); strings.Contains(line, "mv") || !strings.HasPrefix(line, exe+" fetch ") {
		t.Errorf("with prefetch off restore wrote %q, want walship fetch alone", line)
	}
	elsewhere := filepath.Join(t.TempDir(), "pf dir")
	abs := filepath.Join(t.TempDir(), "pgdata")
	if code, out := runIn(t, t.TempDir(), fetchEnv(map[string]string{config.EnvFetchPrefetchDir: elsewhere}), "restore", "--archive", arch, "--pgdata", abs, "--target-immediate"); code != 0 {
		t.Fatalf("restore with a prefetch dir: status %d: %s", code, out)
	}
	q := "'" + elsewhere + "'"
	if line := restoreCommandIn(t, abs); !strings.HasPrefix(line, "[ -O "+q+" ] && [ -f "+q+"/"+mark+" ] && [ -f "+q+"/%f ] && ") {
		t.Errorf("with --prefetch-dir restore wrote %q, want the mv from that directory", line)
	}
}
