package restore

import (
	"bufio"
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/walship/walship/archive"
	"github.com/walship/walship/backends"
	"github.com/walship/walship/backends/retry"
	"github.com/walship/walship/manifest"
	"github.com/walship/walship/sealed"
)

// Progress hears about the download: Phase starts a phase with its
// expected byte total, Add counts bytes done, End closes it with the error
// that ended it, if any. The command line's progress bar serves both this
// and backup push.
type Progress interface {
	Phase(name string, total int64)
	Add(n int64)
	End(err error)
}

// Options for Restore.
type Options struct {
	PGData  string
	Standby bool
	Target  Target
	// RestoreCommand is the full restore_command, with %f and %p.
	RestoreCommand string
	// TablespaceMap moves tablespaces: original location -> new directory.
	TablespaceMap map[string]string
	// ArchiveModeOff writes archive_mode = off, so that the restored
	// server does not archive into the archive it came from.
	ArchiveModeOff bool
	// Settings go into walship's block of postgresql.auto.conf after the
	// recovery settings (the drill's port and socket directory).
	Settings []Setting
	Parallel int
	Progress Progress
	Log      *slog.Logger
}

// ErrDamaged is wrapped when what restore read from the archive is intact
// as stored but not what it must be: a backup that is not a PostgreSQL base backup
// walship wrote (a manifest without a base.tar, a chunk that is not tar, a
// link, device or FIFO entry, a path outside the directory), or a history
// file that does not parse. Fetching it again will not help: status 4,
// like a failed checksum. It is archive.ErrDamaged, the one sentinel for
// damaged archive content, under the name restore's callers know.
var ErrDamaged = archive.ErrDamaged

// CheckTarget refuses a directory that exists and is not empty. It runs
// before anything is downloaded.
func CheckTarget(dir string) error {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("%w: %s: %w", archive.ErrLocal, dir, err)
	}
	if len(ents) > 0 {
		return fmt.Errorf("%w: %s is not empty; restore only into an empty or new directory", ErrUsage, dir)
	}
	return nil
}

// Restore writes the plan's backup into o.PGData (and its tablespaces into
// their directories), verifying every chunk, then the recovery settings, so
// that starting PostgreSQL completes the recovery. An incremental backup
// is rebuilt from its chain (chain.go). On failure it removes what it
// wrote.
func Restore(ctx context.Context, a *archive.Archive, p *Plan, o Options) (err error) {
	if o.Parallel <= 0 {
		o.Parallel = runtime.GOMAXPROCS(0)
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	m := p.Backup
	if o.PGData == "" || !filepath.IsAbs(o.PGData) {
		return fmt.Errorf("%w: the data directory %q must be an absolute path", ErrUsage, o.PGData)
	}
	if o.Progress == nil {
		o.Progress = noProgress{}
	}
	if m.Incremental() {
		if len(p.Chain) < 2 || p.Chain[len(p.Chain)-1] != m {
			return fmt.Errorf("%w: backup %s is incremental and the plan holds no chain for it", ErrUnreachable, m.ID)
		}
		return restoreChain(ctx, a, p, o)
	}
	if err := checkArchives(m); err != nil {
		return err
	}
	dirs, err := destinations(m, o)
	if err != nil {
		return err
	}
	var td targetDirs
	defer func() {
		if err != nil {
			td.remove()
		}
	}()
	if err := td.prepare(m, dirs); err != nil {
		return err
	}
	o.Progress.Phase("restoring files", m.Size)
	for _, ar := range m.Archives {
		dir := dirs[ar.Name]
		if err := extractArchive(ctx, a.Storage(), ar, o, func(r io.Reader) error { return untar(r, dir) }); err != nil {
			o.Progress.End(err)
			return err
		}
	}
	o.Progress.End(nil)
	if err := checkDataDir(o.PGData); err != nil {
		return fmt.Errorf("backup %s: %w", m.ID, err)
	}
	if err := finishDataDir(ctx, a.Storage(), p, o, dirs); err != nil {
		return err
	}
	for _, d := range td.created {
		if err := syncFS(d); err != nil {
			return err
		}
	}
	return nil
}

// destinations maps each archive of the backup to its directory: the
// data directory, or the tablespace's (mapped by o.TablespaceMap).
func destinations(m *manifest.Manifest, o Options) (map[string]string, error) {
	dirs := map[string]string{} // archive name -> destination
	for _, ar := range m.Archives {
		dest := o.PGData
		if ar.Location != "" {
			dest = ar.Location
			if d, ok := o.TablespaceMap[ar.Location]; ok {
				dest = d
			}
			if !filepath.IsAbs(dest) {
				return nil, fmt.Errorf("%w: tablespace directory %q must be absolute", ErrUsage, dest)
			}
		}
		dirs[ar.Name] = dest
	}
	return dirs, nil
}

// targetDirs are the directories a restore writes into, and which of
// them it created: on failure, those it created are removed and the
// others (found empty) emptied.
type targetDirs struct {
	created []string
	made    map[string]bool
}

// prepare checks that each destination is absent or empty and makes it,
// mode 0700.
func (td *targetDirs) prepare(m *manifest.Manifest, dirs map[string]string) error {
	td.made = map[string]bool{}
	for _, ar := range m.Archives {
		d := dirs[ar.Name]
		if err := CheckTarget(d); err != nil {
			if ar.Location != "" {
				return fmt.Errorf("%w (tablespace %d; move it with --tablespace-mapping %s=NEWDIR)", err, ar.TablespaceOID, ar.Location)
			}
			return err
		}
		if _, err := os.Stat(d); errors.Is(err, os.ErrNotExist) {
			td.made[d] = true
		}
		if err := os.MkdirAll(d, 0o700); err != nil {
			return fmt.Errorf("%w: %w", archive.ErrLocal, err)
		}
		if err := os.Chmod(d, 0o700); err != nil {
			return fmt.Errorf("%w: %w", archive.ErrLocal, err)
		}
		td.created = append(td.created, d)
	}
	return nil
}

// remove takes away what the restore wrote.
func (td *targetDirs) remove() {
	for _, d := range td.created {
		if td.made[d] {
			_ = os.RemoveAll(d)
		} else {
			_ = removeContents(d)
		}
	}
}

type noProgress struct{}

func (noProgress) Phase(string, int64) {}
func (noProgress) Add(int64)           {}
func (noProgress) End(error)           {}

// removeContents empties dir (which restore created or found empty).
func removeContents(dir string) error {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range ents {
		if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
			return err
		}
	}
	return nil
}

