package main

import (
	"io"
	"log/slog"
	"os"
	"time"

	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"
)

// progress shows long work: a bar (bytes, total, rate, time left) when
// stderr is a terminal, otherwise one log line when a phase starts and one
// when it ends.
type progress struct {
	w     io.Writer
	tty   bool
	log   *slog.Logger
	bar   *progressbar.ProgressBar
	phase string
	total int64
	done  int64
	began time.Time
}

func newProgress(w io.Writer, log *slog.Logger) *progress {
	f, ok := w.(*os.File)
	return &progress{w: w, log: log, tty: ok && term.IsTerminal(int(f.Fd()))}
}

func (p *progress) Phase(name string, total int64) {
	p.End(nil)
	p.phase, p.total, p.done, p.began = name, total, 0, time.Now()
	if p.tty {
		limit := total
		if limit <= 0 {
			limit = -1 // unknown: a spinner
		}
		p.bar = progressbar.NewOptions64(limit,
			progressbar.OptionSetWriter(p.w), progressbar.OptionSetDescription(name),
			progressbar.OptionShowBytes(true), progressbar.OptionShowCount(),
			progressbar.OptionSetPredictTime(true), progressbar.OptionThrottle(200*time.Millisecond),
			progressbar.OptionSetWidth(30), progressbar.OptionShowElapsedTimeOnFinish(),
			progressbar.OptionOnCompletion(func() { _, _ = io.WriteString(p.w, "\n") }))
		return
	}
	p.log.Info(name+" started", "expected_bytes", total)
}

func (p *progress) Add(n int64) {
	p.done += n
	if p.bar != nil {
		if p.total > 0 && p.done > p.total {
			p.bar.ChangeMax64(p.done)
		}
		_ = p.bar.Add64(n)
	}
}

func (p *progress) End(err error) {
	if p.phase == "" {
		return
	}
	if p.bar != nil {
		if err == nil {
			_ = p.bar.Finish()
		} else {
			_ = p.bar.Exit()
			_, _ = io.WriteString(p.w, "\n")
		}
		p.bar = nil
	} else if err == nil {
		secs := time.Since(p.began).Seconds()
		p.log.Info(p.phase+" done", "bytes", p.done, "seconds", secs, "mb_per_s", float64(p.done)/1e6/max(secs, 1e-9))
	}
	p.phase = ""
}
