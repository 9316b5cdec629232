package fs_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/walship/walship/backends"
	"github.com/walship/walship/backends/fs"
	"github.com/walship/walship/internal/testenv"
)

// The child half of the tests below: a walship-like writer that stores
// one object whose body stalls after its first bytes until stdin closes.
func TestMain(m *testing.M) {
	if dir := os.Getenv("WALSHIP_FS_TEST_WRITER"); dir != "" {
		s, err := fs.New(dir)
		if err != nil {
			os.Exit(3)
		}
		body := &stallingBody{first: []byte("half-written"), rest: os.Stdin}
		_ = s.PutIfAbsent(context.Background(), "wal/00000001/000000010000000000000001", body, 1<<20)
		os.Exit(0)
	}
	os.Exit(m.Run())
}

type stallingBody struct {
	first []byte
	off   int
	rest  io.Reader
}

func (b *stallingBody) Read(p []byte) (int, error) {
	if b.off < len(b.first) {
		n := copy(p, b.first[b.off:])
		b.off += n
		return n, nil
	}
	return b.rest.Read(p)
}

func (b *stallingBody) Seek(int64, int) (int64, error) { b.off = 0; return 0, nil }

// startWriter starts a writer process and waits until its temporary file
// exists. Closing the returned pipe lets it finish (it fails: short body).
func startWriter(t *testing.T, root string) (*exec.Cmd, io.WriteCloser, string) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "WALSHIP_FS_TEST_WRITER="+root)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	var temp string
	testenv.WaitFor(t, "the writer's temporary file", 20*time.Second, func() bool {
		temps := tempFiles(t, root)
		if len(temps) == 1 {
			temp = temps[0]
		}
		return temp != ""
	})
	return cmd, stdin, temp
}

