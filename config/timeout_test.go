package config

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestTimeouts(t *testing.T) {
	c, err := Load("", env(nil), nil)
	if err != nil || c.Timeout != nil || c.StallTimeout != 30*time.Second {
		t.Fatalf("defaults: timeout %v, stall %s, %v", c.Timeout, c.StallTimeout, err)
	}
	file := filepath.Join(t.TempDir(), "w.yaml")
	if err := os.WriteFile(file, []byte("timeout: 90s\nstall_timeout: 5s\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err = Load(file, env(nil), nil)
	if err != nil || c.Timeout == nil || *c.Timeout != 90*time.Second || c.StallTimeout != 5*time.Second {
		t.Fatalf("file: %+v, %v", c, err)
	}
	c, err = Load(file, env(map[string]string{EnvTimeout: "0", EnvStallTimeout: "2s"}), nil)
	if err != nil || c.Timeout == nil || *c.Timeout != 0 || c.StallTimeout != 2*time.Second {
		t.Fatalf("environment: %+v, %v", c, err)
	}
	for _, bad := range []map[string]string{{EnvTimeout: "soon"}, {EnvTimeout: "-1s"}, {EnvStallTimeout: "10ms"}, {EnvStallTimeout: "2h"}} {
		if _, err := Load("", env(bad), nil); !errors.Is(err, ErrInvalid) {
			t.Errorf("%v: %v, want ErrInvalid", bad, err)
		}
	}
}

func TestDefaultTimeout(t *testing.T) {
	for cmd, want := range map[string]time.Duration{
		"walship push": 5 * time.Minute, "walship fetch": 5 * time.Minute, "walship status": 5 * time.Minute,
		"walship slot advance": 5 * time.Minute, "walship backup list": 5 * time.Minute,
		"walship backup push": 0, "walship restore": 0, "walship agent": 0, "walship schedule": 0, "walship verify": 0,
	} {
		if got := DefaultTimeout(cmd); got != want {
			t.Errorf("DefaultTimeout(%q) = %s, want %s", cmd, got, want)
		}
	}
}
