package restore

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/walship/walship/archive"
	"github.com/walship/walship/backends"
	"github.com/walship/walship/incremental"
	"github.com/walship/walship/manifest"
	"github.com/walship/walship/sealed"
	"github.com/walship/walship/segment"
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// listed is one file of a backup's server manifest, by the name it has in
// the restored directory (without INCREMENTAL.).
type listed struct {
	incremental bool // the backup holds it as INCREMENTAL.<name>
	size        int64
	file        manifest.ServerFile // its checksum
	seen        bool
	want        int64 // its size once written
}

// member is one backup of the chain being applied.
type member struct {
	m       *manifest.Manifest
	first   bool // the full backup the chain starts from
	newest  bool
	parent  *parentLabel       // nil for the full backup
	files   map[string]*listed // by manifest path without INCREMENTAL.
	dirs    map[string]bool    // directories its streams hold, by manifest path
	skipped []string           // manifest prefixes of archives not restored

	labelText []byte
	label     label
	hasLabel  bool
}

// loadMember reads backup i of an n-backup chain's server manifest.
func loadMember(ctx context.Context, store backends.Storage, m *manifest.Manifest, i, n int, parent *member) (*member, error) {
	sm, err := readServerManifest(ctx, store, m)
	if err != nil {
		return nil, err
	}
	mb := &member{m: m, first: i == 0, newest: i == n-1,
		files: make(map[string]*listed, len(sm.Files)), dirs: map[string]bool{}}
	if parent != nil {
		// Only the parent's label is kept, so that its file list goes.
		mb.parent = &parentLabel{id: parent.m.ID, label: parent.label}
	}
	if mb.first == m.Incremental() {
		return nil, fmt.Errorf("%w: backup %s is %s but stands at place %d of its chain", ErrDamaged, m.ID, m.Kind(), i+1)
	}
	for _, f := range sm.Files {
		p, err := f.Name()
		if err != nil {
			return nil, fmt.Errorf("%w: backup %s: %w", ErrDamaged, m.ID, err)
		}
		e := &listed{size: f.Size, file: f, want: f.Size}
		if rel, ok := incremental.Name(p); ok && incrementalDir(p) {
			p, e.incremental = rel, true
		}
		if mb.files[p] != nil {
			return nil, fmt.Errorf("%w: backup %s: server manifest lists %s twice (or in full and as INCREMENTAL.)", ErrDamaged, m.ID, p)
		}
		mb.files[p] = e
	}
	return mb, nil
}

// unpack streams each of the member's archives that the restore keeps
// into its directory, then checks every listed file came.
func (mb *member) unpack(ctx context.Context, store backends.Storage, dirs map[string]string, o Options, buf []byte) error {
	for _, ar := range mb.m.Archives {
		dest, ok := dirs[ar.Name]
		if !ok {
			// A tablespace dropped before the newest backup.
			mb.skipped = append(mb.skipped, manifestPrefix(ar))
			continue
		}
		prefix := manifestPrefix(ar)
		mb.dirs[strings.TrimSuffix(prefix, "/")] = true
		err := extractArchive(ctx, store, ar, o, func(r io.Reader) error { return mb.untar(r, dest, prefix, buf) })
		if err != nil {
			return fmt.Errorf("backup %s: %w", mb.m.ID, err)
		}
	}
	for p, f := range mb.files {
		if !f.seen && !mb.skippedPath(p) {
			return fmt.Errorf("%w: backup %s: %s is in its server manifest but not in its data", ErrDamaged, mb.m.ID, p)
		}
	}
	if !mb.hasLabel {
		return fmt.Errorf("%w: backup %s holds no backup_label", ErrDamaged, mb.m.ID)
	}
	return nil
}

func (mb *member) skippedPath(p string) bool {
	for _, s := range mb.skipped {
		if s != "" && strings.HasPrefix(p, s) {
			return true
		}
	}
	return false
}

