package main

import (
	"errors"

	"github.com/walship/walship/archive"
	"github.com/walship/walship/backends"
	"github.com/walship/walship/backup"
	"github.com/walship/walship/config"
	"github.com/walship/walship/manifest"
	"github.com/walship/walship/postgres"
	"github.com/walship/walship/restore"
	"github.com/walship/walship/sealed"
	"github.com/walship/walship/segment"
)

// Exit statuses, documented in README.md. All ordinary failures stay at or
// below 125: PostgreSQL treats a higher archive_command status as fatal for
// the archiver.
const (
	exitOK = 0
	// exitAbsent: fetch only; the archive confirmed the file is not there.
	exitAbsent = 1
	// exitUsage: bad arguments, a bad setting, or a name that is not a WAL file.
	exitUsage = 2
	// exitArchive: the archive could not be reached or read or written
	// (network, permissions, missing bucket or directory, a server that
	// stalls), after retries, or the command's --timeout passed.
	exitArchive = 3
	// exitIntegrity: push refused the file (another cluster, header and
	// name disagree, truncated, or a different file already archived under
	// the name); fetch found the archived object damaged or foreign.
	exitIntegrity = 4
	// exitLocal: the local file could not be read (push) or written (fetch).
	exitLocal = 5
	// exitUnreachable: restore found no backup and WAL that reach the
	// target (before every backup, a gap, not archived yet).
	exitUnreachable = 6
	// exitPostgres: PostgreSQL could not be reached or failed the base
	// backup, or the backup's WAL did not reach the archive in time.
	exitPostgres = 7
	// exitProblems: status found problems (an expired slot, a follower
	// that must be rebuilt).
	exitProblems = 8
	// recoveryAbort is added to fetch's failure statuses during a
	// point-in-time recovery: PostgreSQL reads 1..125 as "end of archive"
	// and would finish recovery early, but stops on a status above 125.
	recoveryAbort = 128
)

type op int

const (
	opPush op = iota
	opFetch
	opBackup
	opRestore
	opAgent
	opSlot
	opStatus
)

// exitError carries the status a command ends with.
type exitError struct {
	code   int
	err    error
	logged bool
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

// exitCode maps an operation's error to its status.
func exitCode(o op, err error) int {
	switch {
	case err == nil:
		return exitOK
	case errors.Is(err, archive.ErrLeaseLost), errors.Is(err, backup.ErrLost):
		// backup push: its data or lease went from the archive while it
		// ran; a new run writes everything again.
		return exitArchive
	case errors.Is(err, config.ErrInvalid), errors.Is(err, segment.ErrBadName), errors.Is(err, backends.ErrBadKey),
		errors.Is(err, manifest.ErrBadID), errors.Is(err, postgres.ErrPassword), errors.Is(err, restore.ErrUsage),
		errors.Is(err, backup.ErrRunning), errors.Is(err, backup.ErrHasDependants), errors.Is(err, backup.ErrIncremental):
		return exitUsage
	case errors.Is(err, restore.ErrUnreachable):
		return exitUnreachable
	case errors.Is(err, postgres.ErrServer), errors.Is(err, backup.ErrIncomplete):
		return exitPostgres
	case errors.Is(err, manifest.ErrNoBackup), errors.Is(err, archive.ErrNoSlot):
		return exitAbsent
	case errors.Is(err, archive.ErrBadSlot), errors.Is(err, archive.ErrSlotExists):
		return exitUsage
	case errors.Is(err, archive.ErrLocal):
		return exitLocal
	case errors.Is(err, archive.ErrConflict), errors.Is(err, archive.ErrWrongCluster), errors.Is(err, archive.ErrDamaged),
		errors.Is(err, segment.ErrBadHistory),
		errors.Is(err, segment.ErrBadHeader), errors.Is(err, sealed.ErrChecksum), errors.Is(err, sealed.ErrNotSealed):
		return exitIntegrity
	case o == opFetch && errors.Is(err, backends.ErrNotFound) && !errors.Is(err, archive.ErrNoIdentity):
		return exitAbsent
	}
	return exitArchive
}
