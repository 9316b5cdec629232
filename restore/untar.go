package restore

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/walship/walship/archive"
	"github.com/walship/walship/manifest"
)

// checkArchives refuses a manifest that does not describe a base backup:
// exactly one base.tar for the data directory, and each tablespace once,
// at an absolute location.
func checkArchives(m *manifest.Manifest) error {
	bases := 0
	names := map[string]bool{}
	locations := map[string]bool{}
	for _, ar := range m.Archives {
		if names[ar.Name] {
			return fmt.Errorf("backup %s: its manifest lists archive %q twice: %w", m.ID, ar.Name, ErrDamaged)
		}
		names[ar.Name] = true
		if ar.Location == "" {
			bases++
			continue
		}
		if !filepath.IsAbs(ar.Location) || ar.TablespaceOID == 0 || locations[ar.Location] {
			return fmt.Errorf("backup %s: its manifest has a bad tablespace entry (oid %d, location %q): %w",
				m.ID, ar.TablespaceOID, ar.Location, ErrDamaged)
		}
		locations[ar.Location] = true
	}
	if bases != 1 {
		return fmt.Errorf("backup %s: its manifest lists %d data directory archives (base.tar), want 1: %w", m.ID, bases, ErrDamaged)
	}
	return nil
}

// checkDataDir checks that the unpacked base.tar is a data directory:
// PostgreSQL sends backup_label first and global/pg_control last, so both
// being there also says the stream was not cut short. Without
// backup_label PostgreSQL would start from pg_control's checkpoint and
// never replay what the backup needs: a silently inconsistent copy.
func checkDataDir(dir string) error {
	for _, f := range []string{"backup_label", "PG_VERSION", "global/pg_control"} {
		fi, err := os.Lstat(filepath.Join(dir, f))
		if errors.Is(err, os.ErrNotExist) || err == nil && !fi.Mode().IsRegular() {
			return fmt.Errorf("base.tar holds no %s: not a complete base backup: %w", f, ErrDamaged)
		}
		if err != nil {
			return fmt.Errorf("%w: %w", archive.ErrLocal, err)
		}
	}
	return nil
}

// sourceReader remembers the error of the stream under the tar reader, so
// that a chunk that could not be fetched or failed its checksum keeps its
// own status, and only a tar error of the bytes themselves is ErrDamaged.
type sourceReader struct {
	r   io.Reader
	err error
}

func (s *sourceReader) Read(p []byte) (int, error) {
	n, err := s.r.Read(p)
	if err != nil && err != io.EOF && s.err == nil {
		s.err = err
	}
	return n, err
}

// streamErr classifies an error met reading the tar stream.
func (s *sourceReader) streamErr(what string, err error) error {
	if s.err != nil {
		return fmt.Errorf("%s: %w", what, s.err)
	}
	return fmt.Errorf("%s is not a valid tar archive: %w: %w", what, err, ErrDamaged)
}

// untar unpacks a base backup tar stream into dir: directories and regular
// files only, every path inside dir. PostgreSQL sends nothing else when
// asked for a tablespace_map, as walship asks: the links in pg_tblspc come
// as tablespace_map lines (rewritten after the restore, and made into links
// by PostgreSQL at start), and the server skips every other special file.
// So a symbolic or hard link, a device, a FIFO, a path outside dir, a name
// given twice, bytes that are not tar or data after the end of the archive
// are damage, ErrDamaged, and nothing of the kind is created.
func untar(r io.Reader, dir string) error {
	src := &sourceReader{r: r}
	tr := tar.NewReader(src)
	buf := make([]byte, 1<<20)
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
		dst := filepath.Join(dir, name)
		mode := os.FileMode(h.Mode) & os.ModePerm
		switch h.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(dst, mode|0o700); err != nil {
				return createErr(h.Name, err)
			}
		case tar.TypeReg:
			if err := writeFile(dst, h.Name, mode|0o600, os.O_EXCL, tr, src, buf); err != nil {
				return err
			}
		default:
			return fmt.Errorf("backup holds %q, %s, which a PostgreSQL base backup never holds: %w", h.Name, entryKind(h), ErrDamaged)
		}
	}
}

func entryKind(h *tar.Header) string {
	switch h.Typeflag {
	case tar.TypeSymlink:
		return fmt.Sprintf("a symbolic link to %q", h.Linkname)
	case tar.TypeLink:
		return fmt.Sprintf("a hard link to %q", h.Linkname)
	case tar.TypeChar, tar.TypeBlock:
		return "a device"
	case tar.TypeFifo:
		return "a FIFO"
	}
	return fmt.Sprintf("an entry of tar type %q", h.Typeflag)
}

// createErr: a name that collides with what the same stream already
// created (given twice, or a file where a directory must be) is damage;
// anything else is the local disk.
func createErr(name string, err error) error {
	if errors.Is(err, fs.ErrExist) || errors.Is(err, syscall.ENOTDIR) || errors.Is(err, syscall.EISDIR) {
		return fmt.Errorf("backup holds %q twice or under a file: %w", name, ErrDamaged)
	}
	return fmt.Errorf("%w: %w", archive.ErrLocal, err)
}

// writeFile writes the tar entry tr to dst, created with mode; flag is
// os.O_EXCL for a new file, os.O_TRUNC to replace one.
func writeFile(dst, name string, mode os.FileMode, flag int, tr io.Reader, src *sourceReader, buf []byte) error {
	f, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|flag, mode)
	if errors.Is(err, os.ErrNotExist) {
		// A stream without the directory entry first: make it.
		if err := os.MkdirAll(filepath.Dir(dst), 0o700); err != nil {
			return createErr(name, err)
		}
		f, err = os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|flag, mode)
	}
	if err != nil {
		return createErr(name, err)
	}
	for {
		n, rerr := tr.Read(buf)
		if n > 0 {
			if _, err := f.Write(buf[:n]); err != nil {
				f.Close()
				return fmt.Errorf("%w: %w", archive.ErrLocal, err)
			}
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			f.Close()
			return src.streamErr("backup file "+name, rerr)
		}
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("%w: %w", archive.ErrLocal, err)
	}
	return nil
}

// drainZeros reads the stream to its end once tar says the archive ended,
// so that every chunk the manifest names is fetched and verified, and
// refuses anything but the zero padding tar writers leave.
func drainZeros(src *sourceReader, buf []byte) error {
	for {
		n, err := src.Read(buf)
		for _, c := range buf[:n] {
			if c != 0 {
				return fmt.Errorf("backup tar stream has data after the end of the archive: %w", ErrDamaged)
			}
		}
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("backup tar stream: %w", err)
		}
	}
}
