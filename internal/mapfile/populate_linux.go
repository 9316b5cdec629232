package mapfile

import "syscall"

// populate maps every page in the one mmap call instead of one fault each.
const populate = syscall.MAP_POPULATE
