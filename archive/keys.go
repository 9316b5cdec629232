package archive

import (
	"strconv"
	"strings"

	"github.com/walship/walship/segment"
)

// KeyKind is what an archive key holds, by the layout in this package's
// doc. ParseKey is the one parser of keys; Key, SegmentKey, HeadKey, GapKey,
// SlotKey and BackupLeaseKey are their builders.
type KeyKind int

// The kinds of key.
const (
	KeyOther    KeyKind = iota // anything else (identity.json, probes/, foreign objects)
	KeyWAL                     // wal/<TLI>/<name>: a segment, .partial or .backup file
	KeyHistory                 // history/<TLI>.history
	KeyBackup                  // backups/<id>/<object>
	KeyHead                    // heads/<TLI>.json
	KeyGap                     // gaps/<TLI>/<first missing>.json
	KeySlot                    // slots/<name>.json
	KeyIdentity                // identity.json
)

// BackupsPrefix holds every base backup (package manifest describes them).
const BackupsPrefix = "backups/"

// ParsedKey is a key taken apart. Which fields are set depends on Kind:
// File for KeyWAL and KeyHistory (a KeyWAL key whose timeline directory
// disagrees with the file's name is KeyOther); TLI for KeyWAL, KeyHistory,
// KeyHead and KeyGap; From (the first missing segment) for KeyGap;
// BackupID and Object for KeyBackup; Slot for KeySlot.
type ParsedKey struct {
	Kind     KeyKind
	File     segment.File
	TLI      uint32
	From     string
	BackupID string
	Object   string
	Slot     string
}

// ParseKey says what key holds. It never fails: what it does not
// recognise is KeyOther, which readers of the archive leave alone.
func ParseKey(key string) ParsedKey {
	dir, rest, _ := strings.Cut(key, "/")
	switch dir {
	case "wal":
		tli, name, ok := strings.Cut(rest, "/")
		f, err := segment.ParseFile(name)
		if !ok || err != nil || f.Kind == segment.KindHistory || tli != hex8(f.TLI) {
			break
		}
		return ParsedKey{Kind: KeyWAL, File: f, TLI: f.TLI}
	case "history":
		if f, err := segment.ParseFile(rest); err == nil && f.Kind == segment.KindHistory {
			return ParsedKey{Kind: KeyHistory, File: f, TLI: f.TLI}
		}
	case "backups":
		id, obj, ok := strings.Cut(rest, "/")
		if ok && id != "" && obj != "" && !strings.Contains(obj, "/") {
			return ParsedKey{Kind: KeyBackup, BackupID: id, Object: obj}
		}
	case "heads":
		if tli, ok := parseTLI(strings.TrimSuffix(rest, ".json")); ok && strings.HasSuffix(rest, ".json") {
			return ParsedKey{Kind: KeyHead, TLI: tli}
		}
	case "gaps":
		t, from, ok := strings.Cut(rest, "/")
		tli, tok := parseTLI(t)
		from, jok := strings.CutSuffix(from, ".json")
		if ok && tok && jok {
			if f, err := segment.ParseFile(from); err == nil && f.Kind == segment.KindSegment && f.TLI == tli {
				return ParsedKey{Kind: KeyGap, TLI: tli, From: from}
			}
		}
	case "slots":
		if name, ok := strings.CutSuffix(rest, ".json"); ok && ValidSlotName(name) == nil {
			return ParsedKey{Kind: KeySlot, Slot: name}
		}
	case IdentityKey:
		return ParsedKey{Kind: KeyIdentity}
	}
	return ParsedKey{Kind: KeyOther}
}

// hex8 is a timeline as the layout writes it: eight upper-case hex digits.
func hex8(tli uint32) string {
	s := strings.ToUpper(strconv.FormatUint(uint64(tli), 16))
	return strings.Repeat("0", 8-len(s)) + s
}

// parseTLI reads eight upper-case hex digits.
func parseTLI(s string) (uint32, bool) {
	if len(s) != 8 || strings.ToUpper(s) != s {
		return 0, false
	}
	n, err := strconv.ParseUint(s, 16, 32)
	return uint32(n), err == nil
}
