package archive

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/walship/walship/segment"
)

// A proof says that one segment file, exactly as it is on disk now, was
// pushed ahead by an earlier call and is durable in the archive, so that
// PostgreSQL's own call for it can return at once (see docs/PUSH.md).
//
// Proofs live in ProofDirName beside the segments (pg_wal/walship-ahead):
// PostgreSQL looks only at segment, history and backup file names in
// pg_wal and only at *.ready and *.done in archive_status; BASE_BACKUP
// sends pg_wal as an empty directory; pg_resetwal removes only WAL names.
//
// A proof is trusted only if everything it records still holds: the file's
// name, device, inode, mode, size, mtime and ctime (nanoseconds; recycling
// renames an old segment to a future name, which changes its ctime, and
// any write changes mtime and ctime), the archive's location as the
// command was configured, and its age (ProofMaxAge). Its bytes end with
// their own SHA-256: a torn or garbled proof is not one. It is written to a
// temporary name, fsynced, renamed and the directory fsynced, and only after
// the object is durable and the call that pushed it is about to succeed. A
// missing proof is always safe: the segment is then pushed again, and the
// archive answers that an identical copy is there.

// ProofDirName is the directory, beside the segments, that holds proofs.
const ProofDirName = "walship-ahead"

// ProofMaxAge bounds how long a proof is trusted. Proofs are meant for the
// next few calls of the archiver, seconds later; an old one is more likely
// to describe an archive that changed behind walship's back than to save
// time.
const ProofMaxAge = 10 * time.Minute

const (
	proofFormat = 1
	proofSuffix = ".proof"
	proofTemp   = ".tmp"
	maxProof    = 4096 // bytes; a proof is about 500
)

// fileStamp identifies one version of one file: what fstat said of it.
type fileStamp struct {
	Dev     uint64 `json:"dev"`
	Ino     uint64 `json:"ino"`
	Mode    uint32 `json:"mode"`
	Size    int64  `json:"size"`
	MtimeNs int64  `json:"mtime_ns"`
	CtimeNs int64  `json:"ctime_ns"`
}

// proof is what a proof file records.
type proof struct {
	Format int       `json:"format"`
	Name   string    `json:"name"`
	File   fileStamp `json:"file"`
	// Archive is the archive's location as configured (AheadOptions).
	Archive        string    `json:"archive"`
	SystemID       uint64    `json:"system_identifier,string"`
	ArchiveCreated time.Time `json:"archive_created"`
	Key            string    `json:"key"`
	SHA256         string    `json:"sha256"` // of the segment's bytes
	Stored         int64     `json:"stored"` // sealed bytes
	Written        time.Time `json:"written"`
}

func proofDir(walDir string) string { return filepath.Join(walDir, ProofDirName) }

func proofPath(walDir, name string) string {
	return filepath.Join(proofDir(walDir), name+proofSuffix)
}

func (p proof) encode() []byte {
	body, _ := json.Marshal(p)
	sum := sha256.Sum256(body)
	return append(append(body, '\n'), hex.EncodeToString(sum[:])+"\n"...)
}

var errGarbled = errors.New("garbled proof")

func decodeProof(b []byte) (proof, error) {
	body, tail, ok := bytes.Cut(b, []byte("\n"))
	if !ok || len(tail) != 2*sha256.Size+1 || tail[len(tail)-1] != '\n' {
		return proof{}, errGarbled
	}
	sum := sha256.Sum256(body)
	if hex.EncodeToString(sum[:]) != string(tail[:len(tail)-1]) {
		return proof{}, errGarbled
	}
	var p proof
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&p); err != nil {
		return proof{}, errGarbled
	}
	if p.Format != proofFormat {
		return proof{}, fmt.Errorf("proof format %d", p.Format)
	}
	if f, err := segment.ParseFile(p.Name); err != nil || f.Kind != segment.KindSegment || p.Key != Key(f) {
		return proof{}, errGarbled
	}
	return p, nil
}