func tempFiles(t *testing.T, root string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && strings.HasPrefix(d.Name(), ".tmp-") {
			out = append(out, p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func put(t *testing.T, root, key string) {
	t.Helper()
	s, err := fs.New(root) // a new process, as each walship run is
	if err != nil {
		t.Fatal(err)
	}
	if err := s.PutIfAbsent(context.Background(), key, bytes.NewReader([]byte("v")), 1); err != nil {
		t.Fatal(err)
	}
}

// A writer killed mid-write leaves its temporary file in the archive's
// temporary directory, named after it; the next write removes it, and so
// does a push that finds its object already there (a re-run after a kill),
// and so does a delete (backup delete, retention apply).
func TestKilledWritersTempIsSweptByTheNextWrite(t *testing.T) {
	for _, next := range []string{"put", "put existing", "delete"} {
		root := t.TempDir()
		put(t, root, "wal/00000001/x")
		cmd, _, temp := startWriter(t, root)
		if filepath.Dir(temp) != filepath.Join(root, ".tmp-inflight") {
			t.Fatalf("temporary file %s is not in the archive's temporary directory", temp)
		}
		name := filepath.Base(temp)
		if !strings.Contains(name, "."+strconv.Itoa(cmd.Process.Pid)+".") {
			t.Fatalf("temporary file %s does not carry its writer's pid %d", name, cmd.Process.Pid)
		}
		_ = cmd.Process.Signal(syscall.SIGKILL)
		_ = cmd.Wait()
		if _, err := os.Stat(temp); err != nil {
			t.Fatalf("the killed writer's temporary file should still be there before the next write: %v", err)
		}
		s, err := fs.New(root)
		if err != nil {
			t.Fatal(err)
		}
		ctx := context.Background()
		switch next {
		case "put":
			err = s.PutIfAbsent(ctx, "heads/00000001.json", bytes.NewReader([]byte("v")), 1)
		case "put existing":
			if err = s.PutIfAbsent(ctx, "wal/00000001/x", bytes.NewReader([]byte("v")), 1); errors.Is(err, backends.ErrExists) {
				err = nil
			}
		case "delete":
			err = s.Delete(ctx, "wal/00000001/x")
		}
		if err != nil {
			t.Fatalf("%s: %v", next, err)
		}
		if left := tempFiles(t, root); len(left) != 0 {
			t.Fatalf("temporary files left after the next %s: %v", next, left)
		}
	}
}

// A live writer's temporary file is never touched, however busy others are.
func TestLiveWritersTempIsKept(t *testing.T) {
	root := t.TempDir()
	cmd, stdin, temp := startWriter(t, root)
	put(t, root, "heads/00000001.json")
	put(t, root, "heads/00000002.json")
	if _, err := os.Stat(temp); err != nil {
		t.Fatalf("a live writer's temporary file was removed: %v", err)
	}
	stdin.Close() // the writer's body ends short: it fails and cleans up
	if err := cmd.Wait(); err != nil {
		t.Fatalf("writer: %v", err)
	}
	if left := tempFiles(t, root); len(left) != 0 {
		t.Fatalf("the writer left %v after failing", left)
	}
}

// Files of other machines (or of no known writer) go only once they have
// not been modified for an hour.
func TestForeignTempsGoOnlyWhenOld(t *testing.T) {
	root := t.TempDir()
	td := filepath.Join(root, ".tmp-inflight")
	if err := os.MkdirAll(td, 0o750); err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-fs.TempMaxAge - time.Minute)
	young := time.Now().Add(-fs.TempMaxAge + 5*time.Minute)
	files := map[string]time.Time{
		".tmp-0123456789.1.aaaaaaaaaaaa.otherhost": old,   // another machine, old: gone
		".tmp-0123456789.2.bbbbbbbbbbbb.otherhost": young, // another machine, young: kept
		".tmp-deadbeefdeadbeef":                    old,   // no writer in the name, old: gone
		".tmp-cafecafecafecafe":                    young, // kept
		"not-ours":                                 young, // kept
	}
	for name, mt := range files {
		p := filepath.Join(td, name)
		if err := os.WriteFile(p, []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(p, mt, mt); err != nil {
			t.Fatal(err)
		}
	}
	put(t, root, "slots/a.json")
	for name, mt := range files {
		_, err := os.Stat(filepath.Join(td, name))
		if gone := os.IsNotExist(err); gone != mt.Equal(old) {
			t.Errorf("%s (modified %s ago): removed=%v", name, time.Since(mt).Round(time.Minute), gone)
		}
	}
}

// Where the temporary directory cannot be used, writes go beside their
// destination, as before, and still leave nothing behind.
func TestUnusableTempDirFallsBack(t *testing.T) {
	root := t.TempDir()
	if err := os.WriteFile(filepath.Join(root, ".tmp-inflight"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	put(t, root, "wal/00000001/x")
	if b, err := os.ReadFile(filepath.Join(root, "wal", "00000001", "x")); err != nil || string(b) != "v" {
		t.Fatalf("object after the fallback: %q, %v", b, err)
	}
	if left := tempFiles(t, root); len(left) != 1 || left[0] != filepath.Join(root, ".tmp-inflight") {
		t.Fatalf("temporary files left: %v", left)
	}
}

// Root running one command must not lock the archive owner's pushes out
// of the temporary directory it created.
func TestTempDirMadeByRootBelongsToTheArchiveOwner(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		t.Skip("no postgres user")
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	root := t.TempDir()
	if err := os.Chown(root, uid, gid); err != nil {
		t.Fatal(err)
	}
	put(t, root, "slots/a.json")
	st, err := os.Stat(filepath.Join(root, ".tmp-inflight"))
	if err != nil {
		t.Fatal(err)
	}
	if sys := st.Sys().(*syscall.Stat_t); int(sys.Uid) != uid || int(sys.Gid) != gid {
		t.Fatalf("temporary directory owned by %d:%d, want the archive owner %d:%d", sys.Uid, sys.Gid, uid, gid)
	}
}
