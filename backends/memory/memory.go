// Package memory is an in-memory Storage for unit tests. It is not a backend
// users can choose.
package memory

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/walship/walship/backends"
)

// Storage keeps objects in a map. The zero value is not usable; call New.
type Storage struct {
	mu   sync.Mutex
	objs map[string]object
	now  func() time.Time
}

type object struct {
	data []byte
	mod  time.Time
}

// New returns an empty store.
func New() *Storage { return &Storage{objs: map[string]object{}, now: time.Now} }

func (s *Storage) String() string { return "memory" }

func (s *Storage) put(ctx context.Context, key string, body io.ReadSeeker, size int64, exclusive bool) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := backends.ValidKey(key); err != nil {
		return err
	}
	if _, err := body.Seek(0, io.SeekStart); err != nil {
		return err
	}
	data, err := io.ReadAll(io.LimitReader(body, size+1))
	if err != nil {
		return fmt.Errorf("memory put %q: %w", key, err)
	}
	if int64(len(data)) != size {
		return backends.Permanent(fmt.Errorf("memory put %q: body has %d bytes, expected %d", key, len(data), size))
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.objs[key]; ok && exclusive {
		return fmt.Errorf("memory put %q: %w", key, backends.ErrExists)
	}
	s.objs[key] = object{data: data, mod: s.now()}
	return nil
}

// PutIfAbsent implements backends.Storage.
func (s *Storage) PutIfAbsent(ctx context.Context, key string, body io.ReadSeeker, size int64) error {
	return s.put(ctx, key, body, size, true)
}

// Put implements backends.Storage.
func (s *Storage) Put(ctx context.Context, key string, body io.ReadSeeker, size int64) error {
	return s.put(ctx, key, body, size, false)
}

// Get implements backends.Storage.
func (s *Storage) Get(ctx context.Context, key string) (io.ReadCloser, backends.ObjectInfo, error) {
	info, data, err := s.lookup(ctx, key)
	if err != nil {
		return nil, info, err
	}
	return io.NopCloser(bytes.NewReader(data)), info, nil
}

// Stat implements backends.Storage.
func (s *Storage) Stat(ctx context.Context, key string) (backends.ObjectInfo, error) {
	info, _, err := s.lookup(ctx, key)
	return info, err
}

func (s *Storage) lookup(ctx context.Context, key string) (backends.ObjectInfo, []byte, error) {
	if err := ctx.Err(); err != nil {
		return backends.ObjectInfo{}, nil, err
	}
	if err := backends.ValidKey(key); err != nil {
		return backends.ObjectInfo{}, nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	o, ok := s.objs[key]
	if !ok {
		return backends.ObjectInfo{}, nil, fmt.Errorf("memory get %q: %w", key, backends.ErrNotFound)
	}
	return backends.ObjectInfo{Key: key, Size: int64(len(o.data)), Modified: o.mod}, o.data, nil
}

// List implements backends.Storage.
func (s *Storage) List(ctx context.Context, prefix string, fn func(backends.ObjectInfo) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.Lock()
	var infos []backends.ObjectInfo
	for k, o := range s.objs {
		if strings.HasPrefix(k, prefix) {
			infos = append(infos, backends.ObjectInfo{Key: k, Size: int64(len(o.data)), Modified: o.mod})
		}
	}
	s.mu.Unlock()
	sort.Slice(infos, func(i, j int) bool { return infos[i].Key < infos[j].Key })
	for _, info := range infos {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := fn(info); err != nil {
			return err
		}
	}
	return nil
}

// Delete implements backends.Storage.
func (s *Storage) Delete(ctx context.Context, keys ...string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, k := range keys {
		delete(s.objs, k)
	}
	return nil
}

// Corrupt flips one byte of a stored object, for tests of integrity checks.
func (s *Storage) Corrupt(key string, offset int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	o := s.objs[key]
	d := append([]byte(nil), o.data...)
	d[offset] ^= 0xFF
	s.objs[key] = object{data: d, mod: o.mod}
}
