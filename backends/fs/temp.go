package fs

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

const (
	// tempDir, under the root, holds the files being written. One small
	// directory is cheap to sweep on every run; the directories the files
	// end up in (wal/<timeline>/ has a file per segment) are not.
	tempDir = tmpPrefix + "inflight"
	// TempMaxAge is the age after which a temporary file is removed
	// whoever wrote it: no write takes an hour between its last byte and
	// its rename, so the writer is gone. Age is measured on the file
	// server's clock (against the modification time of the file just
	// written), so clock skew between NFS clients does not matter.
	TempMaxAge = time.Hour
	// sweepEvery bounds how often one process sweeps.
	sweepEvery = time.Minute
)

// writer names this process in its temporary files, so that a later run
// can tell a dead writer's leftovers from a live writer's work:
// .tmp-<tag>.<pid>.<random>.<host>. The tag is a digest of the boot id and
// the pid namespace: a pid means the same process only where both are the
// same, which a host name cannot promise (containers, clones, NFS clients
// with one name).
type writer struct {
	tag  string // "" when unknown: then only age decides
	pid  int
	host string
}

var (
	selfOnce sync.Once
	self     writer
)

func thisWriter() writer {
	selfOnce.Do(func() {
		self.pid = os.Getpid()
		boot, err1 := os.ReadFile("/proc/sys/kernel/random/boot_id")
		ns, err2 := os.Readlink("/proc/self/ns/pid")
		if err1 == nil && err2 == nil && len(strings.TrimSpace(string(boot))) > 0 {
			sum := sha256.Sum256([]byte(strings.TrimSpace(string(boot)) + "\n" + ns))
			self.tag = hex.EncodeToString(sum[:5])
		}
		h, _ := os.Hostname()
		self.host = sanitizeHost(h)
	})
	return self
}

func sanitizeHost(h string) string {
	b := []byte(h)
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '.') {
			b[i] = '_'
		}
	}
	if len(b) > 64 {
		b = b[:64]
	}
	if len(b) == 0 {
		return "unknown"
	}
	return string(b)
}

func tempName() string {
	w := thisWriter()
	var r [6]byte
	_, _ = rand.Read(r[:])
	tag := w.tag
	if tag == "" {
		tag = "x"
	}
	return fmt.Sprintf("%s%s.%d.%s.%s", tmpPrefix, tag, w.pid, hex.EncodeToString(r[:]), w.host)
}

// parseTempName returns the tag and pid a temporary file's name carries.
func parseTempName(name string) (tag string, pid int, ok bool) {
	rest, found := strings.CutPrefix(name, tmpPrefix)
	if !found {
		return "", 0, false
	}
	parts := strings.SplitN(rest, ".", 4)
	if len(parts) != 4 {
		return "", 0, false
	}
	pid, err := strconv.Atoi(parts[1])
	if err != nil || pid <= 0 {
		return "", 0, false
	}
	return parts[0], pid, true
}

// alive reports whether pid is a running process here. A process of
// another user answers EPERM: alive.
func alive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// createTemp opens a new temporary file for a write into dir: in the
// archive's temporary directory, or, where that cannot be used (made by
// another user, a read-only spot), in dir itself as before. local reports
// the second case.
func (s *Storage) createTemp(dir string, useShared bool) (f *os.File, local bool, err error) {
	if useShared {
		td := filepath.Join(s.root, tempDir)
		f, err = os.OpenFile(filepath.Join(td, tempName()), os.O_WRONLY|os.O_CREATE|os.O_EXCL, fileMode)
		if errors.Is(err, fs.ErrNotExist) {
			if err = s.makeTempDir(td); err == nil {
				f, err = os.OpenFile(filepath.Join(td, tempName()), os.O_WRONLY|os.O_CREATE|os.O_EXCL, fileMode)
			}
		}
		if err == nil {
			return f, false, nil
		}
	}
	f, err = os.OpenFile(filepath.Join(dir, tempName()), os.O_WRONLY|os.O_CREATE|os.O_EXCL, fileMode)
	if errors.Is(err, fs.ErrNotExist) {
		// A Delete emptied and removed the directory in between.
		if err = os.MkdirAll(dir, dirMode); err == nil {
			f, err = os.OpenFile(filepath.Join(dir, tempName()), os.O_WRONLY|os.O_CREATE|os.O_EXCL, fileMode)
		}
	}
	return f, true, err
}

