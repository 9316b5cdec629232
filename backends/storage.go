// Package backends defines the Storage interface every archive lives on and
// the errors its implementations share. Storage knows keys and bytes, nothing
// of WAL: the layout of an archive belongs to package archive.
package backends

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"
)

var (
	// ErrNotFound is returned by Get and Stat for a key that does not exist,
	// and only then: a failed request is never reported as not found.
	ErrNotFound = errors.New("object not found")
	// ErrExists is returned by PutIfAbsent when the key already exists.
	ErrExists = errors.New("object already exists")
	// ErrStalled is wrapped when a request got no answer, or a body read
	// got no byte, within the stall timeout. It is retryable: the store
	// may answer the next try.
	ErrStalled = errors.New("storage made no progress")
)

// ObjectInfo describes one stored object.
type ObjectInfo struct {
	Key      string
	Size     int64
	Modified time.Time
}

// Storage is an archive's object store. Keys are slash-separated relative
// paths checked by ValidKey. Every method is safe for concurrent use, takes
// the context first and honours its cancellation.
type Storage interface {
	// PutIfAbsent stores size bytes read from body under key, unless key
	// already exists, in which case it returns ErrExists and leaves the
	// stored object untouched. Readers see either no object or the whole
	// object, never a part, even if the process dies mid-way. On return
	// without error the object is durable. body may be read more than
	// once (it is rewound for retries).
	PutIfAbsent(ctx context.Context, key string, body io.ReadSeeker, size int64) error
	// Put is PutIfAbsent without the check: it atomically replaces key.
	Put(ctx context.Context, key string, body io.ReadSeeker, size int64) error
	// Get opens key for reading. The caller closes the reader.
	Get(ctx context.Context, key string) (io.ReadCloser, ObjectInfo, error)
	// Stat describes key without reading it.
	Stat(ctx context.Context, key string) (ObjectInfo, error)
	// List calls fn for every key starting with prefix, in key order. A
	// listing that fails part-way returns the error; it is never an empty
	// or shortened success. An error from fn stops the listing and is
	// returned as is.
	List(ctx context.Context, prefix string, fn func(ObjectInfo) error) error
	// Delete removes keys; keys that do not exist are not an error.
	Delete(ctx context.Context, keys ...string) error
	// String names the store for logs and errors; it never contains a secret.
	String() string
}

// permanentError marks an error that retrying cannot fix (access denied, no
// such bucket, a malformed request).
type permanentError struct{ err error }

func (p permanentError) Error() string { return p.err.Error() }
func (p permanentError) Unwrap() error { return p.err }

// Permanent marks err as one that retrying will not fix. errors.Is and
// errors.As see through the mark.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return permanentError{err}
}

// IsPermanent reports whether retrying err is pointless: it was marked
// Permanent, or it is ErrNotFound, ErrExists, ErrBadKey or a context
// cancellation.
func IsPermanent(err error) bool {
	var p permanentError
	return errors.As(err, &p) || errors.Is(err, ErrNotFound) || errors.Is(err, ErrExists) ||
		errors.Is(err, ErrBadKey) || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)
}

// ErrBadKey is wrapped when a key could escape the archive or is malformed.
var ErrBadKey = errors.New("invalid object key")

// ValidKey refuses keys that are empty, absolute, contain empty, "." or ".."
// segments, backslashes or control characters. Backends call it on every key
// so that no key can name anything outside the archive.
func ValidKey(key string) error {
	if key == "" || strings.HasPrefix(key, "/") || strings.HasSuffix(key, "/") {
		return fmt.Errorf("%w: %q", ErrBadKey, key)
	}
	for _, part := range strings.Split(key, "/") {
		if part == "" || part == "." || part == ".." {
			return fmt.Errorf("%w: %q", ErrBadKey, key)
		}
	}
	for _, c := range key {
		if c < 0x20 || c == 0x7f || c == '\\' {
			return fmt.Errorf("%w: %q", ErrBadKey, key)
		}
	}
	return nil
}
