package memory_test

import (
	"testing"

	"github.com/walship/walship/backends"
	"github.com/walship/walship/backends/memory"
	"github.com/walship/walship/backends/storagetest"
)

func TestConformance(t *testing.T) {
	storagetest.Run(t, func(t *testing.T) backends.Storage { return memory.New() }, storagetest.Options{})
}
