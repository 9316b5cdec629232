package main

import (
	"io"
	"strings"
	"testing"
	"time"

	"github.com/urfave/cli/v2"
)

// Each command gets its own default bound, looked up by its full name: a
// subcommand is not bounded as a top-level command of the same last word
// ("backup push" is not "push": a long backup must not be cut at 5m).
func TestCommandDefaultTimeout(t *testing.T) {
	cases := map[string]time.Duration{
		"push": 5 * time.Minute, "fetch": 5 * time.Minute, "status": 5 * time.Minute,
		"backup list": 5 * time.Minute, "backup show": 5 * time.Minute, "backup delete": 5 * time.Minute,
		"slot create": 5 * time.Minute, "slot list": 5 * time.Minute, "slot advance": 5 * time.Minute, "slot drop": 5 * time.Minute,
		"backup push": 0, "restore": 0, "verify": 0, "retention apply": 0, "retention plan": 0, "schedule run": 0,
	}
	for path, want := range cases {
		env := &appEnv{stdout: io.Discard, stderr: io.Discard, getenv: func(string) string { return "" }}
		app := newApp(env)
		cmd := commandAt(app.Commands, strings.Fields(path))
		if cmd == nil {
			t.Fatalf("no command %q", path)
		}
		var gotPath string
		cmd.Action = func(c *cli.Context) error {
			gotPath = commandPath(c)
			return env.load(c)
		}
		args := append([]string{"walship"}, strings.Fields(path)...)
		if path == "restore" {
			args = append(args, "--pgdata", "/nonexistent")
		}
		if err := app.Run(args); err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		if gotPath != path {
			t.Errorf("commandPath = %q, want %q", gotPath, path)
		}
		if env.timeout != want {
			t.Errorf("%s: bound %s, want %s", path, env.timeout, want)
		}
		if env.release != nil {
			env.release()
		}
	}
}

func commandAt(cmds []*cli.Command, path []string) *cli.Command {
	for _, c := range cmds {
		if c.Name == path[0] {
			if len(path) == 1 {
				return c
			}
			return commandAt(c.Subcommands, path[1:])
		}
	}
	return nil
}
