package backup

import (
	"archive/tar"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"path"

	"github.com/walship/walship/manifest"
	"github.com/walship/walship/sealed"
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// fileSum is what the tar stream said about one regular file.
type fileSum struct {
	size  int64
	crc32 uint32
}

// check compares the manifest's file list with what the tar streams held:
// every listed file received with its size and CRC-32C, nothing unlisted.
func checkServer(m *manifest.Server, got map[string]fileSum) error {
	seen := 0
	for _, f := range m.Files {
		p, err := f.Name()
		if err != nil {
			return err
		}
		s, ok := got[p]
		if !ok {
			return fmt.Errorf("%w: %s is in the server's manifest but not in the data received", ErrIncomplete, p)
		}
		seen++
		if s.size != f.Size {
			return fmt.Errorf("%w: %s: received %d bytes, server's manifest says %d", ErrIncomplete, p, s.size, f.Size)
		}
		if f.CRCMismatch(s.crc32) {
			return fmt.Errorf("%w: %s: CRC-32C differs from the server's manifest", sealed.ErrChecksum, p)
		}
	}
	if seen != len(got) {
		for p := range got {
			if !lists(m, p) {
				return fmt.Errorf("%w: %s was received but is not in the server's manifest", ErrIncomplete, p)
			}
		}
	}
	return nil
}

func lists(m *manifest.Server, p string) bool {
	for _, f := range m.Files {
		if name, err := f.Name(); f.Path == p || (err == nil && name == p) {
			return true
		}
	}
	return false
}

// tarSummer reads one tar stream and records each regular file's size and
// CRC-32C under prefix (the path the server's manifest uses). It keeps the
// bytes of global/pg_control.
type tarSummer struct {
	prefix    string
	files     map[string]fileSum
	pgControl []byte
	label     []byte
}

func (t *tarSummer) run(r io.Reader) error {
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("%w: tar stream: %w", ErrIncomplete, err)
		}
		if h.Typeflag != tar.TypeReg {
			continue
		}
		name := path.Clean(t.prefix + h.Name)
		c := crc32.New(castagnoli)
		var w io.Writer = c
		var ctl bytes.Buffer
		if name == "global/pg_control" || name == "backup_label" {
			w = io.MultiWriter(c, &ctl)
		}
		n, err := io.Copy(w, tr)
		if err != nil {
			return fmt.Errorf("%w: tar stream: %s: %w", ErrIncomplete, name, err)
		}
		t.files[name] = fileSum{size: n, crc32: c.Sum32()}
		switch name {
		case "global/pg_control":
			t.pgControl = ctl.Bytes()
		case "backup_label":
			t.label = ctl.Bytes()
		}
	}
}

// nextXIDFromControl reads checkPointCopy.nextXid from pg_control (the
// layout of PostgreSQL 12 and later on a little-endian machine), after
// checking that the file belongs to sysID.
func nextXIDFromControl(b []byte, sysID uint64) (uint64, bool) {
	if len(b) < 72 || binary.LittleEndian.Uint64(b[0:8]) != sysID {
		return 0, false
	}
	return binary.LittleEndian.Uint64(b[64:72]), true
}
