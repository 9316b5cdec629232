package restore

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/walship/walship/archive"
)

// Restore owns the recovery configuration of the copy it writes.
//
// A backup carries the configuration of the server it was taken from: a
// standby's backup carries standby.signal (and perhaps recovery.signal) and
// the primary_conninfo it streamed with; a backup of a copy walship restored
// carries that restore's restore_command and recovery target. Left in
// place they make the new copy wait for WAL forever, or stop PostgreSQL with
// "multiple recovery targets specified". So restore
//
//   - removes standby.signal and recovery.signal carried in the backup and
//     writes exactly the one it means;
//   - removes from postgresql.auto.conf every earlier walship block and
//     every setting in ownedSettings, wherever it stands (ALTER SYSTEM
//     rewrites the file without comments, so a block's markers may be gone);
//   - appends one block, between markers, that sets every owned setting:
//     those this restore uses to their values, the others to their empty
//     default. PostgreSQL applies only the last occurrence of a setting, so
//     a stale copy in postgresql.conf or an included file cannot take
//     effect either; restore names such copies in a warning.
//
// ownedSettings are the settings that decide how and where a recovery
// runs and ends; everything else in the file is left as it was. The
// decisions:
//   - restore_command and every recovery_target* setting: this restore's.
//   - recovery_end_command, archive_cleanup_command: commands of the old
//     server's setup that a copy must not run (archive_cleanup_command on
//     a standby deletes files from the archive directory it names).
//   - primary_conninfo, primary_slot_name: a walship copy follows the
//     archive; streaming from the backup's primary (perhaps with a slot
//     that does not exist there) was never asked for. Add them after
//     restore to stream. Their values (a password, perhaps) are never
//     logged.
//   - recovery_min_apply_delay: a delayed standby's backup would otherwise
//     replay a point-in-time recovery hours late.
//
// Not owned: archive_mode and archive_command (--archive-mode off writes
// archive_mode = off in the block; preserve keeps the backup's), hot_standby
// and everything else; promote_trigger_file, which PostgreSQL 16 no longer
// knows, so setting it would stop a newer server.
var ownedSettings = []string{
	"restore_command", "recovery_end_command", "archive_cleanup_command",
	"primary_conninfo", "primary_slot_name", "recovery_min_apply_delay",
	"recovery_target", "recovery_target_lsn", "recovery_target_name", "recovery_target_time",
	"recovery_target_xid", "recovery_target_inclusive", "recovery_target_timeline", "recovery_target_action",
}

const (
	blockBegin  = "# BEGIN walship restore"
	blockEnd    = "# END walship restore"
	legacyBlock = "# Added by walship restore from backup" // written before the markers
	autoConf    = "postgresql.auto.conf"
)

// Setting is one line of postgresql.auto.conf.
type Setting struct {
	Name, Value string
}

// recoverySettings are the settings of walship's block, in the order
// PostgreSQL must apply them: it refuses a second recovery target kind as
// it assigns one, so the unused kinds are cleared before the used one is
// set.
func recoverySettings(o Options) []Setting {
	t := o.Target
	s := []Setting{
		{"restore_command", o.RestoreCommand}, {"recovery_end_command", ""}, {"archive_cleanup_command", ""},
		{"primary_conninfo", ""}, {"primary_slot_name", ""}, {"recovery_min_apply_delay", "0"},
	}
	var target Setting
	switch t.Kind {
	case TargetTime:
		target = Setting{"recovery_target_time", t.Time.UTC().Format("2006-01-02 15:04:05.999999-07")}
	case TargetLSN:
		target = Setting{"recovery_target_lsn", t.LSN.String()}
	case TargetXID:
		target = Setting{"recovery_target_xid", strconv.FormatUint(t.XID, 10)}
	case TargetName:
		target = Setting{"recovery_target_name", t.Name}
	case TargetImmediate:
		target = Setting{"recovery_target", "immediate"}
	}
	for _, k := range []string{"recovery_target", "recovery_target_lsn", "recovery_target_name", "recovery_target_time", "recovery_target_xid"} {
		if k != target.Name {
			s = append(s, Setting{k, ""})
		}
	}
	if target.Name != "" {
		s = append(s, target)
	}
	s = append(s, Setting{"recovery_target_inclusive", "on"}, Setting{"recovery_target_timeline", t.Timeline})
	if t.Kind != TargetEnd {
		action := t.Action
		if action == "" {
			action = "pause" // PostgreSQL's default
		}
		s = append(s, Setting{"recovery_target_action", action})
	}
	if o.ArchiveModeOff {
		s = append(s, Setting{"archive_mode", "off"})
	}
	return append(s, o.Settings...)
}

// recoveryBlock is walship's block of postgresql.auto.conf.
func recoveryBlock(backupID string, settings []Setting) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s (backup %s): the recovery settings of this copy.\n", blockBegin, backupID)
	b.WriteString("# A later walship restore of a backup of this copy replaces this block and removes these settings elsewhere.\n")
	for _, s := range settings {
		fmt.Fprintf(&b, "%s = '%s'\n", s.Name, quoteConf(s.Value))
	}
	b.WriteString(blockEnd + "\n")
	return b.String()
}