// untar applies one tar stream of the member to dest, with the safety
// rules of untar: directories and regular files only, every path inside.
func (mb *member) untar(r io.Reader, dest, prefix string, buf []byte) error {
	src := &sourceReader{r: r}
	tr := tar.NewReader(src)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return drainZeros(src, buf)
		}
		if err != nil {
			return src.streamErr("backup tar stream", err)
		}
		name := strings.TrimSuffix(h.Name, "/")
		if !filepath.IsLocal(name) {
			return fmt.Errorf("backup holds a path outside the data directory: %q: %w", h.Name, ErrDamaged)
		}
		dst := filepath.Join(dest, name)
		mpath := prefix + filepath.ToSlash(name)
		switch h.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(dst, os.FileMode(h.Mode)&os.ModePerm|0o700); err != nil {
				return createErr(h.Name, err)
			}
			mb.sawDir(mpath)
		case tar.TypeReg:
			if err := mb.file(h, tr, src, dst, mpath, buf); err != nil {
				return err
			}
		default:
			return fmt.Errorf("backup holds %q, %s, which a PostgreSQL base backup never holds: %w", h.Name, entryKind(h), ErrDamaged)
		}
	}
}

// sawDir records mpath and its parents as directories of the backup.
func (mb *member) sawDir(mpath string) {
	for mpath != "" && mpath != "." && !mb.dirs[mpath] {
		mb.dirs[mpath] = true
		i := strings.LastIndexByte(mpath, '/')
		if i < 0 {
			return
		}
		mpath = mpath[:i]
	}
}

// file writes or patches one regular file, checking it against the
// server manifest as it streams by.
func (mb *member) file(h *tar.Header, tr io.Reader, src *sourceReader, dst, mpath string, buf []byte) error {
	key, incr := mpath, false
	if rel, ok := incremental.Name(mpath); ok && incrementalDir(mpath) {
		key, incr = rel, true
		dst = filepath.Join(filepath.Dir(dst), filepath.Base(rel))
	}
	f := mb.files[key]
	switch {
	case f == nil || f.incremental != incr:
		return fmt.Errorf("%w: it holds %s, which its server manifest does not list", ErrDamaged, mpath)
	case f.seen:
		return fmt.Errorf("backup holds %q twice: %w", h.Name, ErrDamaged)
	case h.Size != f.size:
		return fmt.Errorf("%w: %s has %d bytes, its server manifest says %d", ErrDamaged, mpath, h.Size, f.size)
	}
	f.seen = true
	mb.sawDir(path.Dir(mpath))
	crc := crc32.New(castagnoli)
	r := io.TeeReader(tr, crc)
	var keep *bytes.Buffer
	if mpath == "backup_label" || mpath == "global/pg_control" {
		if h.Size > 64<<10 {
			return fmt.Errorf("%w: %s has %d bytes", ErrDamaged, mpath, h.Size)
		}
		keep = &bytes.Buffer{}
		r = io.TeeReader(r, keep)
	}
	var err error
	if incr {
		f.want, err = mb.patch(dst, mpath, h.Size, r, src, buf)
	} else {
		err = writeFile(dst, h.Name, os.FileMode(h.Mode)&os.ModePerm|0o600, os.O_TRUNC, r, src, buf)
	}
	if err != nil {
		return err
	}
	if f.file.CRCMismatch(crc.Sum32()) {
		return fmt.Errorf("%w: %s: CRC-32C differs from its server manifest", sealed.ErrChecksum, mpath)
	}
	switch mpath {
	case "backup_label":
		return mb.checkLabel(keep.Bytes())
	case "global/pg_control":
		if b := keep.Bytes(); len(b) < 8 || binary.LittleEndian.Uint64(b) != mb.m.SystemIdentifier {
			return fmt.Errorf("%w: its pg_control is not of cluster %d", ErrDamaged, mb.m.SystemIdentifier)
		}
	}
	return nil
}

