package backup

import (
	"bytes"
	"context"
	"encoding/hex"
	"fmt"
	"io"
	"regexp"
	"strconv"
	"sync"
	"sync/atomic"

	"github.com/walship/walship/backends"
	"github.com/walship/walship/manifest"
	"github.com/walship/walship/postgres"
	"github.com/walship/walship/sealed"
	"github.com/walship/walship/segment"
)

// maxServerManifest bounds the server's backup_manifest held in memory
// (about 200 bytes per file: a million files is 200 MiB).
const maxServerManifest = 1 << 30

var archiveName = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^(base|[0-9]{1,10})\.tar$`) })

// job is one chunk of a tar stream on its way to the sealer and the
// verifier; its buffer returns to the pool when both are done with it.
type job struct {
	arch *archiveState
	seq  int
	data []byte
	refs atomic.Int32
}

// archiveState is one tar stream being received.
type archiveState struct {
	entry   manifest.Archive
	seq     int
	verifyQ chan *job
	sum     *tarSummer
	done    chan struct{} // closed when verify has read the archive
}

// streamer receives BASE_BACKUP's stream (it is a postgres.BackupHandler)
// and runs the pipeline: fixed-size chunks are sealed and uploaded by
// Parallel workers while a verifier reads the same bytes as tar and sums
// each file. Memory is bounded by the buffer pool whatever the database
// size: nothing is staged on disk.
type streamer struct {
	ctx      context.Context //nolint:containedctx // the pipeline's: a postgres.BackupHandler's callbacks take none, and any stage's failure cancels it
	cancel   context.CancelCauseFunc
	store    backends.Storage
	id       string
	comp     sealed.Compression
	progress Progress

	pool   chan []byte
	chunk  int
	sealQ  chan *job
	sealWG sync.WaitGroup

	mu       sync.Mutex
	written  []string // keys uploaded, for clean-up on failure
	archives []*archiveState

	cur        *archiveState
	buf        []byte
	inManifest bool
	manifest   bytes.Buffer
	received   int64

	start    segment.LSN
	startTLI uint32
	spaces   []postgres.Tablespace
}

func newStreamer(ctx context.Context, store backends.Storage, id string, o Options) *streamer {
	ctx, cancel := context.WithCancelCause(ctx)
	s := &streamer{
		ctx: ctx, cancel: cancel, store: store, id: id, comp: o.Compression, progress: o.Progress,
		chunk: o.ChunkSize, pool: make(chan []byte, o.Parallel+1), sealQ: make(chan *job, o.Parallel),
	}
	for range o.Parallel + 1 {
		s.pool <- nil // allocated on first use
	}
	for range o.Parallel {
		s.sealWG.Add(1)
		go s.sealer()
	}
	return s
}

func (s *streamer) fail(err error) { s.cancel(err) }

// err is the first failure of any stage, or nil.
func (s *streamer) err() error {
	if s.ctx.Err() != nil {
		return context.Cause(s.ctx)
	}
	return nil
}

func (s *streamer) Started(start segment.LSN, tli uint32, spaces []postgres.Tablespace) error {
	s.start, s.startTLI, s.spaces = start, tli, spaces
	var total int64
	for _, t := range spaces {
		if t.SizeKB > 0 {
			total += t.SizeKB * 1024
		}
	}
	s.progress.Phase("receiving backup", total)
	return nil
}

func (s *streamer) Archive(name, location string) error {
	if err := s.endArchive(); err != nil {
		return err
	}
	if !archiveName().MatchString(name) {
		return fmt.Errorf("BASE_BACKUP sent an archive named %q; walship takes uncompressed tar archives only", name)
	}
	a := &archiveState{
		entry:   manifest.Archive{Name: name, Location: location},
		verifyQ: make(chan *job, 2),
		done:    make(chan struct{}),
		sum:     &tarSummer{files: map[string]fileSum{}},
	}
	if name != "base.tar" {
		oid, _ := strconv.ParseUint(name[:len(name)-4], 10, 32)
		a.entry.TablespaceOID = uint32(oid)
		a.sum.prefix = "pg_tblspc/" + strconv.FormatUint(oid, 10) + "/"
	}
	s.mu.Lock()
	s.archives = append(s.archives, a)
	s.mu.Unlock()
	s.cur = a
	go s.verify(a)
	return nil
}

func (s *streamer) Data(p []byte) error {
	if err := s.err(); err != nil {
		return err
	}
	if s.inManifest {
		if s.manifest.Len()+len(p) > maxServerManifest {
			return fmt.Errorf("server backup_manifest is larger than %d bytes", maxServerManifest)
		}
		s.manifest.Write(p)
		return nil
	}
	if s.cur == nil {
		return fmt.Errorf("BASE_BACKUP sent data before naming an archive")
	}
	s.received += int64(len(p))
	s.progress.Add(int64(len(p)))
	for len(p) > 0 {
		if s.buf == nil {
			select {
			case b := <-s.pool:
				if b == nil {
					b = make([]byte, 0, s.chunk)
				}
				s.buf = b[:0]
			case <-s.ctx.Done():
				return s.err()
			}
		}
		n := copy(s.buf[len(s.buf):cap(s.buf)], p)
		s.buf = s.buf[:len(s.buf)+n]
		p = p[n:]
		if len(s.buf) == cap(s.buf) {
			if err := s.submit(); err != nil {
				return err
			}
		}
	}
	return nil
}

func (s *streamer) Progress(int64) {}

func (s *streamer) Manifest() error {
	if err := s.endArchive(); err != nil {
		return err
	}
	s.inManifest = true
	return nil
}

// submit hands the current buffer to the verifier and a sealer.
func (s *streamer) submit() error {
	j := &job{arch: s.cur, seq: s.cur.seq, data: s.buf}
	j.refs.Store(2)
	s.cur.seq++
	s.buf = nil
	for _, q := range []chan *job{s.cur.verifyQ, s.sealQ} {
		select {
		case q <- j:
		case <-s.ctx.Done():
			return s.err()
		}
	}
	return nil
}

// endArchive sends the last partial chunk of the current archive and lets
// its verifier finish.
func (s *streamer) endArchive() error {
	if s.cur == nil {
		return nil
	}
	var err error
	if len(s.buf) > 0 {
		err = s.submit()
	}
	close(s.cur.verifyQ)
	s.cur = nil
	return err
}

func (s *streamer) release(j *job) {
	if j.refs.Add(-1) == 0 {
		s.pool <- j.data[:0]
	}
}

// sealer compresses and uploads chunks until the queue closes; after a
// failure it only releases what it is given.
func (s *streamer) sealer() {
	defer s.sealWG.Done()
	sl, err := sealed.NewSealer(s.comp)
	if err != nil {
		s.fail(err)
	}
	for j := range s.sealQ {
		if s.err() == nil {
			if err := s.upload(sl, j); err != nil {
				s.fail(err)
			}
		}
		s.release(j)
	}
}

// upload seals and stores one chunk. Parallelism is across chunks, one
// Sealer per worker, so encoders and buffers are reused.
func (s *streamer) upload(sl *sealed.Sealer, j *job) error {
	sealed, err := sl.Seal(j.data)
	if err != nil {
		return err
	}
	key := fmt.Sprintf("%s%s/%s.%05d", manifest.Prefix, s.id, j.arch.entry.Name, j.seq)
	if err := s.store.PutIfAbsent(s.ctx, key, sealed.Reader(), sealed.Size()); err != nil {
		return fmt.Errorf("upload %s: %w", key, err)
	}
	c := manifest.Chunk{Key: key, Size: int64(len(j.data)), StoredSize: sealed.Size(), SHA256: hex.EncodeToString(sealed.Header.SHA256[:])}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.written = append(s.written, key)
	for len(j.arch.entry.Chunks) <= j.seq {
		j.arch.entry.Chunks = append(j.arch.entry.Chunks, manifest.Chunk{})
	}
	j.arch.entry.Chunks[j.seq] = c
	return nil
}

// verify reads an archive's chunks as one tar stream.
func (s *streamer) verify(a *archiveState) {
	r := &jobReader{q: a.verifyQ, release: s.release}
	err := a.sum.run(r)
	r.drain()
	if err != nil {
		s.fail(err)
	}
	close(a.done)
}

// finish waits for every stage. After a failure it still waits, so that no
// goroutine outlives the backup and the clean-up sees every written key.
func (s *streamer) finish() error {
	if s.cur != nil {
		if err := s.endArchive(); err != nil {
			s.fail(err)
		}
	}
	close(s.sealQ)
	s.sealWG.Wait()
	for _, a := range s.archives {
		<-a.done
	}
	return s.err()
}

// jobReader presents a queue of chunks as one stream.
type jobReader struct {
	q       chan *job
	cur     *job
	off     int
	release func(*job)
}

func (r *jobReader) Read(p []byte) (int, error) {
	for r.cur == nil || r.off == len(r.cur.data) {
		if r.cur != nil {
			r.release(r.cur)
			r.cur = nil
		}
		j, ok := <-r.q
		if !ok {
			return 0, io.EOF
		}
		r.cur, r.off = j, 0
	}
	n := copy(p, r.cur.data[r.off:])
	r.off += n
	return n, nil
}

// drain releases whatever the tar reader left unread.
func (r *jobReader) drain() {
	if r.cur != nil {
		r.release(r.cur)
		r.cur = nil
	}
	for j := range r.q {
		r.release(j)
	}
}
