package testenv

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// PGBin finds PostgreSQL 15's binaries (WALSHIP_TEST_PGBIN overrides).
func PGBin(t testing.TB) string {
	t.Helper()
	dirs := []string{os.Getenv("WALSHIP_TEST_PGBIN"), "/usr/lib/postgresql/15/bin"}
	for _, d := range dirs {
		if d == "" {
			continue
		}
		if _, err := os.Stat(filepath.Join(d, "initdb")); err == nil {
			return d
		}
	}
	Unavailable(t, "postgres", "no initdb in /usr/lib/postgresql/15/bin (apt-get install postgresql-15)")
	return ""
}

// Workdir is a scratch directory PostgreSQL can use. PostgreSQL refuses to
// run as root, so when the tests run as root the server runs as the
// "postgres" user and the directory is handed to it.
type Workdir struct {
	Dir string
	// Major is the PostgreSQL major of the clusters InitDB and
	// EmptyCluster make here; 0 is DefaultPGMajor (15).
	Major int
	user  *user.User // nil when not root
}

// NewWorkdir makes a scratch directory, removed when the test ends.
func NewWorkdir(t testing.TB) *Workdir {
	t.Helper()
	dir, err := os.MkdirTemp("", "walship-e2e-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	w := &Workdir{Dir: dir}
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			Unavailable(t, "postgres", "running as root and there is no postgres user to run the server as")
		}
		w.user = u
		if err := os.Chmod(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		w.Chown(t, dir)
	}
	return w
}

// Chown hands path to the server's user (no-op when not root).
func (w *Workdir) Chown(t testing.TB, path string) {
	t.Helper()
	if w.user == nil {
		return
	}
	uid, _ := strconv.Atoi(w.user.Uid)
	gid, _ := strconv.Atoi(w.user.Gid)
	err := filepath.Walk(path, func(p string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(p, uid, gid)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// Mkdir makes a directory owned by the server's user.
func (w *Workdir) Mkdir(t testing.TB, name string) string {
	t.Helper()
	p := filepath.Join(w.Dir, name)
	if err := os.MkdirAll(p, 0o750); err != nil {
		t.Fatal(err)
	}
	w.Chown(t, p)
	return p
}

// Command builds a command that runs as the server's user with env added.
func (w *Workdir) Command(env []string, name string, args ...string) *exec.Cmd {
	cmd := exec.Command(name, args...)
	cmd.Dir = w.Dir
	cmd.Env = append(os.Environ(), env...)
	if w.user != nil {
		uid, _ := strconv.Atoi(w.user.Uid)
		gid, _ := strconv.Atoi(w.user.Gid)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}}
		cmd.Env = append(cmd.Env, "HOME="+w.Dir, "USER=postgres")
	}
	return cmd
}

// Run runs a command as the server's user and fails the test on error.
func (w *Workdir) Run(t testing.TB, env []string, name string, args ...string) string {
	t.Helper()
	cmd := w.Command(env, name, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out.String())
	}
	return out.String()
}

// Cluster is one PostgreSQL server listening on 127.0.0.1 and a socket in
// its work directory.
type Cluster struct {
	W     *Workdir
	Bin   string // the server's binaries (initdb, pg_ctl, postgres)
	Major int
	Data  string
	Port  int
	Env   []string // extra environment for the postmaster (archive_command inherits it)
	t     testing.TB
}

func newCluster(t testing.TB, w *Workdir, name string) *Cluster {
	t.Helper()
	major := w.Major
	if major == 0 {
		major = DefaultPGMajor
	}
	return &Cluster{W: w, Bin: PGBinFor(t, major), Major: major, Data: filepath.Join(w.Dir, name), Port: FreePort(t), t: t}
}

// InitDB creates a cluster in w/name, of PostgreSQL w.Major.
func InitDB(t testing.TB, w *Workdir, name string) *Cluster {
	t.Helper()
	c := newCluster(t, w, name)
	w.Run(t, nil, filepath.Join(c.Bin, "initdb"), "-D", c.Data, "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8")
	return c
}

