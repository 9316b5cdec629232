package backup

import (
	"crypto/sha256"
	"encoding/hex"
	"testing"

	"github.com/walship/walship/manifest"
)

// FuzzParseServerManifest: a server's manifest is input from the network;
// no bytes may make the parser or the checks panic.
func FuzzParseServerManifest(f *testing.F) {
	body := "{ \"PostgreSQL-Backup-Manifest-Version\": 1,\n\"Files\": [\n" +
		`{ "Path": "backup_label", "Size": 3, "Last-Modified": "x", "Checksum-Algorithm": "CRC32C", "Checksum": "00000000" },` + "\n" +
		`{ "Encoded-Path": "6869", "Size": 1, "Checksum-Algorithm": "CRC32C", "Checksum": "zz" }` + "\n],\n" +
		"\"WAL-Ranges\": [\n{ \"Timeline\": 1, \"Start-LSN\": \"0/2000028\", \"End-LSN\": \"0/2000100\" }\n],\n"
	sum := sha256.Sum256([]byte(body))
	f.Add([]byte(body + `"Manifest-Checksum": "` + hex.EncodeToString(sum[:]) + "\"}\n"))
	f.Add([]byte("{}"))
	f.Add([]byte("\n\"Manifest-Checksum\""))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := manifest.ParseServer(b)
		if err != nil {
			return
		}
		if _, err := m.Ranges(); err != nil {
			return
		}
		_ = checkServer(m, map[string]fileSum{"backup_label": {size: 3}, "other": {size: 1}})
	})
}

// FuzzNextXIDFromControl: pg_control arrives in the tar stream.
func FuzzNextXIDFromControl(f *testing.F) {
	f.Add(make([]byte, 80), uint64(0))
	f.Fuzz(func(t *testing.T, b []byte, sys uint64) {
		_, _ = nextXIDFromControl(b, sys)
	})
}
