//go:build !unix

package mapfile

import (
	"errors"
	"os"
)

func mapFile(*os.File, int64) ([]byte, func(), error) {
	return nil, nil, errors.New("no mapping on this system")
}
