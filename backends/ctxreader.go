package backends

import (
	"context"
	"io"
)

// ContextReader returns r, failing with ctx's error once ctx ends: a Read
// has no context argument, so a copy loop over a body (a fetch writing a
// file, a backend storing an upload) stops at its caller's cancellation
// or deadline between reads.
func ContextReader(ctx context.Context, r io.Reader) io.Reader {
	return &ctxReader{ctx: ctx, r: r}
}

type ctxReader struct {
	ctx context.Context //nolint:containedctx // an io.Reader can only hold its context: Read takes none
	r   io.Reader
}

func (c *ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}
