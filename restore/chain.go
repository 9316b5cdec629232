package restore

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/walship/walship/archive"
	"github.com/walship/walship/backends"
	"github.com/walship/walship/backends/retry"
	"github.com/walship/walship/manifest"
	"github.com/walship/walship/sealed"
)

// Restoring an incremental backup: the chain, oldest first, into the one
// target directory.
//
// The full backup is unpacked as any backup is; then each incremental in
// turn is streamed over it: a file it holds in full replaces the file, an
// INCREMENTAL.<name> file patches <name> in place (incremental.Apply:
// its blocks written, the newest backup's truncation length applied), and
// every file its server manifest does not list is removed, so that after
// the newest the directory holds exactly the files the newest backup
// describes. That is pg_combinebackup's result (incremental.Apply says why
// oldest first gives the same blocks), without a copy of each backup on
// disk: disk is the restored directory, memory the download's chunk buffers
// and one file's header. Nothing is trusted that was not checked: every
// file of every backup against that backup's server manifest (size and
// CRC-32C) as it streams by, so each block of a rebuilt file was checked in
// the backup it came from; each backup_label against its parent's (an
// incremental names the start LSN and timeline of the backup it was taken
// from) and each pg_control against the cluster; and at the end the
// directory's files against the newest manifest's list and sizes.
// The newest backup_label is written without its INCREMENTAL FROM lines,
// as pg_combinebackup writes it (PostgreSQL refuses to start from an
// incremental backup's label), and no backup_manifest is written: the
// newest backup's describes its INCREMENTAL files, not the rebuilt ones.

// restoreChain restores p.Chain into o.PGData and the tablespace
// directories (Restore has checked the options and prepared nothing yet).
func restoreChain(ctx context.Context, a *archive.Archive, p *Plan, o Options) (err error) {
	chain := p.Chain
	newest := chain[len(chain)-1]
	for _, m := range chain {
		if err := checkArchives(m); err != nil {
			return err
		}
	}
	dirs, err := destinations(newest, o)
	if err != nil {
		return err
	}
	var td targetDirs
	defer func() {
		if err != nil {
			td.remove()
		}
	}()
	if err := td.prepare(newest, dirs); err != nil {
		return err
	}
	var total int64
	for _, m := range chain {
		for _, ar := range m.Archives {
			if _, ok := dirs[ar.Name]; ok {
				total += ar.Size
			}
		}
	}
	o.Progress.Phase(fmt.Sprintf("restoring files of %d backups", len(chain)), total)
	var prev *member
	buf := make([]byte, 1<<20)
	for i, m := range chain {
		mb, err := loadMember(ctx, a.Storage(), m, i, len(chain), prev)
		if err == nil {
			err = mb.unpack(ctx, a.Storage(), dirs, o, buf)
		}
		if err == nil {
			err = mb.prune(newest, dirs)
		}
		if err != nil {
			o.Progress.End(err)
			return err
		}
		o.Log.Debug("backup of the chain applied", "backup", m.ID, "type", m.Kind(), "files", len(mb.files))
		prev = mb
	}
	o.Progress.End(nil)
	if err := checkDataDir(o.PGData); err != nil {
		return fmt.Errorf("backup %s: %w", newest.ID, err)
	}
	if err := writeLabel(o.PGData, prev.labelText); err != nil {
		return err
	}
	if err := rewriteTablespaceMap(o.PGData, newest, dirs); err != nil {
		return err
	}
	if err := writeRecoveryConfig(p, o); err != nil {
		return err
	}
	for _, d := range td.created {
		if err := syncFS(d); err != nil {
			return err
		}
	}
	return nil
}

