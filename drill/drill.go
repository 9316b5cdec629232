// Package drill proves a backup restores: it restores the newest backup
// into a scratch directory, starts PostgreSQL on it until recovery reaches
// consistency and promotes, runs a query, and throws the copy away.
package drill

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"time"

	"github.com/walship/walship/archive"
	"github.com/walship/walship/catalog"
	"github.com/walship/walship/restore"
)

// Options configure a restore drill.
type Options struct {
	PGBin          string        // directory holding pg_ctl
	Scratch        string        // where the scratch data directory goes (created and removed)
	RestoreCommand string        // as for Restore
	Timeout        time.Duration // for the whole drill; default 1h
	// Query asks the started server whether it is out of recovery and
	// answering; it gets a libpq connection string.
	Query func(ctx context.Context, conn string) (string, error)
	Log   *slog.Logger
}

// Result says how the drill went.
type Result struct {
	Backup   string        `json:"backup"`
	Chain    []string      `json:"chain,omitempty"` // for an incremental: the backups restored, full first
	Restore  time.Duration `json:"restore"`         // download and unpack
	Recovery time.Duration `json:"recovery"`        // start until it answered a query, promoted
	Total    time.Duration `json:"total"`
	Answer   string        `json:"answer"`
}

// Run proves the newest backup works: it restores it into a scratch
// directory with recovery_target = immediate, starts PostgreSQL on a
// scratch port (socket only, archive_mode off), waits until it has reached
// consistency, promoted and answers a query, then stops it and removes
// everything, whatever happened.
func Run(ctx context.Context, a *archive.Archive, o Options) (Result, error) {
	var res Result
	if o.Timeout <= 0 {
		o.Timeout = time.Hour
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithTimeout(ctx, o.Timeout)
	defer cancel()
	start := time.Now()
	inv, err := catalog.Load(ctx, a, catalog.Backups|catalog.Histories)
	if err != nil {
		return res, err
	}
	target := restore.Target{Kind: restore.TargetImmediate, Action: "promote", Timeline: catalog.TimelineCurrent}
	plan, err := restore.Choose(inv, target, "latest")
	if err != nil {
		return res, err
	}
	res.Backup = plan.Backup.ID
	if len(plan.Chain) > 1 {
		for _, m := range plan.Chain {
			res.Chain = append(res.Chain, m.ID)
		}
	}
	dir, tsMap := scratchDirs(o.Scratch, plan)
	defer func() {
		_ = os.RemoveAll(dir)
		_ = os.Remove(dir + ".log")
		for _, d := range tsMap {
			_ = os.RemoveAll(d)
		}
	}()
	port, err := freePort()
	if err != nil {
		return res, fmt.Errorf("%w: pick a port for the drill: %w", archive.ErrLocal, err)
	}
	// The scratch server's own settings go into walship's block with the
	// recovery settings, after them, so they override the backup's. It
	// listens on no TCP address: the port only names its socket in the
	// scratch directory, so picking it before a long restore is safe.
	settings := []restore.Setting{{Name: "port", Value: strconv.Itoa(port)}, {Name: "listen_addresses", Value: ""},
		{Name: "unix_socket_directories", Value: o.Scratch}, {Name: "hot_standby", Value: "on"}}
	err = restore.Restore(ctx, a, plan, restore.Options{PGData: dir, Target: target, RestoreCommand: o.RestoreCommand,
		TablespaceMap: tsMap, ArchiveModeOff: true, Settings: settings, Log: o.Log})
	if err != nil {
		return res, err
	}
	res.Restore = time.Since(start)
	pgctl := filepath.Join(o.PGBin, "pg_ctl")
	started := time.Now()
	if err := startServer(ctx, pgctl, dir); err != nil {
		return res, err
	}
	defer func() {
		stop := exec.Command(pgctl, "-D", dir, "-m", "immediate", "-w", "stop")
		_ = stop.Run()
	}()
	conn := fmt.Sprintf("host=%s port=%d dbname=postgres connect_timeout=5", o.Scratch, port)
	if res.Answer, err = waitAnswer(ctx, o.Query, conn); err != nil {
		return res, err
	}
	res.Recovery = time.Since(started)
	res.Total = time.Since(start)
	return res, nil
}

// scratchDirs names the drill's scratch data directory under scratch, and
// one directory beside it for each tablespace of the plan's backup.
func scratchDirs(scratch string, plan *restore.Plan) (string, map[string]string) {
	suffix := make([]byte, 4)
	_, _ = rand.Read(suffix)
	dir := filepath.Join(scratch, "walship-drill-"+plan.Backup.ID+"-"+hex.EncodeToString(suffix))
	tsMap := map[string]string{}
	for _, ar := range plan.Backup.Archives {
		if ar.Location != "" {
			tsMap[ar.Location] = dir + "-ts-" + strconv.FormatUint(uint64(ar.TablespaceOID), 10)
		}
	}
	return dir, tsMap
}

// startServer starts PostgreSQL on dir with pg_ctl, waiting at most until
// ctx's deadline.
func startServer(ctx context.Context, pgctl, dir string) error {
	secs := strconv.Itoa(int(time.Until(deadline(ctx)).Seconds()))
	if out, err := exec.CommandContext(ctx, pgctl, "-D", dir, "-l", dir+".log", "-w", "-t", secs, "start").CombinedOutput(); err != nil {
		log, _ := os.ReadFile(dir + ".log")
		return fmt.Errorf("drill: PostgreSQL did not start: %w: %s %s", err, out, tail(string(log), 2000))
	}
	return nil
}

// waitAnswer asks query until the server answers or ctx ends.
func waitAnswer(ctx context.Context, query func(context.Context, string) (string, error), conn string) (string, error) {
	for {
		ans, err := query(ctx, conn)
		if err == nil {
			return ans, nil
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("drill: the restored server never answered: %w", err)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func deadline(ctx context.Context) time.Time {
	d, _ := ctx.Deadline()
	return d
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}