// makeTempDir creates the temporary directory. Made by root, it is handed
// to the owner of the archive root, so that root running one command does
// not lock PostgreSQL's pushes out of it.
func (s *Storage) makeTempDir(td string) error {
	if err := os.Mkdir(td, dirMode); err != nil && !errors.Is(err, fs.ErrExist) {
		return err
	}
	s.own(td)
	return nil
}

// rootOwner is the owner of the archive root when walship runs as root
// and the root is someone else's (PostgreSQL's); ok is false otherwise.
func (s *Storage) rootOwner() (uid, gid int, ok bool) {
	if os.Geteuid() != 0 {
		return 0, 0, false
	}
	st, err := os.Stat(s.root)
	if err != nil {
		return 0, 0, false
	}
	sys, isUnix := st.Sys().(*syscall.Stat_t)
	if !isUnix || sys.Uid == 0 {
		return 0, 0, false
	}
	return int(sys.Uid), int(sys.Gid), true
}

// own hands a file or directory root made to the archive root's owner,
// so that root running one command (a slot advance, a retention run) does
// not leave objects PostgreSQL's own walship cannot read or replace.
func (s *Storage) own(path string) {
	if uid, gid, ok := s.rootOwner(); ok {
		_ = os.Lchown(path, uid, gid)
	}
}

// ownDirs hands dir, and its parents below the root, to the root's owner
// where root owns them (MkdirAll just made them).
func (s *Storage) ownDirs(dir string) {
	uid, gid, ok := s.rootOwner()
	if !ok {
		return
	}
	for d := dir; len(d) > len(s.root) && strings.HasPrefix(d, s.root+string(filepath.Separator)); d = filepath.Dir(d) {
		if st, err := os.Lstat(d); err == nil {
			if sys, isUnix := st.Sys().(*syscall.Stat_t); isUnix && sys.Uid == 0 {
				_ = os.Lchown(d, uid, gid)
			}
		}
	}
}

// sweeper removes what killed writers left in the temporary directory.
type sweeper struct {
	mu   sync.Mutex
	last time.Time // monotonic; zero: never swept
}

// due reports whether this process should sweep now, and if so marks it.
func (w *sweeper) due() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.last.IsZero() && time.Since(w.last) < sweepEvery {
		return false
	}
	w.last = time.Now()
	return true
}

// sweepTemps removes, from the temporary directory, the files of writers
// that are surely gone: on this machine and pid namespace, a process
// that no longer runs; anywhere, a file not modified for TempMaxAge
// before now (the server's time of a file just written; without one, the
// zero time, age decides nothing). A file being
// written by a live process is never removed. It returns how many it
// removed; errors are not fatal to anyone and only stop the sweep.
func (s *Storage) sweepTemps(now time.Time) (int, error) {
	td := filepath.Join(s.root, tempDir)
	ents, err := os.ReadDir(td)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return 0, nil
		}
		return 0, err
	}
	me := thisWriter()
	removed := 0
	for _, e := range ents {
		if e.IsDir() {
			continue
		}
		dead := false
		if tag, pid, ok := parseTempName(e.Name()); ok && me.tag != "" && tag == me.tag && pid != me.pid {
			dead = !alive(pid)
		}
		if !dead && !now.IsZero() {
			info, err := e.Info()
			if err != nil {
				continue // gone meanwhile
			}
			dead = now.Sub(info.ModTime()) > TempMaxAge
		}
		if dead {
			if err := os.Remove(filepath.Join(td, e.Name())); err == nil {
				removed++
			}
		}
	}
	return removed, nil
}
