// Package config loads walship's settings once, in one order of precedence:
// defaults < YAML file < WALSHIP_* environment < command-line flags. The
// result is validated and passed explicitly; nothing reads settings from
// globals or the environment afterwards.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/walship/walship/sealed"
)

// Config is every setting. Credentials are deliberately absent: S3
// credentials come from the standard AWS chain and are never held, logged or
// echoed by walship.
type Config struct {
	Archive          string `yaml:"archive"`
	Compression      string `yaml:"compression"`
	CompressionLevel int    `yaml:"compression_level"`
	LogFormat        string `yaml:"log_format"`
	LogLevel         string `yaml:"log_level"`
	S3               S3     `yaml:"s3"`
	// Timeout bounds a whole command; nil means the command's default
	// (see DefaultTimeout), 0 no bound.
	Timeout *time.Duration `yaml:"timeout"`
	// StallTimeout fails a storage request that gets no answer, or a
	// body read that gets no byte, for this long; the try is then
	// retried.
	StallTimeout time.Duration `yaml:"stall_timeout"`
	// Spool is the directory walship agent fills and fetch takes from.
	Spool     string    `yaml:"spool"`
	Fetch     Fetch     `yaml:"fetch"`
	Agent     Agent     `yaml:"agent"`
	Push      Push      `yaml:"push"`
	Backup    Backup    `yaml:"backup"`
	Retention Retention `yaml:"retention"`
	Schedule  Schedule  `yaml:"schedule"`
}

// Schedule holds walship schedule's jobs.
type Schedule struct {
	StopTimeout time.Duration `yaml:"stop_timeout"`
	MetricsAddr string        `yaml:"metrics_addr"`
	Jobs        []Job         `yaml:"jobs"`
}

// Job is one scheduled job: backup, retention, verify or drill.
type Job struct {
	Name string `yaml:"name"`
	Cron string `yaml:"cron"`
	Kind string `yaml:"kind"`
	// backup
	PG         string `yaml:"pg"`         // connection string (no password)
	Checkpoint string `yaml:"checkpoint"` // fast or spread
	Type       string `yaml:"type"`       // full or incremental; empty: backup.type
	// verify
	Quick bool `yaml:"quick"`
	// drill
	PGBin   string        `yaml:"pg_bin"`  // directory of pg_ctl
	Scratch string        `yaml:"scratch"` // where the scratch data directory goes
	Timeout time.Duration `yaml:"timeout"`
}

// Retention holds the retention policy.
type Retention struct {
	KeepLast   int           `yaml:"keep_last"`
	KeepWithin time.Duration `yaml:"keep_within"`
	Grace      time.Duration `yaml:"grace"`
}

// The backup types of backup.type and a backup job's type.
const (
	BackupFull        = "full"
	BackupIncremental = "incremental"
)

// Backup holds backup push's settings.
type Backup struct {
	// Type is BackupFull or BackupIncremental: an incremental backup
	// (PostgreSQL 17 and later, summarize_wal on) is taken against the
	// newest complete backup that can serve as its parent.
	Type string `yaml:"type"`
}

// Push holds walship push's settings.
type Push struct {
	// Parallel is how many segments a push has in flight at once, the
	// file asked for and the ready ones after it (docs/PUSH.md); 1 pushes
	// one segment per call; 0 means DefaultPushParallel.
	Parallel int `yaml:"parallel"`
}

// MaxPushParallel bounds push.parallel; each segment in flight holds
// about two segments' worth of memory.
const MaxPushParallel = 64

// DefaultPushParallel is push.parallel when unset: the CPUs this process
// may use (GOMAXPROCS, which follows a container's CPU limit), at most 8,
// so that a large machine does not hold 64 segments in memory for a
// backlog 8 cores already drain faster than PostgreSQL writes WAL.
func DefaultPushParallel() int { return min(runtime.GOMAXPROCS(0), 8) }

// PushParallel is push.parallel with the default applied.
func (c Config) PushParallel() int {
	if c.Push.Parallel == 0 {
		return DefaultPushParallel()
	}
	return c.Push.Parallel
}

// Agent holds the restore agent's settings.
type Agent struct {
	Slot        string        `yaml:"slot"`
	Standby     string        `yaml:"standby"` // connection string of the standby it feeds
	Ahead       int           `yaml:"ahead"`   // segments kept ready beyond replay
	Parallel    int           `yaml:"parallel"`
	PollMin     time.Duration `yaml:"poll_min"`
	PollMax     time.Duration `yaml:"poll_max"`
	Heartbeat   time.Duration `yaml:"heartbeat"`
	MetricsAddr string        `yaml:"metrics_addr"`
}