// EmptyCluster is a cluster whose data directory another tool fills
// (pg_basebackup, a restore).
func EmptyCluster(t testing.TB, w *Workdir, name string) *Cluster {
	t.Helper()
	return newCluster(t, w, name)
}

// Ships reports whether the server's own installation has the client
// tool name. The packages of 16 and up carry only the server.
func (c *Cluster) Ships(name string) bool { return isExec(filepath.Join(c.Bin, name)) }

// Tool is the path of a client tool (psql, pgbench, pg_basebackup) to use
// with this server: its own, else PostgreSQL 15's. psql and pgbench 15
// work against the newer servers for what the tests do; pg_basebackup 15
// refuses servers newer than itself (check Ships).
func (c *Cluster) Tool(name string) string {
	if c.Ships(name) {
		return filepath.Join(c.Bin, name)
	}
	return filepath.Join(PGBin(c.t), name)
}

// Configure appends settings to postgresql.auto.conf.
func (c *Cluster) Configure(t testing.TB, settings map[string]string) {
	t.Helper()
	var b strings.Builder
	for k, v := range settings {
		fmt.Fprintf(&b, "%s = '%s'\n", k, strings.ReplaceAll(v, "'", "''"))
	}
	f, err := os.OpenFile(filepath.Join(c.Data, "postgresql.auto.conf"), os.O_APPEND|os.O_WRONLY|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(b.String()); err != nil {
		t.Fatal(err)
	}
	c.W.Chown(t, f.Name())
}

// Start starts the server and waits until it accepts connections; the
// server is stopped when the test ends.
func (c *Cluster) Start(t testing.TB) {
	t.Helper()
	c.Configure(t, map[string]string{
		"port": strconv.Itoa(c.Port), "listen_addresses": "127.0.0.1",
		"unix_socket_directories": c.W.Dir, "fsync": "off", "max_wal_senders": "4",
	})
	cmd := c.W.Command(c.Env, filepath.Join(c.Bin, "pg_ctl"), "-D", c.Data, "-l", c.Data+".log", "-w", "-t", "120", "start")
	if out, err := cmd.CombinedOutput(); err != nil {
		log, _ := os.ReadFile(c.Data + ".log")
		t.Fatalf("pg_ctl start: %v\n%s\n%s", err, out, tail(string(log), 3000))
	}
	t.Cleanup(func() { c.Stop() })
	if v := c.SQL(t, "SELECT current_setting('server_version_num')::int / 10000"); v != strconv.Itoa(c.Major) {
		t.Fatalf("%s runs PostgreSQL %s, want %d", c.Bin, v, c.Major)
	}
}

// Stop stops the server (fast mode); calling it twice is harmless.
func (c *Cluster) Stop() {
	cmd := c.W.Command(nil, filepath.Join(c.Bin, "pg_ctl"), "-D", c.Data, "-m", "fast", "-w", "stop")
	_ = cmd.Run()
}

// Log is the server log so far.
func (c *Cluster) Log() string {
	b, _ := os.ReadFile(c.Data + ".log")
	return string(b)
}

// ConnArgs are the psql/pgbench connection arguments.
func (c *Cluster) ConnArgs() []string {
	return []string{"-h", c.W.Dir, "-p", strconv.Itoa(c.Port), "-U", "postgres"}
}

// SQL runs a query with psql and returns its unaligned, tuples-only output.
func (c *Cluster) SQL(t testing.TB, query string) string {
	t.Helper()
	args := append(c.ConnArgs(), "-X", "-At", "-v", "ON_ERROR_STOP=1", "-d", "postgres", "-c", query)
	return strings.TrimSpace(c.W.Run(t, nil, c.Tool("psql"), args...))
}

// WaitSQL waits until query returns want.
func (c *Cluster) WaitSQL(t testing.TB, query, want string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		args := append(c.ConnArgs(), "-X", "-At", "-d", "postgres", "-c", query)
		out, err := c.W.Command(nil, c.Tool("psql"), args...).Output()
		last := strings.TrimSpace(string(out))
		if err == nil && last == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %q to return %q; last %q (%v)\nserver log:\n%s",
				timeout, query, want, last, err, tail(c.Log(), 3000))
		}
		<-tick.C
	}
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}
