package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestFetchSettings(t *testing.T) {
	c, err := Load("", env(nil), nil)
	if err != nil {
		t.Fatal(err)
	}
	if f := c.Fetch; f.Prefetch != 16 || f.PrefetchBytes != 256<<20 || f.PrefetchDir != "" || f.PrefetchIdle != time.Minute || f.PrefetchParallel != 2 {
		t.Fatalf("defaults: %+v", f)
	}
	file := filepath.Join(t.TempDir(), "w.yaml")
	_ = os.WriteFile(file, []byte("fetch:\n  prefetch: 4\n  prefetch_bytes: 1GiB\n  prefetch_dir: /srv/prefetch\n  prefetch_idle: 30s\n  prefetch_parallel: 6\n"), 0o600)
	c, err = Load(file, env(map[string]string{EnvFetchPrefetch: "8"}), nil)
	if err != nil {
		t.Fatal(err)
	}
	if f := c.Fetch; f.Prefetch != 8 || f.PrefetchBytes != 1<<30 || f.PrefetchDir != "/srv/prefetch" || f.PrefetchIdle != 30*time.Second || f.PrefetchParallel != 6 {
		t.Fatalf("file and environment: %+v", f)
	}
	c, err = Load("", env(map[string]string{EnvFetchPrefetch: "0", EnvFetchPrefetchBytes: "64MB", EnvFetchPrefetchIdle: "5m",
		EnvFetchPrefetchDir: "/x/y"}), nil)
	if err != nil {
		t.Fatal(err)
	}
	if f := c.Fetch; f.Prefetch != 0 || f.PrefetchBytes != 64<<20 || f.PrefetchIdle != 5*time.Minute || f.PrefetchDir != "/x/y" {
		t.Fatalf("environment: %+v", f)
	}
	bad := []struct {
		env  map[string]string
		yaml string
		want string
	}{
		{map[string]string{EnvFetchPrefetch: "-1"}, "", "fetch.prefetch"},
		{map[string]string{EnvFetchPrefetch: "x"}, "", EnvFetchPrefetch},
		{map[string]string{EnvFetchPrefetchBytes: "100"}, "", "fetch.prefetch_bytes"},
		{map[string]string{EnvFetchPrefetchBytes: "1PB"}, "", EnvFetchPrefetchBytes},
		{map[string]string{EnvFetchPrefetchIdle: "forever"}, "", EnvFetchPrefetchIdle},
		{map[string]string{EnvFetchPrefetchIdle: "2h"}, "", "fetch.prefetch_idle"},
		{map[string]string{EnvFetchPrefetchDir: "spool"}, "", "fetch.prefetch_dir"},
		{map[string]string{EnvFetchPrefetchPar: "0"}, "", "fetch.prefetch_parallel"},
		{map[string]string{EnvFetchPrefetchPar: "two"}, "", EnvFetchPrefetchPar},
		{map[string]string{EnvFetchPrefetchDir: "/var/lib/pg/pg_wal"}, "", "fetch.prefetch_dir"},
		{nil, "fetch:\n  prefetch_bytes: a lot\n", "line 2: \"a lot\" is not a size"},
		{nil, "fetch:\n  prefetch_ahead: 3\n", "prefetch_ahead"},
	}
	for _, b := range bad {
		path := ""
		if b.yaml != "" {
			path = filepath.Join(t.TempDir(), "b.yaml")
			_ = os.WriteFile(path, []byte(b.yaml), 0o600)
		}
		_, err := Load(path, env(b.env), nil)
		if err == nil || !strings.Contains(err.Error(), b.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%v %q: %v, want one line naming %s", b.env, b.yaml, err, b.want)
		}
	}
}

func TestParseByteSize(t *testing.T) {
	for in, want := range map[string]ByteSize{"0": 0, "268435456": 256 << 20, "256MiB": 256 << 20, "256MB": 256 << 20,
		"256M": 256 << 20, "1GiB": 1 << 30, "2 GB": 2 << 30, "512kB": 512 << 10, "1TiB": 1 << 40, "7B": 7} {
		got, err := ParseByteSize(in)
		if err != nil || got != want {
			t.Errorf("%q: %d %v, want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "MiB", "-1MiB", "1.5GiB", "1 parsec", "99999999999TiB"} {
		if _, err := ParseByteSize(in); err == nil {
			t.Errorf("%q: accepted", in)
		}
	}
	for b, want := range map[ByteSize]string{256 << 20: "256MiB", 1 << 30: "1GiB", 1000: "1000", 3 << 10: "3KiB"} {
		if b.String() != want {
			t.Errorf("%d: %s, want %s", int64(b), b.String(), want)
		}
	}
}
