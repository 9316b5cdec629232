package segment

import (
	"bufio"
	"bytes"
	"fmt"
	"strconv"
	"strings"
)

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
			return nil, fmt.Errorf("history line %d: want timeline and switch point", line)
		}
		t, err := strconv.ParseUint(fields[0], 10, 32)
		if err != nil || t == 0 {
			return nil, fmt.Errorf("history line %d: bad timeline %q", line, fields[0])
		}
		lsn, err := ParseLSN(fields[1])
		if err != nil {
			return nil, fmt.Errorf("history line %d: %w", line, err)
		}
		e := HistoryEntry{TLI: uint32(t), SwitchLSN: lsn}
		if len(fields) > 2 {
			e.Reason = strings.Join(fields[2:], " ")
		}
		if n := len(out); n > 0 && (e.TLI <= out[n-1].TLI || e.SwitchLSN < out[n-1].SwitchLSN) {
			return nil, fmt.Errorf("history line %d: timelines must increase", line)
		}
		if e.TLI >= tli {
			return nil, fmt.Errorf("history line %d: timeline %d is not an ancestor of %d", line, e.TLI, tli)
		}
		out = append(out, e)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("history: %w", err)
	}
	if len(out) == 0 && tli > 1 {
		return nil, fmt.Errorf("history of timeline %d names no parent", tli)
	}
	return out, nil
}
