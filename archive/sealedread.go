package archive

import (
	"context"
	"fmt"
	"io"

	"github.com/walship/walship/backends"
	"github.com/walship/walship/sealed"
)

// ReadSealed reads and verifies a small sealed object.
func ReadSealed(ctx context.Context, store backends.Storage, key string) ([]byte, error) {
	rc, _, err := store.Get(ctx, key)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", key, err)
	}
	defer rc.Close()
	obj, err := io.ReadAll(rc)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", key, err)
	}
	raw, _, err := sealed.Unseal(obj)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", key, err)
	}
	return raw, nil
}
