package archive

import (
	"errors"

	"github.com/walship/walship/backends"
	"github.com/walship/walship/sealed"
	"github.com/walship/walship/segment"
)

// Retryable is the one retry policy's answer for an operation that reads
// or writes WAL through the archive: a transport error or a checksum
// mismatch (damage in transit; a stored corruption fails again) is worth
// another try, a local problem, a wrong cluster, a bad header or an object
// that is not sealed is not.
func Retryable(err error) bool {
	if errors.Is(err, sealed.ErrChecksum) {
		return true // may be damage in transit; a stored corruption fails again
	}
	return !backends.IsPermanent(err) && !errors.Is(err, ErrLocal) &&
		!errors.Is(err, ErrWrongCluster) && !errors.Is(err, ErrNoIdentity) &&
		!errors.Is(err, segment.ErrBadHeader) && !errors.Is(err, sealed.ErrNotSealed)
}
