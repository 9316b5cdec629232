package main

import (
	"context"
	"errors"
	"io"
	"path/filepath"
	"strings"
	"syscall"
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

// A command stuck where no context reaches (a system call on a hung
// mount) still lets walship return stuckGrace after its signal or its
// deadline.
func TestRunWatchedGivesUpOnAStuckCommand(t *testing.T) {
	defer func(g time.Duration) { stuckGrace = g }(stuckGrace)
	stuckGrace = 50 * time.Millisecond
	block := make(chan struct{})
	defer close(block)

	ctx, cancel := context.WithCancel(context.Background())
	cancel() // the signal came
	env := &appEnv{expired: make(chan struct{})}
	if _, stuck := runWatched(ctx, env, func() error { <-block; return nil }); stuck == nil {
		t.Fatal("a command stuck after the signal was waited for")
	}

	env = &appEnv{expired: make(chan struct{}), timeout: time.Second}
	close(env.expired) // the deadline passed
	if _, stuck := runWatched(context.Background(), env, func() error { <-block; return nil }); stuck == nil || !strings.Contains(stuck.Error(), "timeout") {
		t.Fatalf("a command stuck past its deadline: %v", stuck)
	}

	// One that returns in time is not stuck.
	env = &appEnv{expired: make(chan struct{})}
	if err, stuck := runWatched(context.Background(), env, func() error { return errors.New("x") }); stuck != nil || err == nil {
		t.Fatalf("a command that returned: %v %v", err, stuck)
	}
}

// A FIFO where a directory archive's object should be is refused at once,
// not waited on.
func TestFIFOInDirectoryArchiveIsRefused(t *testing.T) {
	arch := t.TempDir()
	if err := syscall.Mkfifo(filepath.Join(arch, "identity.json"), 0o600); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	start := time.Now()
	code, out := runIn(t, dir, nil, "fetch", "--archive", arch, "000000010000000000000001", filepath.Join(dir, "x"))
	if code != exitArchive || time.Since(start) > 10*time.Second {
		t.Fatalf("fetch with a FIFO identity: status %d after %s (%s)", code, time.Since(start), out)
	}
}
