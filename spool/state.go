// Package spool is the protocol between whatever downloads segments ahead
// of PostgreSQL (the DR agent, the prefetcher a fetch starts) and the
// fetch that hands them over: the spool directory's ownership rules, its
// lock, the published state fetch checks files and "absent" answers
// against, the checks a file must pass before it is taken, and the take
// itself (a rename). It knows nothing of the archive beyond its identity.
package spool

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/walship/walship/archive"
)

// The spool's own files. They start with a dot, so none is ever taken for
// WAL.
const (
	StateFile = ".walship-agent.json"
	// LockFile is held with flock(LOCK_EX) by the running agent for
	// as long as it runs; the kernel drops the lock when the process dies,
	// however it dies. fetch tests it without blocking to know whether the
	// poll published in StateFile has a live agent behind it.
	LockFile = ".walship-agent.lock"
	// NoteFile is written by every fetch from a prefetcher's spool: what
	// PostgreSQL asked for last and whether it got it. The prefetcher
	// follows it, and a note that does not change for the idle time stops
	// it.
	NoteFile = ".walship-prefetch-note.json"
	// LogFile is where a detached prefetcher logs.
	LogFile = ".walship-prefetch.log"
)

// trustPolls is how many poll intervals a published poll is trusted for:
// the next poll is due after one interval, and a second one of slack covers
// a slow poll. An agent that has not polled for two intervals is hung or
// stuck (SIGSTOP, a storage call that never returns), and its answer is
// not used.
const trustPolls = 2

// ErrOwner is wrapped when the spool is not the agent's own: another user
// owns it, or others may write into it.
var ErrOwner = errors.New("spool refused")

// State is published in the spool: where to resume, the archive's
// identity (which fetch checks spool files against), and what the last poll
// saw, which fetch uses to answer a standby's "is the next segment there
// yet?" without asking the archive.
//
// The poll (Head, NoHistory, Polled, Interval) is trusted only while the
// agent that wrote it is alive (it holds LockFile) and the poll is
// younger than trustPolls intervals. A clean stop withdraws it.
type State struct {
	Timeline    uint32           `json:"timeline"`
	Next        string           `json:"next"`
	SegmentSize uint64           `json:"segment_size,omitempty"`
	SystemID    uint64           `json:"system_identifier,omitempty"`
	Head        string           `json:"head,omitempty"`       // newest segment archived on Timeline
	NoHistory   uint32           `json:"no_history,omitempty"` // this timeline's history file was absent
	Polled      time.Time        `json:"polled"`               // when Head and NoHistory were true
	Interval    archive.Duration `json:"interval,omitempty"`   // the wait until the poll after that one
	// Archive names the archive a prefetcher (prefetch.go) downloads
	// from; fetch takes from a prefetcher's spool only for that archive.
	// The agent leaves it empty.
	Archive string `json:"archive,omitempty"`
}

// ReadState reads the state the agent published in spool.
func ReadState(spool string) (State, error) {
	var st State
	b, err := os.ReadFile(filepath.Join(spool, StateFile))
	if err != nil {
		return st, err
	}
	if err := json.Unmarshal(b, &st); err != nil {
		return st, fmt.Errorf("%s: %w", StateFile, err)
	}
	return st, nil
}

// Trusted reports whether the published poll may answer at now.
func (st State) Trusted(now time.Time) bool {
	if st.Head == "" || st.Interval <= 0 || now.Before(st.Polled) {
		return false
	}
	return now.Sub(st.Polled) < trustPolls*time.Duration(st.Interval)
}

// WithdrawStale removes the poll published by an agent that died (kill -9
// leaves it): it is not this agent's, which publishes its own once it has
// polled. The rest of the state, where to resume, stays.
func WithdrawStale(spool string) {
	st, err := ReadState(spool)
	if err != nil || st.Head == "" {
		return
	}
	st.Head, st.NoHistory, st.Polled, st.Interval = "", 0, time.Time{}, 0
	b, _ := json.Marshal(st)
	tmp := filepath.Join(spool, StateFile+".tmp")
	if os.WriteFile(tmp, b, 0o600) != nil || os.Rename(tmp, filepath.Join(spool, StateFile)) != nil {
		_ = os.Remove(tmp)
		_ = os.Remove(filepath.Join(spool, StateFile))
	}
}

// WriteState publishes st in spool under a temporary name, then renames it.
func WriteState(spool string, st State) error {
	b, _ := json.Marshal(st)
	tmp := filepath.Join(spool, StateFile+".tmp")
	err := os.WriteFile(tmp, b, 0o600)
	if err == nil {
		err = os.Rename(tmp, filepath.Join(spool, StateFile))
	}
	if err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("%w: spool state: %w", archive.ErrLocal, err)
	}
	return nil
}
