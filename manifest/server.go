package manifest

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/walship/walship/sealed"
	"github.com/walship/walship/segment"
)

// Server is the part of PostgreSQL's backup_manifest walship checks.
type Server struct {
	Version   int          `json:"PostgreSQL-Backup-Manifest-Version"`
	Files     []ServerFile `json:"Files"`
	WALRanges []struct {
		Timeline uint32 `json:"Timeline"`
		Start    string `json:"Start-LSN"`
		End      string `json:"End-LSN"`
	} `json:"WAL-Ranges"`
	Checksum string `json:"Manifest-Checksum"`
}

// ParseServer parses a backup_manifest and checks its own SHA-256,
// which covers every byte before the line holding it.
func ParseServer(b []byte) (*Server, error) {
	i := bytes.LastIndex(b, []byte("\n\"Manifest-Checksum\""))
	if i < 0 {
		return nil, fmt.Errorf("server backup_manifest has no checksum line: %w", sealed.ErrChecksum)
	}
	var m Server
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("server backup_manifest: %w", err)
	}
	sum := sha256.Sum256(b[:i+1])
	if !strings.EqualFold(hex.EncodeToString(sum[:]), m.Checksum) {
		return nil, fmt.Errorf("server backup_manifest checksum mismatch: %w", sealed.ErrChecksum)
	}
	if m.Version < 1 || len(m.WALRanges) == 0 {
		return nil, fmt.Errorf("server backup_manifest: version %d with %d WAL ranges", m.Version, len(m.WALRanges))
	}
	return &m, nil
}

// Ranges converts the manifest's WAL ranges.
func (m *Server) Ranges() ([]WALRange, error) {
	var out []WALRange
	for _, r := range m.WALRanges {
		s, err := segment.ParseLSN(r.Start)
		if err != nil {
			return nil, fmt.Errorf("server backup_manifest WAL range: %w", err)
		}
		e, err := segment.ParseLSN(r.End)
		if err != nil {
			return nil, fmt.Errorf("server backup_manifest WAL range: %w", err)
		}
		out = append(out, WALRange{Timeline: r.Timeline, Start: s, End: e})
	}
	// The server lists ranges newest timeline first.
	for i, j := 0, len(out)-1; i < j; i, j = i+1, j-1 {
		out[i], out[j] = out[j], out[i]
	}
	return out, nil
}

// ServerFile is one file the server's backup_manifest lists.
type ServerFile struct {
	Path        string `json:"Path"`
	EncodedPath string `json:"Encoded-Path"` // hex, for a name that is not UTF-8
	Size        int64  `json:"Size"`
	Algorithm   string `json:"Checksum-Algorithm"`
	Checksum    string `json:"Checksum"`
}

// Name is the file's path in the data directory, decoded from
// Encoded-Path when the server wrote one.
func (f ServerFile) Name() (string, error) {
	if f.EncodedPath == "" {
		return f.Path, nil
	}
	b, err := hex.DecodeString(f.EncodedPath)
	if err != nil {
		return "", fmt.Errorf("server backup_manifest: bad Encoded-Path: %w", err)
	}
	return string(b), nil
}

// CRCMismatch reports whether the file's checksum is a CRC-32C that c
// does not match. The manifest writes the value's bytes in the server's
// memory order, so either byte order is accepted; another algorithm (or
// none) is not checked here.
func (f ServerFile) CRCMismatch(c uint32) bool {
	if f.Algorithm != "CRC32C" {
		return false
	}
	var le, be [4]byte
	binary.LittleEndian.PutUint32(le[:], c)
	binary.BigEndian.PutUint32(be[:], c)
	return !strings.EqualFold(f.Checksum, hex.EncodeToString(le[:])) && !strings.EqualFold(f.Checksum, hex.EncodeToString(be[:]))
}
