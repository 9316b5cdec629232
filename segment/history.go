package segment

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// ErrBadHistory is wrapped by every ParseHistory error: the file is not a
// timeline history PostgreSQL could have written (damaged content, not an
// unreachable archive).
var ErrBadHistory = errors.New("damaged timeline history")

// HistoryEntry is one line of a timeline history file: timeline TLI ended
// (and its child began) at SwitchLSN.
type HistoryEntry struct {
	TLI       uint32
	SwitchLSN LSN
	Reason    string
}

// ParseHistory parses a NNNNNNNN.history file as PostgreSQL writes it:
// lines of "parentTLI<tab>switchpoint<tab>reason", blank lines and '#'
// comments ignored. Timelines must increase and stay below the file's own.
func ParseHistory(tli uint32, data []byte) ([]HistoryEntry, error) {
	var out []HistoryEntry
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	line := 0
	for sc.Scan() {
		line++
		s := strings.TrimSpace(sc.Text())
		if s == "" || strings.HasPrefix(s, "#") {
			continue
		}
		fields := strings.Fields(s)
		if len(fields) < 2 {
			return nil, fmt.Errorf("%w: line %d: want timeline and switch point", ErrBadHistory, line)
		}
		t, err := strconv.ParseUint(fields[0], 10, 32)
		if err != nil || t == 0 {
			return nil, fmt.Errorf("%w: line %d: bad timeline %q", ErrBadHistory, line, fields[0])
		}
		lsn, err := ParseLSN(fields[1])
		if err != nil {
			return nil, fmt.Errorf("%w: line %d: %w", ErrBadHistory, line, err)
		}
		e := HistoryEntry{TLI: uint32(t), SwitchLSN: lsn}
		if len(fields) > 2 {
			e.Reason = strings.Join(fields[2:], " ")
		}
		if n := len(out); n > 0 && (e.TLI <= out[n-1].TLI || e.SwitchLSN < out[n-1].SwitchLSN) {
			return nil, fmt.Errorf("%w: line %d: timelines must increase", ErrBadHistory, line)
		}
		if e.TLI >= tli {
			return nil, fmt.Errorf("%w: line %d: timeline %d is not an ancestor of %d", ErrBadHistory, line, e.TLI, tli)
		}
		out = append(out, e)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadHistory, err)
	}
	if len(out) == 0 && tli > 1 {
		return nil, fmt.Errorf("%w: timeline %d names no parent", ErrBadHistory, tli)
	}
	return out, nil
}
