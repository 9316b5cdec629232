package manifest

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/walship/walship/sealed"
	"github.com/walship/walship/segment"
)

// Server is the part of PostgreSQL's backup_manifest walship checks.
type Server struct {
	Version int `json:"PostgreSQL-Backup-Manifest-Version"`
	Files   []struct {
		Path        string `json:"Path"`
		EncodedPath string `json:"Encoded-Path"`
		Size        int64  `json:"Size"`
		Algorithm   string `json:"Checksum-Algorithm"`
		Checksum    string `json:"Checksum"`
	} `json:"Files"`
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
