package spool

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/walship/walship/archive"
)

// Check makes sure dir can be the agent's spool: an absolute
// directory (created 0700 if missing), owned by the user the agent runs as,
// and writable by nobody else. Files the agent writes are then its owner's,
// the standby's user, which is what PostgreSQL must be able to open; and no
// one but that user (or root, which PostgreSQL never is) can put a file into
// the spool or rename one out of it. Errors wrap ErrOwner or
// archive.ErrLocal.
func Check(dir string) error {
	if !filepath.IsAbs(dir) {
		return fmt.Errorf("%w: %q: want an absolute directory", ErrOwner, dir)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("%w: spool: %w", archive.ErrLocal, err)
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("%w: spool: %w", archive.ErrLocal, err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("%w: spool %s is not a directory", archive.ErrLocal, dir)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return nil // not a Unix file system: nothing to compare
	}
	if euid := os.Geteuid(); st.Uid != uint32(euid) {
		return fmt.Errorf("%w: %s is owned by %s and this agent runs as %s: run walship agent as the spool's owner, the user the standby runs as (PostgreSQL cannot open files another user wrote 0600)",
			ErrOwner, dir, UserName(st.Uid), UserName(uint32(euid)))
	}
	if fi.Mode().Perm()&0o022 != 0 {
		return fmt.Errorf("%w: %s is writable by group or others (mode %04o): chmod go-w it; only the agent may write into the spool", ErrOwner, dir, fi.Mode().Perm())
	}
	return nil
}

// UserName names a user id for an error message: "postgres (uid 999)".
func UserName(uid uint32) string {
	id := strconv.FormatUint(uint64(uid), 10)
	if u, err := user.LookupId(id); err == nil {
		return u.Username + " (uid " + id + ")"
	}
	return "uid " + id
}

// Lock takes the agent's lock on the spool. A fetch testing whether
// the agent lives holds a shared lock for a moment; that is waited out.
// Another agent holding it is an error.
func Lock(ctx context.Context, dir string) (*os.File, error) {
	f, err := os.OpenFile(filepath.Join(dir, LockFile), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("%w: spool lock: %w", archive.ErrLocal, err)
	}
	for tries := 0; ; tries++ {
		err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return f, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) || tries >= 20 {
			break
		}
		select {
		case <-ctx.Done():
			err = ctx.Err()
		case <-time.After(50 * time.Millisecond):
			continue
		}
		break
	}
	f.Close()
	if errors.Is(err, syscall.EWOULDBLOCK) {
		return nil, fmt.Errorf("%w: another walship agent is running on the spool %s", archive.ErrLocal, dir)
	}
	return nil, fmt.Errorf("%w: spool lock: %w", archive.ErrLocal, err)
}

// Alive reports whether an agent holds the spool's lock, without
// blocking: a shared lock that can be taken means no agent holds it.
func Alive(spool string) bool {
	f, err := os.OpenFile(filepath.Join(spool, LockFile), os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return false
	}
	defer f.Close() // closing drops a lock we took
	err = syscall.Flock(int(f.Fd()), syscall.LOCK_SH|syscall.LOCK_NB)
	return errors.Is(err, syscall.EWOULDBLOCK)
}

// OwnedByMe reports whether fi, a spool or a file in it, belongs to this
// process's effective user (also true when fi carries no owner).
func OwnedByMe(fi fs.FileInfo) bool {
	st, ok := fi.Sys().(*syscall.Stat_t)
	return !ok || st.Uid == uint32(os.Geteuid())
}
