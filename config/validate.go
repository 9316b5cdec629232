package config

import (
	"fmt"
	"net/url"
	"path/filepath"
	"strings"
	"time"
)

// Validate checks every setting that has a value and returns the first
// problem as an *Error naming the setting.
func (c Config) Validate() error {
	for _, check := range []func() error{
		c.validateFormats,
		c.S3.validateRequests,
		c.validateTimeouts,
		c.Fetch.validate,
		c.validateLocal,
		c.Agent.validate,
		c.Schedule.validate,
		c.Retention.validate,
		c.Backup.validate,
		c.S3.validateEndpoint,
	} {
		if err := check(); err != nil {
			return err
		}
	}
	return nil
}

// validateFormats checks the archive URL, the compression and the log
// settings.
func (c Config) validateFormats() error {
	if c.Archive != "" {
		if _, err := ParseArchive(c.Archive); err != nil {
			return err
		}
	}
	if _, err := c.CompressionSetting(); err != nil {
		return err
	}
	switch c.LogFormat {
	case "text", "json":
	default:
		return &Error{"log-format", fmt.Sprintf("%q: want text or json", c.LogFormat)}
	}
	switch strings.ToLower(c.LogLevel) {
	case "debug", "info", "warn", "error":
	default:
		return &Error{"log-level", fmt.Sprintf("%q: want debug, info, warn or error", c.LogLevel)}
	}
	return nil
}

// validateRequests checks the server-side encryption and the number of
// tries of a request.
func (s S3) validateRequests() error {
	switch s.SSE {
	case "", "AES256", "aws:kms":
	default:
		return &Error{"s3.sse", fmt.Sprintf("%q: want AES256 or aws:kms", s.SSE)}
	}
	if s.SSEKMSKeyID != "" && s.SSE != "aws:kms" {
		return &Error{"s3.sse_kms_key_id", "needs s3.sse: aws:kms"}
	}
	if s.MaxAttempts < 1 || s.MaxAttempts > 20 {
		return &Error{"s3.max_attempts", fmt.Sprintf("%d: want 1..20", s.MaxAttempts)}
	}
	return nil
}

// validateEndpoint checks that an endpoint, if set, is an http(s) URL
// without credentials.
func (s S3) validateEndpoint() error {
	if s.Endpoint == "" {
		return nil
	}
	u, err := url.Parse(s.Endpoint)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return &Error{"s3.endpoint", "want an http:// or https:// URL"}
	}
	if u.User != nil {
		return &Error{"s3.endpoint", "must not contain credentials; use the AWS credential chain"}
	}
	return nil
}

// validateTimeouts checks the command and stall timeouts.
func (c Config) validateTimeouts() error {
	if c.Timeout != nil && *c.Timeout < 0 {
		return &Error{"timeout", fmt.Sprintf("%s: want 0 (no bound) or more", *c.Timeout)}
	}
	if c.StallTimeout < 100*time.Millisecond || c.StallTimeout > time.Hour {
		return &Error{"stall_timeout", fmt.Sprintf("%s: want 100ms..1h", c.StallTimeout)}
	}
	return nil
}

// validateLocal checks the spool directory and push's parallelism.
func (c Config) validateLocal() error {
	if c.Spool != "" && !filepath.IsAbs(c.Spool) {
		return &Error{"spool", fmt.Sprintf("%q: want an absolute directory", c.Spool)}
	}
	if p := c.Push.Parallel; p < 0 || p > MaxPushParallel {
		return &Error{"push.parallel", fmt.Sprintf("%d: want 1..%d segments, or 0 for the default", p, MaxPushParallel)}
	}
	return nil
}

// validate checks the agent's look-ahead, parallelism and intervals.
func (a Agent) validate() error {
	switch {
	case a.Ahead < 1 || a.Ahead > 4096:
		return &Error{"agent.ahead", fmt.Sprintf("%d: want 1..4096 segments", a.Ahead)}
	case a.Parallel < 1 || a.Parallel > 64:
		return &Error{"agent.parallel", fmt.Sprintf("%d: want 1..64", a.Parallel)}
	case a.PollMin < 10*time.Millisecond:
		return &Error{"agent.poll_min", fmt.Sprintf("%s: want at least 10ms", a.PollMin)}
	case a.PollMax < a.PollMin:
		return &Error{"agent.poll_max", fmt.Sprintf("%s: want at least poll_min (%s)", a.PollMax, a.PollMin)}
	case a.Heartbeat < 100*time.Millisecond:
		return &Error{"agent.heartbeat", fmt.Sprintf("%s: want at least 100ms", a.Heartbeat)}
	}
	return nil
}

// validate checks every job and the stop timeout.
func (s Schedule) validate() error {
	for i, j := range s.Jobs {
		if err := j.validate(fmt.Sprintf("schedule.jobs[%d]", i)); err != nil {
			return err
		}
	}
	if s.StopTimeout < 0 {
		return &Error{"schedule.stop_timeout", fmt.Sprintf("%s: want 0 or more", s.StopTimeout)}
	}
	return nil
}

// validate checks the job; where names it in the error.
func (j Job) validate(where string) error {
	switch {
	case j.Name == "":
		return &Error{where + ".name", "required"}
	case j.Cron == "":
		return &Error{where + ".cron", "required"}
	case j.Kind != "backup" && j.Kind != "retention" && j.Kind != "verify" && j.Kind != "drill":
		return &Error{where + ".kind", fmt.Sprintf("%q: want backup, retention, verify or drill", j.Kind)}
	case j.Kind == "drill" && (j.PGBin == "" || !filepath.IsAbs(j.Scratch)):
		return &Error{where, "a drill needs pg_bin and an absolute scratch directory"}
	case j.Checkpoint != "" && j.Checkpoint != "fast" && j.Checkpoint != "spread":
		return &Error{where + ".checkpoint", "want fast or spread"}
	case j.Timeout < 0:
		return &Error{where + ".timeout", fmt.Sprintf("%s: want 0 (none) or more", j.Timeout)}
	case j.Type != "" && j.Kind != "backup":
		return &Error{where + ".type", "only a backup job has a type"}
	case j.Type != "" && j.Type != BackupFull && j.Type != BackupIncremental:
		return &Error{where + ".type", fmt.Sprintf("%q: want full or incremental", j.Type)}
	}
	return nil
}

// validate checks the backup type.
func (b Backup) validate() error {
	if b.Type != BackupFull && b.Type != BackupIncremental {
		return &Error{"backup.type", fmt.Sprintf("%q: want full or incremental", b.Type)}
	}
	return nil
}

// validate checks that no retention bound is negative.
func (r Retention) validate() error {
	if r.KeepLast < 0 || r.KeepWithin < 0 || r.Grace < 0 {
		return &Error{"retention", "keep_last, keep_within and grace must not be negative"}
	}
	return nil
}