// S3 holds the S3 settings.
type S3 struct {
	Endpoint     string `yaml:"endpoint"`
	Region       string `yaml:"region"`
	PathStyle    bool   `yaml:"path_style"`
	StorageClass string `yaml:"storage_class"`
	SSE          string `yaml:"sse"`
	SSEKMSKeyID  string `yaml:"sse_kms_key_id"`
	// MaxAttempts is the number of tries of every storage request, S3 or
	// filesystem, the first included (the name is kept from when only
	// S3 requests were retried).
	MaxAttempts int `yaml:"max_attempts"`
}

// DefaultTimeout is the bound on a command when no timeout is set: push,
// fetch and the other short commands must always return; the long ones
// (backup push, restore, verify, retention) are bounded per request by the
// stall timeout and the retries instead. The daemons (agent, schedule) are
// never bounded by timeout. command is the full command name, such as
// "walship backup list".
func DefaultTimeout(command string) time.Duration {
	switch strings.TrimPrefix(command, "walship ") {
	case "push", "fetch", "status", "backup list", "backup show", "backup delete",
		"slot create", "slot list", "slot advance", "slot drop":
		return 5 * time.Minute
	}
	return 0
}

// Default is the configuration before any file, environment or flag.
func Default() Config {
	return Config{Compression: "zstd", LogFormat: "text", LogLevel: "info", S3: S3{Region: "us-east-1", MaxAttempts: 5},
		Fetch:     defaultFetch(),
		Agent:     Agent{Ahead: 16, Parallel: 4, PollMin: 500 * time.Millisecond, PollMax: 30 * time.Second, Heartbeat: time.Minute},
		Retention: Retention{Grace: 10 * time.Minute},
		Backup:    Backup{Type: BackupFull},
		Schedule:  Schedule{StopTimeout: 10 * time.Minute}, StallTimeout: 30 * time.Second}
}

// Error is a bad setting; its message names the setting.
type Error struct {
	Setting string
	Msg     string
}

func (e *Error) Error() string { return fmt.Sprintf("setting %s: %s", e.Setting, e.Msg) }

// ErrInvalid is wrapped by every configuration error.
var ErrInvalid = errors.New("invalid configuration")

func (e *Error) Unwrap() error { return ErrInvalid }

// Load builds the configuration. path is the YAML file ("" for none);
// getenv reads the environment; flags applies the command line last.
func Load(path string, getenv func(string) string, flags func(*Config) error) (Config, error) {
	c := Default()
	if path != "" {
		if err := c.loadFile(path, getenv); err != nil {
			return c, err
		}
	}
	if err := c.applyEnv(getenv); err != nil {
		return c, err
	}
	if flags != nil {
		if err := flags(&c); err != nil {
			return c, err
		}
	}
	return c, c.Validate()
}

func (c *Config) loadFile(path string, getenv func(string) string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return &Error{"config", fmt.Sprintf("cannot read %s: %v", path, errors.Unwrap(err))}
	}
	// ${VAR} references are expanded from the environment, so that a
	// file can be shared while endpoints or names vary per host.
	expanded := os.Expand(string(b), func(k string) string { return getenv(k) })
	dec := yaml.NewDecoder(bytes.NewReader([]byte(expanded)))
	dec.KnownFields(true)
	if err := dec.Decode(c); err != nil && !errors.Is(err, io.EOF) {
		return &Error{"config", fmt.Sprintf("%s: %s", path, firstLine(err.Error()))}
	}
	return nil
}

func firstLine(s string) string {
	s = strings.TrimPrefix(s, "yaml: ")
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i] + " " + strings.TrimSpace(s[i+1:])
	}
	return s
}

// Env names, one per setting.
const (
	EnvConfig           = "WALSHIP_CONFIG"
	EnvArchive          = "WALSHIP_ARCHIVE"
	EnvCompression      = "WALSHIP_COMPRESSION"
	EnvCompressionLevel = "WALSHIP_COMPRESSION_LEVEL"
	EnvLogFormat        = "WALSHIP_LOG_FORMAT"
	EnvLogLevel         = "WALSHIP_LOG_LEVEL"
	EnvS3Endpoint       = "WALSHIP_S3_ENDPOINT"
	EnvS3Region         = "WALSHIP_S3_REGION"
	EnvS3PathStyle      = "WALSHIP_S3_PATH_STYLE"
	EnvS3StorageClass   = "WALSHIP_S3_STORAGE_CLASS"
	EnvS3SSE            = "WALSHIP_S3_SSE"
	EnvS3SSEKMSKeyID    = "WALSHIP_S3_SSE_KMS_KEY_ID"
	EnvS3MaxAttempts    = "WALSHIP_S3_MAX_ATTEMPTS"
	EnvSpool            = "WALSHIP_SPOOL"
	EnvTimeout          = "WALSHIP_TIMEOUT"
	EnvStallTimeout     = "WALSHIP_STALL_TIMEOUT"
	EnvPushParallel     = "WALSHIP_PUSH_PARALLEL"
	EnvBackupType       = "WALSHIP_BACKUP_TYPE"
)