// chunkResult is a downloaded, verified chunk.
type chunkResult struct {
	data []byte
	err  error
}

// extractArchive downloads an archive's chunks, o.Parallel at once, each
// worker with its own decoder and download buffer, verifies each against
// the manifest and hands the tar stream, in order, to unpack. Decompressed
// chunks wait in a pool of o.Parallel+1 buffers, which bounds memory.
func extractArchive(ctx context.Context, store backends.Storage, ar manifest.Archive, o Options, unpack func(io.Reader) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	results := make([]chan chunkResult, len(ar.Chunks))
	for i := range results {
		results[i] = make(chan chunkResult, 1)
	}
	pool := make(chan []byte, o.Parallel+1)
	for range o.Parallel + 1 {
		pool <- nil
	}
	next := make(chan int)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer close(next)
		for i := range ar.Chunks {
			select {
			case next <- i:
			case <-ctx.Done():
				return
			}
		}
	}()
	for range o.Parallel {
		wg.Add(1)
		go func() {
			defer wg.Done()
			u, err := sealed.NewUnsealer(maxChunk(ar))
			if err != nil {
				cancel()
				return
			}
			defer u.Close()
			var obj []byte
			for {
				// Take a buffer before a chunk number: the lowest number
				// handed out then always has a buffer, so the reader,
				// which frees buffers in order, never waits forever.
				var buf []byte
				select {
				case buf = <-pool:
				case <-ctx.Done():
					return
				}
				i, ok := <-next
				if !ok {
					return
				}
				var data []byte
				// A dropped connection mid-body is retried; a chunk that
				// fails its checksum on every try is damaged in the archive.
				_, err = retry.Do(ctx, store, 0, archive.Retryable, func(ctx context.Context) error {
					var err error
					data, obj, err = fetchChunk(ctx, store, ar.Chunks[i], u, obj, buf)
					return err
				})
				if errors.Is(err, backends.ErrNotFound) {
					// The manifest names it: a missing chunk is a damaged
					// backup, which no retry will mend.
					err = fmt.Errorf("%w: backup chunk %s is missing: %w", ErrDamaged, ar.Chunks[i].Key, err)
				}
				results[i] <- chunkResult{data, err}
			}
		}()
	}
	r := &orderedReader{ctx: ctx, results: results, pool: pool, progress: o.Progress}
	return unpack(r)
}

// maxChunk bounds the decoder's memory: the largest chunk, and at least
// 1 MiB, since a zstd frame's window is never below 1 KiB, so a small
// archive's only chunk (a new tablespace's one directory entry) would
// otherwise be refused as damaged.
func maxChunk(ar manifest.Archive) int64 {
	var m int64 = 1 << 20
	for _, c := range ar.Chunks {
		m = max(m, c.Size)
	}
	return m
}

