package archive

import (
	"testing"

	"github.com/walship/walship/segment"
)

// Every builder's key parses back to what built it, and near misses are
// KeyOther, never a kind a reader would act on.
func TestParseKeyRoundTrip(t *testing.T) {
	seg, _ := segment.ParseFile("0000000A000000010000002F")
	partial, _ := segment.ParseFile("0000000A000000010000002F.partial")
	label, _ := segment.ParseFile("0000000A000000010000002F.00000028.backup")
	hist, _ := segment.ParseFile("0000000A.history")
	for _, tc := range []struct {
		key  string
		want ParsedKey
	}{
		{Key(seg), ParsedKey{Kind: KeyWAL, File: seg, TLI: 10}},
		{Key(partial), ParsedKey{Kind: KeyWAL, File: partial, TLI: 10}},
		{Key(label), ParsedKey{Kind: KeyWAL, File: label, TLI: 10}},
		{SegmentKey(segment.Name{TLI: 10, SegNo: 0x12F}, 16<<20), ParsedKey{Kind: KeyWAL, File: seg, TLI: 10}},
		{Key(hist), ParsedKey{Kind: KeyHistory, File: hist, TLI: 10}},
		{HeadKey(10), ParsedKey{Kind: KeyHead, TLI: 10}},
		{GapKey(10, seg.String()), ParsedKey{Kind: KeyGap, TLI: 10, From: seg.String()}},
		{SlotKey("dr_1"), ParsedKey{Kind: KeySlot, Slot: "dr_1"}},
		{BackupLeaseKey("20261126T071033Z"), ParsedKey{Kind: KeyBackup, BackupID: "20261126T071033Z", Object: LeaseName}},
		{IdentityKey, ParsedKey{Kind: KeyIdentity}},
	} {
		if got := ParseKey(tc.key); got != tc.want {
			t.Errorf("%s: %+v, want %+v", tc.key, got, tc.want)
		}
	}
	for _, key := range []string{
		"wal/0000000B/0000000A000000010000002F", // directory disagrees with the name
		"wal/0000000a/0000000A000000010000002F", // lower case
		"wal/0000000A/0000000A.history",
		"wal/0000000A/junk", "wal/x", "history/junk", "history/0000000A000000010000002F",
		"heads/0000000a.json", "heads/0000000A", "heads/A.json",
		"gaps/0000000A/0000000B000000010000002F.json", "gaps/0000000A/x.json",
		"slots/UPPER.json", "slots/dr", "backups/x", "backups//manifest.json", "backups/id/a/b",
		"probes/x", "", "/", "identity.json.tmp",
	} {
		if got := ParseKey(key); got.Kind != KeyOther {
			t.Errorf("%q parsed as %+v, want KeyOther", key, got)
		}
	}
}

func FuzzParseKey(f *testing.F) {
	f.Add("wal/00000001/000000010000000000000002")
	f.Add("gaps/00000001/000000010000000000000002.json")
	f.Fuzz(func(t *testing.T, key string) {
		p := ParseKey(key)
		if p.Kind == KeyWAL && Key(p.File) != key {
			t.Fatalf("%q parsed as WAL %s, which is stored at %s", key, p.File, Key(p.File))
		}
		if p.Kind == KeyHistory && Key(p.File) != key {
			t.Fatalf("%q parsed as history %s, stored at %s", key, p.File, Key(p.File))
		}
	})
}
