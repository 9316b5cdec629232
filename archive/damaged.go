package archive

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"

	"github.com/walship/walship/backends"
	"github.com/walship/walship/backends/retry"
)

// ErrDamaged is wrapped when something read from the archive is not what
// walship wrote there: unparsable records, hostile or truncated content.
// Callers map it to the "damaged" exit status (4), never to "unreachable"
// (3): retrying cannot repair it.
var ErrDamaged = errors.New("damaged archive content")

// readRecord reads the small JSON record at key into v and checks it with
// check (nil: none), retrying the whole read under the store's policy. A
// record that does not parse or check is retried too, as a sealed
// object's checksum mismatch is: over a plain connection a flipped byte
// in transit looks the same as damage at rest. Damaged on every try, it
// is ErrDamaged.
func readRecord(ctx context.Context, store backends.Storage, key string, limit int64, v any, check func() error) error {
	retryable := func(err error) bool { return errors.Is(err, ErrDamaged) || retry.Retryable(err) }
	_, err := retry.Do(ctx, store, 0, retryable, func(ctx context.Context) error {
		rc, _, err := store.Get(ctx, key)
		if err != nil {
			return err
		}
		defer rc.Close()
		b, err := io.ReadAll(io.LimitReader(rc, limit))
		if err != nil {
			return err
		}
		reflect.ValueOf(v).Elem().SetZero() // nothing of a damaged try stays
		if err := json.Unmarshal(b, v); err != nil {
			return fmt.Errorf("%w: %s: %w", ErrDamaged, key, err)
		}
		if check != nil {
			return check()
		}
		return nil
	})
	return err
}