func (c *Config) applyEnv(getenv func(string) string) error {
	str := func(name string, dst *string) {
		if v := getenv(name); v != "" {
			*dst = v
		}
	}
	num := func(name string, dst *int) error {
		if v := getenv(name); v != "" {
			n, err := strconv.Atoi(v)
			if err != nil {
				return &Error{name, fmt.Sprintf("%q is not a number", v)}
			}
			*dst = n
		}
		return nil
	}
	str(EnvArchive, &c.Archive)
	str(EnvCompression, &c.Compression)
	str(EnvLogFormat, &c.LogFormat)
	str(EnvLogLevel, &c.LogLevel)
	str(EnvS3Endpoint, &c.S3.Endpoint)
	str(EnvS3Region, &c.S3.Region)
	str(EnvS3StorageClass, &c.S3.StorageClass)
	str(EnvS3SSE, &c.S3.SSE)
	str(EnvS3SSEKMSKeyID, &c.S3.SSEKMSKeyID)
	str(EnvSpool, &c.Spool)
	str(EnvBackupType, &c.Backup.Type)
	if err := c.Fetch.applyEnv(getenv); err != nil {
		return err
	}
	if err := num(EnvCompressionLevel, &c.CompressionLevel); err != nil {
		return err
	}
	if err := num(EnvS3MaxAttempts, &c.S3.MaxAttempts); err != nil {
		return err
	}
	if err := num(EnvPushParallel, &c.Push.Parallel); err != nil {
		return err
	}
	if v := getenv(EnvTimeout); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			return &Error{EnvTimeout, fmt.Sprintf("%q is not a duration such as 5m", v)}
		}
		c.Timeout = &d
	}
	if v := getenv(EnvStallTimeout); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			return &Error{EnvStallTimeout, fmt.Sprintf("%q is not a duration such as 30s", v)}
		}
		c.StallTimeout = d
	}
	if v := getenv(EnvS3PathStyle); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return &Error{EnvS3PathStyle, fmt.Sprintf("%q is not true or false", v)}
		}
		c.S3.PathStyle = b
	}
	return nil
}

// CompressionSetting is the validated compression.
func (c Config) CompressionSetting() (sealed.Compression, error) {
	codec, err := sealed.ParseCodec(c.Compression)
	if err != nil {
		return sealed.Compression{}, &Error{"compression", err.Error()}
	}
	comp := sealed.Compression{Codec: codec, Level: c.CompressionLevel}
	if err := comp.Validate(); err != nil {
		return comp, &Error{"compression-level", err.Error()}
	}
	return comp, nil
}

// ArchiveURL is a parsed archive location.
type ArchiveURL struct {
	Scheme string // "file" or "s3"
	Path   string // file: absolute directory
	Bucket string // s3
	Prefix string // s3, without slashes at either end
}

// ParseArchive accepts file:///abs/dir, a plain absolute path, or
// s3://bucket/prefix. Errors never repeat a URL's user-info part.
func ParseArchive(s string) (ArchiveURL, error) {
	if strings.HasPrefix(s, "/") {
		return ArchiveURL{Scheme: "file", Path: filepath.Clean(s)}, nil
	}
	u, err := url.Parse(s)
	if err != nil {
		return ArchiveURL{}, &Error{"archive", "not a URL; want file:///dir, /dir or s3://bucket/prefix"}
	}
	if u.User != nil {
		return ArchiveURL{}, &Error{"archive", "must not contain credentials; use the AWS credential chain"}
	}
	switch u.Scheme {
	case "file":
		if u.Host != "" && u.Host != "localhost" {
			return ArchiveURL{}, &Error{"archive", "file:// URLs take no host; write file:///absolute/path"}
		}
		if !filepath.IsAbs(u.Path) {
			return ArchiveURL{}, &Error{"archive", "file:// path must be absolute"}
		}
		return ArchiveURL{Scheme: "file", Path: filepath.Clean(u.Path)}, nil
	case "s3":
		if u.Host == "" {
			return ArchiveURL{}, &Error{"archive", "s3:// URL has no bucket"}
		}
		if u.RawQuery != "" || u.Fragment != "" {
			return ArchiveURL{}, &Error{"archive", "s3:// URL takes no query or fragment; use the s3 settings"}
		}
		prefix := strings.Trim(u.Path, "/")
		for _, part := range strings.Split(prefix, "/") {
			if prefix != "" && (part == "" || part == "." || part == "..") {
				return ArchiveURL{}, &Error{"archive", "s3:// prefix has an empty, . or .. segment"}
			}
		}
		return ArchiveURL{Scheme: "s3", Bucket: u.Host, Prefix: prefix}, nil
	case "":
		return ArchiveURL{}, &Error{"archive", "relative path; want an absolute directory, file:///dir or s3://bucket/prefix"}
	}
	return ArchiveURL{}, &Error{"archive", fmt.Sprintf("unsupported scheme %q; want file or s3", u.Scheme)}
}
