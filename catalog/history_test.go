package catalog

import (
	"strings"
	"testing"
)

func set(tlis ...uint32) map[uint32]bool {
	m := map[uint32]bool{}
	for _, t := range tlis {
		m[t] = true
	}
	return m
}

func TestMissingHistory(t *testing.T) {
	cases := []struct {
		name               string
		starts, have, hist map[uint32]bool
		want               []string // keys reported
	}{
		{"one timeline", set(1), set(1), set(), nil},
		{"fresh archive on timeline 2 (promoted with archiving off), a stray segment of 1", set(2), set(1, 2), set(), nil},
		{"timeline 2 with its history", set(1), set(1, 2), set(2), nil},
		{"timeline 2 without its history", set(1), set(1, 2), set(), []string{"history/00000002.history"}},
		{"a backup that crossed onto 2, no history", set(1), set(1, 2), set(), []string{"history/00000002.history"}},
		{"a slot on 1 and a backup on 2, no history", set(1, 2), set(2), set(), []string{"history/00000002.history"}},
		{"a hole in the probe chain", set(1), set(1, 3), set(3), []string{"history/00000002.history"}},
		{"history beyond the WAL counts as a timeline", set(1), set(1), set(3), []string{"history/00000002.history"}},
		{"two missing", set(1), set(1, 3), set(), []string{"history/00000002.history", "history/00000003.history"}},
		{"older timelines gone: nothing to cross", set(3), set(3), set(3, 4), nil},
		{"no backup, no slot", set(), set(1, 2), set(), nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := missingHistories(tc.starts, tc.have, tc.hist)
			if len(got) != len(tc.want) {
				t.Fatalf("got %+v, want %v", got, tc.want)
			}
			for i, p := range got {
				if p.Key != tc.want[i] || !strings.Contains(p.Detail, "walship push") {
					t.Errorf("problem %+v, want key %s", p, tc.want[i])
				}
			}
		})
	}
}
