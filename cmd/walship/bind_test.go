package main

import (
	"bytes"
	"errors"
	"io"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/walship/walship/config"
)

// loaded runs the command line with every command's action replaced by
// the configuration load, and returns what the command would read.
func loaded(t *testing.T, line string) (config.Config, error) {
	t.Helper()
	var errb bytes.Buffer
	env := &appEnv{stdout: io.Discard, stderr: &errb, getenv: func(string) string { return "" }}
	app := newApp(env)
	var got config.Config
	var replace func([]*cli.Command)
	replace = func(cmds []*cli.Command) {
		for _, cmd := range cmds {
			cmd.Action = func(c *cli.Context) error {
				if err := env.load(c); err != nil {
					return err
				}
				got = env.cfg
				return nil
			}
			replace(cmd.Subcommands)
		}
	}
	replace(app.Commands)
	err := app.Run(flagsFirst(app, strings.Fields("walship "+line)))
	return got, err
}

// Each command's flags land in the settings they name, and only there:
// agent --parallel is not push --parallel.
func TestFlagsBindToSettings(t *testing.T) {
	d := config.Default()
	cases := []struct {
		line string
		want func(*config.Config)
	}{
		{"--archive /a push --archive /b x", func(c *config.Config) { c.Archive = "/b" }},
		{"--archive /a --log-level debug push x", func(c *config.Config) { c.Archive, c.LogLevel = "/a", "debug" }},
		{"push --archive /a --parallel 5 x", func(c *config.Config) { c.Archive, c.Push.Parallel = "/a", 5 }},
		{"agent --archive /a --parallel 7 --ahead 9 --poll-max 1m --slot s --spool /s", func(c *config.Config) {
			c.Archive, c.Agent.Parallel, c.Agent.Ahead, c.Agent.PollMax, c.Agent.Slot, c.Spool = "/a", 7, 9, time.Minute, "s", "/s"
		}},
		{"fetch --archive /a --spool /s --prefetch 3 --prefetch-bytes 1GiB --prefetch-idle 30s A B", func(c *config.Config) {
			c.Archive, c.Spool, c.Fetch.Prefetch, c.Fetch.PrefetchBytes, c.Fetch.PrefetchIdle = "/a", "/s", 3, 1<<30, 30*time.Second
		}},
		{"restore --archive /a --spool /s --pgdata /p", func(c *config.Config) { c.Archive, c.Spool = "/a", "/s" }},
		{"retention plan --archive /a --keep-last 2 --grace 1m", func(c *config.Config) {
			c.Archive, c.Retention.KeepLast, c.Retention.Grace = "/a", 2, time.Minute
		}},
		{"retention apply --archive /a --keep-within 48h", func(c *config.Config) {
			c.Archive, c.Retention.KeepWithin = "/a", 48*time.Hour
		}},
		{"backup push --archive /a --incremental", func(c *config.Config) { c.Archive, c.Backup.Type = "/a", config.BackupIncremental }},
		{"backup push --archive /a --incremental=false", func(c *config.Config) { c.Archive = "/a" }},
		{"status --archive /a --timeout 0s --stall-timeout 2s", func(c *config.Config) {
			zero := time.Duration(0)
			c.Archive, c.Timeout, c.StallTimeout = "/a", &zero, 2*time.Second
		}},
	}
	for _, tc := range cases {
		got, err := loaded(t, tc.line)
		if err != nil {
			t.Errorf("%s: %v", tc.line, err)
			continue
		}
		want := d
		tc.want(&want)
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%s:\n got %+v\nwant %+v", tc.line, got, want)
		}
	}
}

// A flag value that no setting takes is a usage error naming the flag.
func TestFlagBindingErrors(t *testing.T) {
	for line, says := range map[string]string{
		"push --archive /a --parallel 0 x":             "--parallel 0",
		"fetch --archive /a --spool rel/dir A B":       "--spool",
		"agent --archive /a --spool rel/dir":           "--spool",
		"restore --archive /a --spool rel --pgdata p":  "--spool",
		"fetch --archive /a --prefetch-bytes lots A B": "--prefetch-bytes",
		"retention plan --archive /a --keep-last -1":   "retention",
	} {
		_, err := loaded(t, line)
		var ee *exitError
		if !errors.As(err, &ee) || ee.code != exitUsage || !strings.Contains(err.Error(), says) {
			t.Errorf("%s: %v, want a usage error naming %s", line, err, says)
		}
	}
}

// Every binding names a flag its command declares: a misspelt one would
// never apply.
func TestBindingsNameDeclaredFlags(t *testing.T) {
	app := newApp(&appEnv{stdout: io.Discard, stderr: io.Discard, getenv: func(string) string { return "" }})
	declared := map[string]map[string]bool{}
	var walk func(prefix string, cmds []*cli.Command)
	walk = func(prefix string, cmds []*cli.Command) {
		for _, c := range cmds {
			name := strings.TrimSpace(prefix + " " + c.Name)
			declared[name] = map[string]bool{}
			for _, f := range c.Flags {
				for _, n := range f.Names() {
					declared[name][n] = true
				}
			}
			walk(name, c.Subcommands)
		}
	}
	walk("", app.Commands)
	for cmd, bs := range commandBindings {
		if declared[cmd] == nil {
			t.Errorf("bindings for %q: no such command", cmd)
		}
		for _, b := range bs {
			if !declared[cmd][b.flag] {
				t.Errorf("%s: binding for --%s, which it does not declare", cmd, b.flag)
			}
		}
	}
	for _, b := range globalBindings {
		if !declared["push"][b.flag] {
			t.Errorf("global binding for --%s, which globalFlags does not declare", b.flag)
		}
	}
}
