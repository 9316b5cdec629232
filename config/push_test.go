package config

import (
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

func TestPushParallel(t *testing.T) {
	c, err := Load("", env(nil), nil)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := c.PushParallel(), min(runtime.GOMAXPROCS(0), 8); got != want || c.Push.Parallel != 0 {
		t.Fatalf("default push parallel %d (setting %d), want %d", got, c.Push.Parallel, want)
	}
	p := filepath.Join(t.TempDir(), "c.yaml")
	if err := os.WriteFile(p, []byte("push:\n  parallel: 3\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if c, err = Load(p, env(nil), nil); err != nil || c.PushParallel() != 3 {
		t.Fatalf("from the file: %d, %v", c.PushParallel(), err)
	}
	// The environment beats the file, a flag beats both.
	if c, err = Load(p, env(map[string]string{EnvPushParallel: "1"}), nil); err != nil || c.PushParallel() != 1 {
		t.Fatalf("from the environment: %d, %v", c.PushParallel(), err)
	}
	c, err = Load(p, env(map[string]string{EnvPushParallel: "1"}), func(c *Config) error { c.Push.Parallel = 5; return nil })
	if err != nil || c.PushParallel() != 5 {
		t.Fatalf("from a flag: %d, %v", c.PushParallel(), err)
	}
	for _, bad := range []string{"-1", "65", "many"} {
		_, err := Load("", env(map[string]string{EnvPushParallel: bad}), nil)
		if !errors.Is(err, ErrInvalid) || !(strings.Contains(err.Error(), "push.parallel") || strings.Contains(err.Error(), EnvPushParallel)) {
			t.Errorf("%s=%s: %v, want an error naming the setting", EnvPushParallel, bad, err)
		}
	}
}
