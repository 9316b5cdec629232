package config

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func env(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

func TestPrecedence(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "walship.yaml")
	if err := os.WriteFile(file, []byte("archive: s3://from-file/p\ncompression: s2\ncompression_level: 2\ns3:\n  endpoint: ${EP}\n  path_style: true\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := Load(file, env(map[string]string{"EP": "http://127.0.0.1:9000", EnvCompression: "gzip", EnvCompressionLevel: "6"}),
		func(c *Config) error { c.Archive = "/from/flag"; return nil })
	if err != nil {
		t.Fatal(err)
	}
	if c.Archive != "/from/flag" || c.Compression != "gzip" || c.CompressionLevel != 6 ||
		c.S3.Endpoint != "http://127.0.0.1:9000" || !c.S3.PathStyle || c.LogFormat != "text" {
		t.Fatalf("config = %+v", c)
	}
}

func TestBadSettingsNameTheSetting(t *testing.T) {
	dir := t.TempDir()
	unknown := filepath.Join(dir, "u.yaml")
	_ = os.WriteFile(unknown, []byte("archve: /x\n"), 0o600)
	agent := func(name, body string) string {
		p := filepath.Join(dir, name+".yaml")
		_ = os.WriteFile(p, []byte(body), 0o600)
		return p
	}
	cases := []struct {
		file string
		env  map[string]string
		want string
	}{
		{"", map[string]string{EnvArchive: "ftp://x"}, "archive"},
		{"", map[string]string{EnvArchive: "rel/dir"}, "archive"},
		{"", map[string]string{EnvArchive: "s3://"}, "archive"},
		{"", map[string]string{EnvCompression: "brotli"}, "compression"},
		{"", map[string]string{EnvCompressionLevel: "x"}, EnvCompressionLevel},
		{"", map[string]string{EnvS3PathStyle: "yes please"}, EnvS3PathStyle},
		{"", map[string]string{EnvS3SSE: "rot13"}, "s3.sse"},
		{"", map[string]string{EnvS3Endpoint: "ftp://x"}, "s3.endpoint"},
		{"", map[string]string{EnvLogFormat: "xml"}, "log-format"},
		{unknown, nil, "archve"},
		{"", map[string]string{EnvSpool: "relative/spool"}, "spool"},
		{agent("ahead", "agent:\n  ahead: 0\n"), nil, "agent.ahead"},
		{agent("parallel", "agent:\n  parallel: 1000\n"), nil, "agent.parallel"},
		{agent("pollmin", "agent:\n  poll_min: 1ms\n"), nil, "agent.poll_min"},
		{agent("pollmax", "agent:\n  poll_min: 2s\n  poll_max: 1s\n"), nil, "agent.poll_max"},
		{agent("hb", "agent:\n  heartbeat: 1ms\n"), nil, "agent.heartbeat"},
		{filepath.Join(dir, "missing.yaml"), nil, "config"},
		{agent("stop", "schedule:\n  stop_timeout: -5s\n"), nil, "schedule.stop_timeout"},
		{"", map[string]string{EnvBackupType: "differential"}, "backup.type"},
		{agent("btype", "backup:\n  type: incr\n"), nil, "backup.type"},
		{agent("jobtype", "schedule:\n  jobs:\n    - name: b\n      cron: \"@daily\"\n      kind: backup\n      type: diff\n"), nil, "schedule.jobs[0].type"},
		{agent("vtype", "schedule:\n  jobs:\n    - name: v\n      cron: \"@daily\"\n      kind: verify\n      type: full\n"), nil, "schedule.jobs[0].type"},
		{agent("jobtimeout", "schedule:\n  jobs:\n    - name: v\n      cron: \"@daily\"\n      kind: verify\n      timeout: -1s\n"), nil, "schedule.jobs[0].timeout"},
	}
	for _, c := range cases {
		_, err := Load(c.file, env(c.env), nil)
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v %s: err = %v, want one naming %q", c.env, c.file, err, c.want)
		}
	}
}

func TestParseArchive(t *testing.T) {
	for in, want := range map[string]ArchiveURL{
		"/var/lib/wal":         {Scheme: "file", Path: "/var/lib/wal"},
		"file:///mnt/nfs/wal/": {Scheme: "file", Path: "/mnt/nfs/wal"},
		"s3://bucket":          {Scheme: "s3", Bucket: "bucket"},
		"s3://bucket/a/b/":     {Scheme: "s3", Bucket: "bucket", Prefix: "a/b"},
	} {
		got, err := ParseArchive(in)
		if err != nil || got != want {
			t.Errorf("ParseArchive(%q) = %+v, %v", in, got, err)
		}
	}
	for _, bad := range []string{"", "wal", "file://host/x", "s3://b/../x", "s3://b/a//c", "s3://b?x=1", "s3://k:secret@b/p"} {
		_, err := ParseArchive(bad)
		if err == nil {
			t.Errorf("ParseArchive(%q) accepted", bad)
		} else if strings.Contains(err.Error(), "secret") {
			t.Errorf("error repeats the secret: %v", err)
		}
	}
}

func TestAgentSettingsFromYAML(t *testing.T) {
	p := filepath.Join(t.TempDir(), "c.yaml")
	_ = os.WriteFile(p, []byte("archive: /a\nspool: /var/spool/walship\nagent:\n  slot: dr1\n  ahead: 32\n  poll_max: 2m\n  metrics_addr: 127.0.0.1:9187\n"), 0o600)
	c, err := Load(p, env(nil), nil)
	if err != nil {
		t.Fatal(err)
	}
	if c.Spool != "/var/spool/walship" || c.Agent.Slot != "dr1" || c.Agent.Ahead != 32 || c.Agent.PollMax != 2*time.Minute ||
		c.Agent.Parallel != 4 || c.Agent.MetricsAddr != "127.0.0.1:9187" {
		t.Fatalf("%+v", c)
	}
}

func TestBackupType(t *testing.T) {
	c, err := Load("", env(nil), nil)
	if err != nil || c.Backup.Type != BackupFull {
		t.Fatalf("default backup.type: %q, %v", c.Backup.Type, err)
	}
	c, err = Load("", env(map[string]string{EnvBackupType: "incremental"}), nil)
	if err != nil || c.Backup.Type != BackupIncremental {
		t.Fatalf("%s=incremental: %q, %v", EnvBackupType, c.Backup.Type, err)
	}
}
