package config

import (
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// Fetch holds the settings of walship fetch (restore_command) for its
// self-started prefetcher: during a recovery without walship agent, the
// first fetch starts a background process that downloads the next segments
// into a spool, and later fetches take them from there.
type Fetch struct {
	// Prefetch is how many segments beyond the one PostgreSQL took last
	// are kept ready; 0 turns the prefetcher off.
	Prefetch int `yaml:"prefetch"`
	// PrefetchBytes bounds the bytes of those segments, in the spool and
	// in flight together; at least one segment is always allowed.
	PrefetchBytes ByteSize `yaml:"prefetch_bytes"`
	// PrefetchDir is the prefetcher's spool; empty means .walship-prefetch
	// in the directory PostgreSQL restores into (pg_wal).
	PrefetchDir string `yaml:"prefetch_dir"`
	// PrefetchIdle: the prefetcher exits when nothing was taken from its
	// spool and no fetch came for this long.
	PrefetchIdle time.Duration `yaml:"prefetch_idle"`
	// PrefetchParallel is how many downloads the prefetcher runs at once.
	PrefetchParallel int `yaml:"prefetch_parallel"`
}

// The prefetcher's defaults (README.md, Configuration): 16 segments and
// 256 MiB, as many as the agent keeps ahead by default. On a 16 MiB segment
// size that is about two seconds of local replay (about 150 ms a segment of
// easily compressed WAL on a small machine) and lets four downloads hide a
// slow archive's latency, while a quarter of the default max_wal_size of
// 1 GB keeps pg_wal's own volume, where the spool lives, from filling up.
// pgBackRest's archive-get-queue-max default is 128 MiB. Two downloads at
// once, as pgBackRest's process-max=2: each holds a zstd window of up to a
// segment in memory, and one download takes a third of the time replaying
// its segment does, so two keep ahead of replay even against an archive
// with tens of milliseconds of latency.
const (
	DefaultPrefetch         = 16
	DefaultPrefetchBytes    = 256 << 20
	DefaultPrefetchIdle     = time.Minute
	DefaultPrefetchParallel = 2
)

func defaultFetch() Fetch {
	return Fetch{Prefetch: DefaultPrefetch, PrefetchBytes: DefaultPrefetchBytes, PrefetchIdle: DefaultPrefetchIdle,
		PrefetchParallel: DefaultPrefetchParallel}
}

// Environment names of the fetch settings.
const (
	EnvFetchPrefetch      = "WALSHIP_FETCH_PREFETCH"
	EnvFetchPrefetchBytes = "WALSHIP_FETCH_PREFETCH_BYTES"
	EnvFetchPrefetchDir   = "WALSHIP_FETCH_PREFETCH_DIR"
	EnvFetchPrefetchIdle  = "WALSHIP_FETCH_PREFETCH_IDLE"
	EnvFetchPrefetchPar   = "WALSHIP_FETCH_PREFETCH_PARALLEL"
)

func (f *Fetch) applyEnv(getenv func(string) string) error {
	for name, dst := range map[string]*int{EnvFetchPrefetch: &f.Prefetch, EnvFetchPrefetchPar: &f.PrefetchParallel} {
		if v := getenv(name); v != "" {
			n, err := strconv.Atoi(v)
			if err != nil {
				return &Error{name, fmt.Sprintf("%q is not a number", v)}
			}
			*dst = n
		}
	}
	if v := getenv(EnvFetchPrefetchBytes); v != "" {
		b, err := ParseByteSize(v)
		if err != nil {
			return &Error{EnvFetchPrefetchBytes, err.Error()}
		}
		f.PrefetchBytes = b
	}
	if v := getenv(EnvFetchPrefetchDir); v != "" {
		f.PrefetchDir = v
	}
	if v := getenv(EnvFetchPrefetchIdle); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			return &Error{EnvFetchPrefetchIdle, fmt.Sprintf("%q is not a duration such as 1m", v)}
		}
		f.PrefetchIdle = d
	}
	return nil
}

func (f Fetch) validate() error {
	switch {
	case f.Prefetch < 0 || f.Prefetch > 1024:
		return &Error{"fetch.prefetch", fmt.Sprintf("%d: want 0 (off) to 1024 segments", f.Prefetch)}
	case f.PrefetchBytes < 1<<20 || f.PrefetchBytes > 64<<30:
		return &Error{"fetch.prefetch_bytes", fmt.Sprintf("%d: want 1MiB..64GiB", int64(f.PrefetchBytes))}
	case f.PrefetchDir != "" && !filepath.IsAbs(f.PrefetchDir):
		return &Error{"fetch.prefetch_dir", fmt.Sprintf("%q: want an absolute directory", f.PrefetchDir)}
	case f.PrefetchIdle < time.Second || f.PrefetchIdle > time.Hour:
		return &Error{"fetch.prefetch_idle", fmt.Sprintf("%s: want 1s..1h", f.PrefetchIdle)}
	case f.PrefetchParallel < 1 || f.PrefetchParallel > 16:
		return &Error{"fetch.prefetch_parallel", fmt.Sprintf("%d: want 1..16", f.PrefetchParallel)}
	}
	if f.PrefetchDir != "" {
		switch filepath.Base(f.PrefetchDir) {
		case "pg_wal", "pg_xlog":
			return &Error{"fetch.prefetch_dir", fmt.Sprintf("%q is a WAL directory itself: PostgreSQL would take its files for WAL; use a directory of its own", f.PrefetchDir)}
		}
	}
	return nil
}

// ByteSize is a number of bytes, written as a plain number or with a
// binary unit: 256MiB, 1GiB, 512kB. As in postgresql.conf, kB, MB, GB and TB
// are 1024-based too.
type ByteSize int64

// UnmarshalYAML reads a size written as a number or a string with a unit.
func (b *ByteSize) UnmarshalYAML(n *yaml.Node) error {
	v, err := ParseByteSize(n.Value)
	if err != nil {
		return fmt.Errorf("line %d: %w", n.Line, err)
	}
	*b = v
	return nil
}

// String writes the size in the largest unit that divides it.
func (b ByteSize) String() string {
	for _, u := range []struct {
		name string
		n    int64
	}{{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if b != 0 && int64(b)%u.n == 0 {
			return strconv.FormatInt(int64(b)/u.n, 10) + u.name
		}
	}
	return strconv.FormatInt(int64(b), 10)
}

// ParseByteSize reads 268435456, 256MiB, 256MB, 1GiB or 512kB.
func ParseByteSize(s string) (ByteSize, error) {
	t := strings.TrimSpace(s)
	i := strings.IndexFunc(t, func(r rune) bool { return r < '0' || r > '9' })
	num, unit := t, ""
	if i >= 0 {
		num, unit = t[:i], strings.TrimSpace(t[i:])
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("%q is not a size such as 256MiB", s)
	}
	shift := map[string]uint{"": 0, "B": 0,
		"k": 10, "K": 10, "kB": 10, "KB": 10, "KiB": 10,
		"M": 20, "MB": 20, "MiB": 20, "G": 30, "GB": 30, "GiB": 30, "T": 40, "TB": 40, "TiB": 40}
	sh, ok := shift[unit]
	if !ok {
		return 0, fmt.Errorf("%q: unknown unit %q; want B, kB, MB, GB, TB or KiB, MiB, GiB, TiB", s, unit)
	}
	if n > (1<<62)>>sh {
		return 0, fmt.Errorf("%q is too large", s)
	}
	return ByteSize(n << sh), nil
}