// readServerManifest downloads backup m's server manifest, checks it is
// the one m names and parses it.
func readServerManifest(ctx context.Context, store backends.Storage, m *manifest.Manifest) (*manifest.Server, error) {
	var raw []byte
	_, err := retry.Do(ctx, store, 0, archive.Retryable, func(ctx context.Context) error {
		var err error
		raw, err = archive.ReadSealed(ctx, store, m.ServerManifest.Key)
		return err
	})
	if errors.Is(err, backends.ErrNotFound) {
		return nil, fmt.Errorf("%w: backup %s: its server manifest %s is missing: %w", ErrDamaged, m.ID, m.ServerManifest.Key, err)
	}
	if err != nil {
		return nil, fmt.Errorf("backup %s: %w", m.ID, err)
	}
	sum := sha256.Sum256(raw)
	if hex.EncodeToString(sum[:]) != m.ServerManifest.SHA256 {
		return nil, fmt.Errorf("backup %s: its server manifest is not the one its manifest names: %w", m.ID, sealed.ErrChecksum)
	}
	sm, err := manifest.ParseServer(raw)
	if err != nil {
		return nil, fmt.Errorf("%w: backup %s: %w", ErrDamaged, m.ID, err)
	}
	return sm, nil
}

// manifestPrefix is where an archive's files sit in the server manifest:
// the data directory's at the top, a tablespace's under pg_tblspc/<oid>/.
func manifestPrefix(ar manifest.Archive) string {
	if ar.Location == "" {
		return ""
	}
	return "pg_tblspc/" + strconv.FormatUint(uint64(ar.TablespaceOID), 10) + "/"
}

// incrementalDir says whether PostgreSQL may write an incremental file
// under mpath's directory: a database directory, global, a tablespace.
// Elsewhere a file named INCREMENTAL.* is an ordinary file, as
// pg_combinebackup treats it.
func incrementalDir(mpath string) bool {
	dir := ""
	if i := strings.LastIndexByte(mpath, '/'); i >= 0 {
		dir = mpath[:i]
	}
	return strings.HasPrefix(dir, "base/") || dir == "global" || strings.HasPrefix(dir, "pg_tblspc/")
}

// prune removes from every destination the files member mb's server
// manifest does not list (a relation dropped, a file gone); WAL and the
// files restore writes itself are not listed and not looked at. After the
// newest backup it also removes directories its tar streams did not hold
// and checks every listed file is there at the size it must have.
func (mb *member) prune(newest *manifest.Manifest, dirs map[string]string) error {
	for _, ar := range newest.Archives {
		dest, prefix := dirs[ar.Name], manifestPrefix(ar)
		var stale []string
		err := filepath.WalkDir(dest, func(path string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			rel, err := filepath.Rel(dest, path)
			if err != nil || rel == "." {
				return err
			}
			mpath := prefix + filepath.ToSlash(rel)
			if d.IsDir() {
				if prefix == "" && mpath == "pg_wal" {
					return fs.SkipDir
				}
				if mb.newest && !mb.dirs[mpath] {
					stale = append(stale, path)
					return fs.SkipDir
				}
				return nil
			}
			f, ok := mb.files[mpath]
			if !ok {
				stale = append(stale, path)
				return nil
			}
			if mb.newest {
				return checkSize(path, d, f.want)
			}
			return nil
		})
		if err == nil {
			for _, s := range stale {
				if err = os.RemoveAll(s); err != nil {
					break
				}
			}
		}
		if err != nil && !errors.Is(err, ErrDamaged) {
			err = fmt.Errorf("%w: %w", archive.ErrLocal, err)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

func checkSize(path string, d fs.DirEntry, want int64) error {
	fi, err := d.Info()
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() || fi.Size() != want {
		return fmt.Errorf("%w: restored %s has %d bytes, the newest backup says %d", ErrDamaged, path, fi.Size(), want)
	}
	return nil
}

// writeLabel writes the newest backup's backup_label without the
// INCREMENTAL FROM lines.
func writeLabel(pgdata string, label []byte) error {
	var out []byte
	for _, line := range strings.SplitAfter(string(label), "\n") {
		if !strings.HasPrefix(line, "INCREMENTAL FROM LSN: ") && !strings.HasPrefix(line, "INCREMENTAL FROM TLI: ") {
			out = append(out, line...)
		}
	}
	if err := os.WriteFile(filepath.Join(pgdata, "backup_label"), out, 0o600); err != nil {
		return fmt.Errorf("%w: %w", archive.ErrLocal, err)
	}
	return nil
}