// patch applies an INCREMENTAL file to the file older backups left at
// dst and returns the file's new size.
func (mb *member) patch(dst, mpath string, size int64, r io.Reader, src *sourceReader, buf []byte) (int64, error) {
	damaged := func(err error) error {
		if src.err != nil {
			return src.streamErr("backup file "+mpath, err)
		}
		return fmt.Errorf("%w: %s: %w", ErrDamaged, mpath, err)
	}
	h, err := incremental.ReadHeader(r)
	if err != nil {
		return 0, damaged(err)
	}
	if err := h.CheckSize(size); err != nil {
		return 0, damaged(err)
	}
	f, err := os.OpenFile(dst, os.O_WRONLY, 0)
	if errors.Is(err, os.ErrNotExist) {
		return 0, damaged(fmt.Errorf("no older backup of the chain holds the file: %w", incremental.ErrNoFull))
	}
	if err != nil {
		return 0, createErr(mpath, err)
	}
	err = incremental.Apply(f, h, r, mb.newest, buf)
	if cerr := f.Close(); err == nil && cerr != nil {
		return 0, fmt.Errorf("%w: %w", archive.ErrLocal, cerr)
	}
	if errors.Is(err, incremental.ErrFormat) {
		return 0, damaged(err)
	}
	if err != nil {
		return 0, fmt.Errorf("%w: %s: %w", archive.ErrLocal, dst, err)
	}
	return int64(h.Length()) * incremental.BlockSize, nil
}

// parentLabel is what a member keeps of its parent.
type parentLabel struct {
	id    string
	label label
}

// label is what a backup_label says about where its backup stands.
type label struct {
	start, from       segment.LSN
	startTLI, fromTLI uint32
	incremental       bool
}

// parseLabel reads START WAL LOCATION, START TIMELINE and, in an
// incremental backup's label, INCREMENTAL FROM LSN and TLI.
func parseLabel(b []byte) (label, error) {
	var l label
	var found int
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, ": ")
		if !ok {
			continue
		}
		var err error
		switch k {
		case "START WAL LOCATION":
			v, _, _ = strings.Cut(v, " ")
			l.start, err = segment.ParseLSN(v)
			found |= 1
		case "START TIMELINE":
			l.startTLI, err = parseTLI(v)
			found |= 2
		case "INCREMENTAL FROM LSN":
			l.from, err = segment.ParseLSN(v)
			found |= 4
		case "INCREMENTAL FROM TLI":
			l.fromTLI, err = parseTLI(v)
			found |= 8
		}
		if err != nil {
			return l, fmt.Errorf("backup_label: %s: %w", k, err)
		}
	}
	if found&3 != 3 || found&12 != 0 && found&12 != 12 {
		return l, errors.New("backup_label lacks START WAL LOCATION or START TIMELINE, or has only half of INCREMENTAL FROM")
	}
	l.incremental = found&12 == 12
	return l, nil
}

func parseTLI(v string) (uint32, error) {
	n, err := strconv.ParseUint(v, 10, 32)
	if err == nil && n == 0 {
		err = errors.New("timeline 0")
	}
	return uint32(n), err
}

// checkLabel checks the member's backup_label against its manifest and
// its parent's label, as pg_combinebackup checks a chain: a full backup
// first, then incrementals each taken from the one before.
func (mb *member) checkLabel(b []byte) error {
	l, err := parseLabel(b)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrDamaged, err)
	}
	mb.label, mb.labelText, mb.hasLabel = l, b, true
	switch {
	case l.start != mb.m.StartLSN:
		return fmt.Errorf("%w: its backup_label starts at %s, its manifest at %s", ErrDamaged, l.start, mb.m.StartLSN)
	case l.incremental != !mb.first:
		return fmt.Errorf("%w: its backup_label says incremental=%v, but it is the %s of the chain", ErrDamaged,
			l.incremental, map[bool]string{true: "full backup", false: "incremental"}[mb.first])
	case mb.parent == nil:
		return nil
	}
	p := mb.parent.label
	if l.from != p.start || l.fromTLI != p.startTLI {
		return fmt.Errorf("%w: it was taken from the backup starting at %s on timeline %d, but its parent %s starts at %s on timeline %d",
			ErrDamaged, l.from, l.fromTLI, mb.parent.id, p.start, p.startTLI)
	}
	return nil
}
