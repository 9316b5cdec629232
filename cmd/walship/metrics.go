package main

import (
	"bytes"
	"math"
	"net/http"
	"strconv"
	"strings"
)

// metricSet is the handful of numbers walship's daemons (agent, schedule)
// serve on /metrics, in the Prometheus text exposition format 0.0.4. Each
// value is read from its function at scrape time. It replaces the
// Prometheus client library, whose package initialisation (default
// registry, process collector, protobuf descriptors) every walship process
// paid, push and fetch included, for the two commands that serve metrics.
type metricSet struct {
	metrics []metric
}

type metric struct {
	name   string // full name: walship_<subsystem>_<name>
	help   string
	kind   string // gauge or counter
	labels string // rendered {k="v",...}, or empty
	value  func() float64
}

// add registers a metric; labels are pairs of name and value.
func (s *metricSet) add(kind, name, help string, value func() float64, labels ...string) {
	var l strings.Builder
	for i := 0; i+1 < len(labels); i += 2 {
		if i == 0 {
			l.WriteByte('{')
		} else {
			l.WriteByte(',')
		}
		l.WriteString(labels[i] + `="` + escapeLabel(labels[i+1]) + `"`)
	}
	if l.Len() > 0 {
		l.WriteByte('}')
	}
	s.metrics = append(s.metrics, metric{name: name, help: escapeHelp(help), kind: kind, labels: l.String(), value: value})
}

func (s *metricSet) gauge(name, help string, value func() float64, labels ...string) {
	s.add("gauge", name, help, value, labels...)
}

func (s *metricSet) counter(name, help string, value func() float64, labels ...string) {
	s.add("counter", name, help, value, labels...)
}

// ServeHTTP writes every metric, families in name order of first
// registration, each with its HELP and TYPE once.
func (s *metricSet) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	var b bytes.Buffer
	done := make(map[string]bool, len(s.metrics))
	for i, m := range s.metrics {
		if done[m.name] {
			continue
		}
		done[m.name] = true
		b.WriteString("# HELP " + m.name + " " + m.help + "\n# TYPE " + m.name + " " + m.kind + "\n")
		for _, o := range s.metrics[i:] {
			if o.name == m.name {
				b.WriteString(o.name + o.labels + " ")
				b.WriteString(formatValue(o.value()))
				b.WriteByte('\n')
			}
		}
	}
	w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
	_, _ = w.Write(b.Bytes())
}

func formatValue(v float64) string {
	switch {
	case math.IsNaN(v):
		return "NaN"
	case math.IsInf(v, 1):
		return "+Inf"
	case math.IsInf(v, -1):
		return "-Inf"
	}
	return strconv.FormatFloat(v, 'g', -1, 64)
}

// escapeLabel and escapeHelp escape as the exposition format wants
// (built per call: they run at registration only).
func escapeLabel(s string) string {
	return strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`).Replace(s)
}

func escapeHelp(s string) string { return strings.NewReplacer(`\`, `\\`, "\n", `\n`).Replace(s) }
