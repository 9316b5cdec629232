package testenv

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// DefaultPGMajor is the PostgreSQL the tests run on unless they pick one:
// Debian bookworm's postgresql-15.
const DefaultPGMajor = 15

// PGMajors are the majors walship is tested on; 16 and up come from the
// cache scripts/test.sh fills.
var PGMajors = []int{15, 16, 17, 18}

// PGVersions are the majors the per-version tests run on: those
// WALSHIP_TEST_PG_VERSIONS lists ("15,17"), every one of PGMajors when it
// is unset. A listed major that is not installed makes PGBinFor skip or,
// under CI, fail. A malformed list fails the test.
func PGVersions(t testing.TB) []int {
	t.Helper()
	list := os.Getenv("WALSHIP_TEST_PG_VERSIONS")
	if strings.TrimSpace(list) == "" {
		return append([]int(nil), PGMajors...)
	}
	var majors []int
	for _, f := range strings.Split(list, ",") {
		m, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || m < 10 {
			t.Fatalf("WALSHIP_TEST_PG_VERSIONS=%q: %q is not a PostgreSQL major version", list, f)
		}
		majors = append(majors, m)
	}
	return majors
}

// pgCacheDirs are where scripts/test.sh puts PostgreSQL 16 and up:
// $WALSHIP_TEST_PG_CACHE when set, else /var/cache/walship-test/pg (as
// root) or $XDG_CACHE_HOME/walship-test/pg (~/.cache when unset).
func pgCacheDirs() []string {
	if d := os.Getenv("WALSHIP_TEST_PG_CACHE"); d != "" {
		return []string{d}
	}
	dirs := []string{"/var/cache/walship-test/pg"}
	if x := os.Getenv("XDG_CACHE_HOME"); x != "" {
		dirs = append(dirs, filepath.Join(x, "walship-test", "pg"))
	} else if h, err := os.UserHomeDir(); err == nil {
		dirs = append(dirs, filepath.Join(h, ".cache", "walship-test", "pg"))
	}
	return dirs
}

// PGBinFor finds the server binaries of PostgreSQL major: 15's as PGBin
// does, others in the cache scripts/test.sh fills. A missing one skips the
// test, or fails it under CI (Unavailable).
func PGBinFor(t testing.TB, major int) string {
	t.Helper()
	if major == 0 || major == DefaultPGMajor {
		return PGBin(t)
	}
	var tried []string
	for _, c := range pgCacheDirs() {
		d := filepath.Join(c, strconv.Itoa(major), "bin")
		if isExec(filepath.Join(d, "initdb")) && isExec(filepath.Join(d, "postgres")) {
			return d
		}
		tried = append(tried, d)
	}
	Unavailable(t, "postgres", "no PostgreSQL "+strconv.Itoa(major)+" in "+strings.Join(tried, " or ")+" (scripts/test.sh installs it)")
	return ""
}

func isExec(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0
}
