package main

import (
	"bytes"
	"strings"
	"testing"

	"github.com/walship/walship/config"
	"github.com/walship/walship/internal/testenv"
)

func TestPushParallelSetting(t *testing.T) {
	archiveDir := t.TempDir()
	seg := testenv.WriteSegment(t, t.TempDir(), "000000010000000000000003", 7300000000000000001, nil)
	for _, c := range []struct {
		args []string
		env  string
		want int
		says string
	}{
		{[]string{"--parallel", "0"}, "", exitUsage, "--parallel 0"},
		{[]string{"--parallel", "65"}, "", exitUsage, "push.parallel"},
		{nil, "many", exitUsage, config.EnvPushParallel},
		{nil, "-2", exitUsage, "push.parallel"},
		{[]string{"--parallel", "1"}, "", exitOK, ""},
		{nil, "3", exitOK, ""},
	} {
		t.Setenv(config.EnvPushParallel, c.env)
		var errb bytes.Buffer
		args := append(append([]string{"walship", "push", "--archive", archiveDir}, c.args...), seg)
		code := run(args, &bytes.Buffer{}, &errb)
		if code != c.want || !strings.Contains(errb.String(), c.says) {
			t.Errorf("%v %s=%s: exit %d (%s), want %d saying %q", c.args, config.EnvPushParallel, c.env, code,
				strings.TrimSpace(errb.String()), c.want, c.says)
		}
		if n := strings.Count(strings.TrimSpace(errb.String()), "\n"); c.want != exitOK && n != 0 {
			t.Errorf("%v: %d lines of error, want one", c.args, n+1)
		}
	}
}

// A proof names the archive as configured: another directory, bucket,
// prefix or endpoint is another archive.
func TestArchiveLocationsDiffer(t *testing.T) {
	loc := func(archive, endpoint string) string {
		return archiveLocation(config.Config{Archive: archive, S3: config.S3{Endpoint: endpoint, Region: "us-east-1"}})
	}
	seen := map[string]string{}
	for _, c := range [][2]string{
		{"/srv/a", ""}, {"/srv/b", ""}, {"s3://b/p", ""}, {"s3://b/q", ""}, {"s3://c/p", ""},
		{"s3://b/p", "http://127.0.0.1:9000"}, {"s3://b/p", "http://10.0.0.1:9000"},
	} {
		l := loc(c[0], c[1])
		if l == "" {
			t.Fatalf("%v: no location", c)
		}
		if prev, ok := seen[l]; ok {
			t.Errorf("%v and %s share the location %q", c, prev, l)
		}
		seen[l] = c[0] + " " + c[1]
	}
	if loc("/srv/a/", "") != loc("file:///srv/a", "") {
		t.Error("one directory written two ways is two locations")
	}
}