// quoteConf escapes a value for a single-quoted string in a PostgreSQL
// configuration file, as ALTER SYSTEM does: quotes and backslashes doubled.
func quoteConf(v string) string {
	v = strings.ReplaceAll(v, `\`, `\\`)
	v = strings.ReplaceAll(v, "'", "''")
	return strings.ReplaceAll(v, "\n", `\n`)
}

// settingName is the name a configuration line starts with, in lower case
// (PostgreSQL's names are case-insensitive): the setting it sets, or an
// include keyword, which no owned setting is called; "" for a comment or a
// blank line.
func settingName(line string) string {
	s := strings.TrimLeft(line, " \t")
	end := strings.IndexFunc(s, func(r rune) bool {
		return !(r == '_' || r == '.' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r >= 0x80)
	})
	if end < 0 {
		end = len(s)
	}
	if end == 0 || s[0] >= '0' && s[0] <= '9' {
		return ""
	}
	return strings.ToLower(s[:end])
}

// rewriteAutoConf removes every walship block (and the older unmarked
// one) and every owned setting from conf, and appends block. It returns the
// new file and the owned settings it removed outside walship's blocks.
// Applying it twice gives the same file as applying it once.
func rewriteAutoConf(conf []byte, block string) ([]byte, []string) {
	var out strings.Builder
	var removed []string
	lines := strings.Split(strings.TrimSuffix(string(conf), "\n"), "\n")
	if len(conf) == 0 {
		lines = nil
	}
	for i := 0; i < len(lines); i++ {
		line := lines[i]
		trimmed := strings.TrimSpace(line)
		switch {
		case strings.HasPrefix(trimmed, blockBegin):
			// Skip to the end marker. A block whose end marker was cut
			// off is not taken to run to the end of the file: only its
			// marker and owned settings go, so that nothing added after
			// it is lost.
			if end := blockEndAfter(lines, i); end > 0 {
				i = end
			}
			continue
		case strings.HasPrefix(trimmed, legacyBlock):
			// Older walship versions wrote an unmarked block: this
			// comment, then restore_command, archive_mode and targets.
			for i+1 < len(lines) && (settingName(lines[i+1]) == "archive_mode" || slices.Contains(ownedSettings, settingName(lines[i+1]))) {
				i++
			}
			continue
		}
		if name := settingName(line); slices.Contains(ownedSettings, name) {
			if !slices.Contains(removed, name) {
				removed = append(removed, name)
			}
			continue
		}
		out.WriteString(line + "\n")
	}
	kept := strings.TrimRight(out.String(), "\n")
	if kept != "" {
		kept += "\n"
	}
	return []byte(kept + block), removed
}

// blockEndAfter is the index of the end marker closing the block that
// begins at lines[begin], or -1: another begin marker or the end of the
// file first.
func blockEndAfter(lines []string, begin int) int {
	for i := begin + 1; i < len(lines); i++ {
		switch t := strings.TrimSpace(lines[i]); {
		case t == blockEnd:
			return i
		case strings.HasPrefix(t, blockBegin):
			return -1
		}
	}
	return -1
}

// strayRecoverySettings lists the owned settings postgresql.conf in the
// data directory sets (walship's block overrides them).
func strayRecoverySettings(pgdata string) []string {
	b, err := os.ReadFile(filepath.Join(pgdata, "postgresql.conf"))
	if err != nil {
		return nil
	}
	var found []string
	for l := range strings.SplitSeq(string(b), "\n") {
		if n := settingName(l); slices.Contains(ownedSettings, n) && !slices.Contains(found, n) {
			found = append(found, n)
		}
	}
	return found
}

// writeRecoveryConfig rewrites postgresql.auto.conf with walship's block
// (through a temporary file and a rename) and leaves exactly one signal
// file: recovery.signal, or standby.signal for a standby.
func writeRecoveryConfig(p *Plan, o Options) error {
	path := filepath.Join(o.PGData, autoConf)
	old, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("%w: %w", archive.ErrLocal, err)
	}
	conf, removed := rewriteAutoConf(old, recoveryBlock(p.Backup.ID, recoverySettings(o)))
	if len(removed) > 0 {
		o.Log.Info("removed recovery settings the backup carried in "+autoConf, "settings", strings.Join(removed, ","))
	}
	if stray := strayRecoverySettings(o.PGData); len(stray) > 0 {
		o.Log.Warn("postgresql.conf in the backup sets recovery settings; walship's block in "+autoConf+" overrides them",
			"settings", strings.Join(stray, ","))
	}
	tmp := path + ".walship-tmp"
	if err := os.WriteFile(tmp, conf, 0o600); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("%w: %w", archive.ErrLocal, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("%w: %w", archive.ErrLocal, err)
	}
	var carried []string
	for _, sig := range []string{"standby.signal", "recovery.signal"} {
		err := os.Remove(filepath.Join(o.PGData, sig))
		if err == nil {
			carried = append(carried, sig)
		} else if !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("%w: %w", archive.ErrLocal, err)
		}
	}
	signal := "recovery.signal"
	if o.Standby {
		signal = "standby.signal"
	}
	if len(carried) > 0 {
		o.Log.Info("removed signal files the backup carried", "files", strings.Join(carried, ","), "writing", signal)
	}
	if err := os.WriteFile(filepath.Join(o.PGData, signal), nil, 0o600); err != nil {
		return fmt.Errorf("%w: %w", archive.ErrLocal, err)
	}
	return nil
}
