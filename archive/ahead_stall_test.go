package archive_test

import (
	"context"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/walship/walship/archive"
	"github.com/walship/walship/backends"
	"github.com/walship/walship/backends/memory"
)

// stalling stalls every PutIfAbsent whose key contains stall until ctx ends.
type stalling struct {
	backends.Storage
	stall string
}

func (s *stalling) PutIfAbsent(ctx context.Context, key string, body io.ReadSeeker, size int64) error {
	if strings.Contains(key, s.stall) {
		<-ctx.Done()
		return ctx.Err()
	}
	return s.Storage.PutIfAbsent(ctx, key, body, size)
}

// %p is durable in the archive within milliseconds; a look-ahead segment
// whose PUT stalls must not turn %p's success into a failure (found by
// review: the batch waited for every segment under the command's deadline).
func TestStalledAheadSegmentKeepsPercentP(t *testing.T) {
	store := &stalling{Storage: memory.New(), stall: seg(3)}
	a := archive.New(store, quiet())
	d := newWalDir(t)
	for n := 1; n <= 4; n++ {
		d.ready(seg(n), sysID, nil)
	}
	// stands in for the command's --timeout (5 minutes)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	res, err := a.PushAhead(ctx, d.path(seg(1)), opts(2))
	if _, serr := store.Stat(context.Background(), archive.Key(mustFile(t, seg(1)))); serr != nil {
		t.Fatalf("%%p not archived: %v", serr)
	}
	if err != nil {
		t.Fatalf("%%p is durable in the archive, but its push failed because a look-ahead segment stalled: %v", err)
	}
	// Segment 2 went ahead (and 4, if it was stored before the budget
	// ran out); 3 stalled and was cancelled: its own call pushes it.
	if res.Ahead < 1 || res.Ahead > 2 {
		t.Errorf("%d segments went ahead, want 1 or 2 (never the stalled one)", res.Ahead)
	}
}
