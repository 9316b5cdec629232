package testenv

import (
	"bytes"
	"sync"
)

// Output keeps what a running command writes (its Stdout and Stderr) for
// a test that reads it while the command still runs: a bytes.Buffer safe
// for concurrent use.
type Output struct {
	mu sync.Mutex
	b  bytes.Buffer
}

// Write implements io.Writer.
func (o *Output) Write(p []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.b.Write(p)
}

// String is everything written so far.
func (o *Output) String() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.b.String()
}