// check says why p does not vouch for the file name, as it is now (st),
// in the archive at location; nil if it does.
func (p proof) check(name, location string, st fileStamp, now time.Time) error {
	switch {
	case p.Name != name:
		return fmt.Errorf("names %s", p.Name)
	case p.Archive != location:
		return fmt.Errorf("made for another archive (%s)", p.Archive)
	case p.File != st:
		return errors.New("the file changed since (rewritten, replaced or recycled)")
	case now.Before(p.Written) || now.Sub(p.Written) > ProofMaxAge:
		return fmt.Errorf("written at %s, not within %s of now", p.Written.Format(time.RFC3339), ProofMaxAge)
	}
	return nil
}

// readProof reads and checks the proof for the segment file at
// walDir/name.
func readProof(walDir, name, location string, now time.Time) (proof, error) {
	b, err := readSmall(proofPath(walDir, name))
	if err != nil {
		return proof{}, err
	}
	p, err := decodeProof(b)
	if err != nil {
		return p, err
	}
	fi, err := os.Stat(filepath.Join(walDir, name))
	if err != nil {
		return p, err
	}
	st, ok := stampOf(fi)
	if !ok {
		return p, errors.New("no file stamp on this platform")
	}
	return p, p.check(name, location, st, now)
}

func readSmall(path string) ([]byte, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() {
		return nil, errGarbled
	}
	b, err := io.ReadAll(io.LimitReader(f, maxProof+1))
	if err != nil {
		return nil, err
	}
	if len(b) > maxProof {
		return nil, errGarbled
	}
	return b, nil
}

// TakeProof reports whether the segment at path was pushed ahead to the
// archive at location by an earlier call and is still the file that was
// pushed. The proof is used up either way: removed, since PostgreSQL marks
// the segment done once this call succeeds. why says, when there was a
// proof that is not trusted, why not. No storage is touched.
func TakeProof(path, location string, now time.Time) (ok bool, why error) {
	name := filepath.Base(path)
	if f, err := segment.ParseFile(name); err != nil || f.Kind != segment.KindSegment {
		return false, nil //nolint:nilerr // only a segment goes ahead, so no other name has a proof
	}
	dir := filepath.Dir(path)
	_, err := readProof(dir, name, location, now)
	if errors.Is(err, os.ErrNotExist) && !exists(proofPath(dir, name)) {
		return false, nil // no proof (or no segment: the push will say so)
	}
	_ = os.Remove(proofPath(dir, name))
	return err == nil, err
}

func exists(p string) bool {
	_, err := os.Lstat(p)
	return err == nil
}

// writeProof makes p durable under its final name: temporary file, fsync,
// rename. The caller fsyncs the directory once for all proofs it wrote.
func writeProof(walDir string, p proof) error {
	dir := proofDir(walDir)
	var rnd [6]byte
	_, _ = rand.Read(rnd[:])
	tmp := filepath.Join(dir, "."+p.Name+proofSuffix+proofTemp+hex.EncodeToString(rnd[:]))
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(p.encode())
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, proofPath(walDir, p.Name))
	}
	if err != nil {
		_ = os.Remove(tmp)
	}
	return err
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}

// sweepProofs removes every proof that can no longer be used, and the
// temporary files of writers that were killed, and returns the proofs that
// still vouch for a segment PostgreSQL has not yet seen archived (its .ready
// file is there). Only names walship makes are touched. There is a single
// archiver per cluster; a concurrent writer whose temporary file goes only
// fails to write its proof, which is safe.
func sweepProofs(walDir, location string, now time.Time) map[string]proof {
	entries, err := os.ReadDir(proofDir(walDir))
	if err != nil {
		return nil
	}
	valid := make(map[string]proof)
	for _, e := range entries {
		n := e.Name()
		path := filepath.Join(proofDir(walDir), n)
		if strings.HasPrefix(n, ".") && strings.Contains(n, proofSuffix+proofTemp) {
			_ = os.Remove(path)
			continue
		}
		name, ok := strings.CutSuffix(n, proofSuffix)
		if !ok {
			continue
		}
		if f, err := segment.ParseFile(name); err != nil || f.Kind != segment.KindSegment {
			continue
		}
		p, err := readProof(walDir, name, location, now)
		if err == nil && exists(readyPath(walDir, name)) {
			valid[name] = p
			continue
		}
		_ = os.Remove(path)
	}
	return valid
}

func readyPath(walDir, name string) string {
	return filepath.Join(walDir, "archive_status", name+".ready")
}
