package main

import (
	"math"
	"net/http"
	"net/http/httptest"
	"testing"
)

func TestMetricSetExposition(t *testing.T) {
	s := &metricSet{}
	n := 0.0
	s.gauge("walship_agent_lag_bytes", "Bytes not replayed.", func() float64 { return n })
	s.counter("walship_schedule_failures_total", "Failed runs\nof the job.", func() float64 { return 3 }, "job", "drill")
	s.counter("walship_schedule_failures_total", "Failed runs\nof the job.", func() float64 { return math.Inf(1) }, "job", `a"b\c`)
	s.gauge("walship_schedule_last_success_timestamp_seconds", "When.", func() float64 { return 1764636000.25 }, "job", "drill")
	n = 16777216 // read at scrape time, not at registration
	rec := httptest.NewRecorder()
	s.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	want := "# HELP walship_agent_lag_bytes Bytes not replayed.\n" +
		"# TYPE walship_agent_lag_bytes gauge\n" +
		"walship_agent_lag_bytes 1.6777216e+07\n" +
		"# HELP walship_schedule_failures_total Failed runs\\nof the job.\n" +
		"# TYPE walship_schedule_failures_total counter\n" +
		"walship_schedule_failures_total{job=\"drill\"} 3\n" +
		"walship_schedule_failures_total{job=\"a\\\"b\\\\c\"} +Inf\n" +
		"# HELP walship_schedule_last_success_timestamp_seconds When.\n" +
		"# TYPE walship_schedule_last_success_timestamp_seconds gauge\n" +
		"walship_schedule_last_success_timestamp_seconds{job=\"drill\"} 1.76463600025e+09\n"
	if got := rec.Body.String(); got != want {
		t.Errorf("exposition:\n%s\nwant:\n%s", got, want)
	}
	if ct := rec.Header().Get("Content-Type"); ct != "text/plain; version=0.0.4; charset=utf-8" {
		t.Errorf("Content-Type %q", ct)
	}
}
