package archive

import "errors"

// ErrDamaged is wrapped when something read from the archive is not what
// walship wrote there: unparsable records, hostile or truncated content.
// Callers map it to the "damaged" exit status (4), never to "unreachable"
// (3): retrying cannot repair it.
var ErrDamaged = errors.New("damaged archive content")
