package main

import (
	"fmt"
	"path/filepath"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/walship/walship/config"
)

// The one place where command-line flags become settings. load lays every
// flag given over the configuration (defaults < file < environment <
// flags) before it is validated, so that a command reads only env.cfg.

// binding lays one flag, when it was given, over the setting it names.
type binding struct {
	flag string
	set  setter
}

// setter sets cfg from flag's value in c.
type setter func(cfg *config.Config, c *cli.Context, flag string) error

// globalBindings are the flags every command declares: given before the
// command name or after it, the innermost wins (setGlobal).
var globalBindings = []binding{
	{"archive", str(func(c *config.Config) *string { return &c.Archive })},
	{"compression", str(func(c *config.Config) *string { return &c.Compression })},
	{"compression-level", num(func(c *config.Config) *int { return &c.CompressionLevel })},
	{"log-format", str(func(c *config.Config) *string { return &c.LogFormat })},
	{"log-level", str(func(c *config.Config) *string { return &c.LogLevel })},
	{"s3-endpoint", str(func(c *config.Config) *string { return &c.S3.Endpoint })},
	{"s3-region", str(func(c *config.Config) *string { return &c.S3.Region })},
	{"s3-path-style", boolean(func(c *config.Config) *bool { return &c.S3.PathStyle })},
	{"s3-storage-class", str(func(c *config.Config) *string { return &c.S3.StorageClass })},
	{"s3-sse", str(func(c *config.Config) *string { return &c.S3.SSE })},
	{"s3-sse-kms-key-id", str(func(c *config.Config) *string { return &c.S3.SSEKMSKeyID })},
	{"timeout", func(cfg *config.Config, c *cli.Context, flag string) error {
		d := c.Duration(flag)
		cfg.Timeout = &d
		return nil
	}},
	{"stall-timeout", dur(func(c *config.Config) *time.Duration { return &c.StallTimeout })},
}

// commandBindings are the commands' own flags that are settings, by the
// command's full name.
var commandBindings = map[string][]binding{
	"push": {{"parallel", func(cfg *config.Config, c *cli.Context, flag string) error {
		if c.Int(flag) == 0 {
			// 0 in the configuration means the default; on the
			// command line it is a mistake.
			return fmt.Errorf("--parallel 0: want 1..%d", config.MaxPushParallel)
		}
		cfg.Push.Parallel = c.Int(flag)
		return nil
	}}},
	"fetch": {
		spoolBinding,
		{"prefetch", num(func(c *config.Config) *int { return &c.Fetch.Prefetch })},
		{"prefetch-bytes", func(cfg *config.Config, c *cli.Context, flag string) error {
			b, err := config.ParseByteSize(c.String(flag))
			if err != nil {
				return fmt.Errorf("--prefetch-bytes: %w", err)
			}
			cfg.Fetch.PrefetchBytes = b
			return nil
		}},
		{"prefetch-dir", str(func(c *config.Config) *string { return &c.Fetch.PrefetchDir })},
		{"prefetch-idle", dur(func(c *config.Config) *time.Duration { return &c.Fetch.PrefetchIdle })},
		{"prefetch-parallel", num(func(c *config.Config) *int { return &c.Fetch.PrefetchParallel })},
	},
	"restore": {spoolBinding},
	"agent": {
		spoolBinding,
		{"slot", str(func(c *config.Config) *string { return &c.Agent.Slot })},
		{"standby", str(func(c *config.Config) *string { return &c.Agent.Standby })},
		{"metrics-addr", str(func(c *config.Config) *string { return &c.Agent.MetricsAddr })},
		{"ahead", num(func(c *config.Config) *int { return &c.Agent.Ahead })},
		{"parallel", num(func(c *config.Config) *int { return &c.Agent.Parallel })},
		{"poll-min", dur(func(c *config.Config) *time.Duration { return &c.Agent.PollMin })},
		{"poll-max", dur(func(c *config.Config) *time.Duration { return &c.Agent.PollMax })},
		{"heartbeat", dur(func(c *config.Config) *time.Duration { return &c.Agent.Heartbeat })},
	},
	"backup push": {{"incremental", func(cfg *config.Config, c *cli.Context, flag string) error {
		cfg.Backup.Type = config.BackupFull
		if c.Bool(flag) {
			cfg.Backup.Type = config.BackupIncremental
		}
		return nil
	}}},
	"retention plan":  retentionBindings,
	"retention apply": retentionBindings,
}

var retentionBindings = []binding{
	{"keep-last", num(func(c *config.Config) *int { return &c.Retention.KeepLast })},
	{"keep-within", dur(func(c *config.Config) *time.Duration { return &c.Retention.KeepWithin })},
	{"grace", dur(func(c *config.Config) *time.Duration { return &c.Retention.Grace })},
}

// spoolBinding is --spool of fetch, restore and agent. PostgreSQL runs
// restore_command in the data directory: a relative spool would be looked
// for inside it.
var spoolBinding = binding{"spool", func(cfg *config.Config, c *cli.Context, flag string) error {
	cfg.Spool = c.String(flag)
	if cfg.Spool != "" && !filepath.IsAbs(cfg.Spool) {
		return fmt.Errorf("--spool %q: want an absolute directory", cfg.Spool)
	}
	return nil
}}

// bindFlags lays the flags given for the command of c over cfg: the global
// ones at whatever level they were written, then the command's own.
func bindFlags(c *cli.Context, cfg *config.Config) error {
	for _, b := range globalBindings {
		if cc, ok := setGlobal(c, b.flag); ok {
			if err := b.set(cfg, cc, b.flag); err != nil {
				return err
			}
		}
	}
	for _, b := range commandBindings[commandPath(c)] {
		if c.IsSet(b.flag) {
			if err := b.set(cfg, c, b.flag); err != nil {
				return err
			}
		}
	}
	return nil
}

func str(field func(*config.Config) *string) setter {
	return func(cfg *config.Config, c *cli.Context, flag string) error {
		*field(cfg) = c.String(flag)
		return nil
	}
}

func num(field func(*config.Config) *int) setter {
	return func(cfg *config.Config, c *cli.Context, flag string) error {
		*field(cfg) = c.Int(flag)
		return nil
	}
}

func dur(field func(*config.Config) *time.Duration) setter {
	return func(cfg *config.Config, c *cli.Context, flag string) error {
		*field(cfg) = c.Duration(flag)
		return nil
	}
}

func boolean(field func(*config.Config) *bool) setter {
	return func(cfg *config.Config, c *cli.Context, flag string) error {
		*field(cfg) = c.Bool(flag)
		return nil
	}
}