// fetchChunk reads one chunk into obj and decompresses it into buf,
// checking the seal's own SHA-256 and CRC, and that it is the chunk the
// manifest names. It returns the data and the (possibly grown) obj buffer.
func fetchChunk(ctx context.Context, store backends.Storage, c manifest.Chunk, u *sealed.Unsealer, obj, buf []byte) ([]byte, []byte, error) {
	rc, info, err := store.Get(ctx, c.Key)
	if err != nil {
		return nil, obj, fmt.Errorf("read %s: %w", c.Key, err)
	}
	defer rc.Close()
	if info.Size != c.StoredSize {
		return nil, obj, fmt.Errorf("backup chunk %s has %d bytes, the manifest says %d: %w", c.Key, info.Size, c.StoredSize, sealed.ErrChecksum)
	}
	if int64(cap(obj)) < info.Size {
		obj = make([]byte, info.Size)
	}
	obj = obj[:info.Size]
	if _, err := io.ReadFull(rc, obj); err != nil {
		return nil, obj, fmt.Errorf("read %s: %w", c.Key, err)
	}
	raw, h, err := u.Unseal(obj, buf)
	if err != nil {
		return nil, obj, fmt.Errorf("backup chunk %s: %w", c.Key, err)
	}
	if hex.EncodeToString(h.SHA256[:]) != c.SHA256 || int64(len(raw)) != c.Size {
		return nil, obj, fmt.Errorf("backup chunk %s is not the one the manifest names: %w", c.Key, sealed.ErrChecksum)
	}
	return raw, obj, nil
}

// orderedReader reads the chunks in order as they arrive and returns each
// buffer to the pool once read.
type orderedReader struct {
	ctx      context.Context //nolint:containedctx // an io.Reader: Read takes no context, yet must stop waiting for a chunk once the restore ends
	results  []chan chunkResult
	pool     chan []byte
	progress Progress
	next     int
	buf      []byte
	cur      []byte
}

func (r *orderedReader) Read(p []byte) (int, error) {
	for len(r.cur) == 0 {
		if r.buf != nil {
			r.pool <- r.buf[:0]
			r.buf = nil
		}
		if r.next == len(r.results) {
			return 0, io.EOF
		}
		select {
		case res := <-r.results[r.next]:
			if res.err != nil {
				return 0, res.err
			}
			r.buf, r.cur = res.data, res.data
			r.progress.Add(int64(len(res.data)))
		case <-r.ctx.Done():
			return 0, r.ctx.Err()
		}
		r.next++
	}
	n := copy(p, r.cur)
	r.cur = r.cur[n:]
	return n, nil
}

// finishDataDir writes the server's backup_manifest, the moved tablespace
// map, the recovery settings and the signal file (recoveryconf.go).
func finishDataDir(ctx context.Context, store backends.Storage, p *Plan, o Options, dirs map[string]string) error {
	m := p.Backup
	sm, err := archive.ReadSealed(ctx, store, m.ServerManifest.Key)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(o.PGData, "backup_manifest"), sm, 0o600); err != nil {
		return fmt.Errorf("%w: %w", archive.ErrLocal, err)
	}
	if err := rewriteTablespaceMap(o.PGData, m, dirs); err != nil {
		return err
	}
	return writeRecoveryConfig(p, o)
}

// rewriteTablespaceMap points tablespace_map at the directories the
// tablespaces were restored into.
func rewriteTablespaceMap(pgdata string, m *manifest.Manifest, dirs map[string]string) error {
	path := filepath.Join(pgdata, "tablespace_map")
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("%w: %w", archive.ErrLocal, err)
	}
	byOID := map[string]string{}
	for _, ar := range m.Archives {
		if ar.Location != "" {
			byOID[strconv.FormatUint(uint64(ar.TablespaceOID), 10)] = dirs[ar.Name]
		}
	}
	var out bytes.Buffer
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		oid, _, _ := strings.Cut(sc.Text(), " ")
		if d, ok := byOID[oid]; ok {
			fmt.Fprintf(&out, "%s %s\n", oid, d)
			continue
		}
		out.WriteString(sc.Text() + "\n")
	}
	if err := os.WriteFile(path, out.Bytes(), 0o600); err != nil {
		return fmt.Errorf("%w: %w", archive.ErrLocal, err)
	}
	return nil
}

// syncFS flushes the file system holding dir: one call instead of an
// fsync per file.
func syncFS(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("%w: %w", archive.ErrLocal, err)
	}
	defer f.Close()
	if err := unix.Syncfs(int(f.Fd())); err != nil {
		return fmt.Errorf("%w: sync %s: %w", archive.ErrLocal, dir, err)
	}
	return nil
}
