package main

import (
	"fmt"
	"os/exec"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"testing/synctest"
)

// TestMetricsAreValidExposition scrapes /metrics after some traffic and
// checks the rules of the text format that a scraper relies on.
func TestMetricsAreValidExposition(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := newTestGateway(t, quietMock(), nil)
		defer func(was string) { buildVersion = was }(buildVersion)
		buildVersion = "v1.2.3-test" // as -ldflags -X sets it
		g.get("/getUsers")
		g.get("/getEventsByUserId/1")
		g.get("/getEventsByUserId/1")
		g.get("/nowhere")
		g.post("/addEvent", `{"name": "m", "userId": "1"}`)
		rec := g.get("/metrics")
		if ct := rec.Header().Get("Content-Type"); !strings.HasPrefix(ct, "text/plain; version=0.0.4") {
			t.Errorf("Content-Type = %q", ct)
		}
		text := rec.Body.String()

		checkExposition(t, text)
		for _, want := range []string{
			`eventgate_http_requests_total{route="GET /getUsers",code="200"} 1`,
			`eventgate_http_requests_total{route="unmatched",code="404"} 1`,
			`eventgate_http_request_duration_seconds_count{route="GET /getEventsByUserId/{id}"} 2`,
			`eventgate_upstream_request_duration_seconds_count{call="getEventById",outcome="ok"} 2`,
			`eventgate_event_cache_lookups_total{result="hit"} 2`,
			`eventgate_event_cache_lookups_total{result="miss"} 2`,
			`eventgate_breaker_state{state="closed"} 1`,
			`eventgate_upstream_inflight 0`,
			`eventgate_admission_writes_total{decision="admitted"} 1`,
			`eventgate_admission_wait_seconds_count 1`,
			`eventgate_admission_estimate_writes_per_second 0`,
			`eventgate_admission_waiting 0`,
			fmt.Sprintf(`eventgate_build_info{version="v1.2.3-test",goversion=%q} 1`, runtime.Version()),
			"go_goroutines ", "go_threads ", "go_memstats_heap_alloc_bytes ", `go_gc_duration_seconds{quantile="0.5"} `,
			"process_cpu_seconds_total ", "process_resident_memory_bytes ", "process_open_fds ", "process_max_fds ",
		} {
			if !strings.Contains(text, want) {
				t.Errorf("/metrics lacks %q", want)
			}
		}
	})
}

// checkExposition checks the rules of the text format that a scraper
// relies on: one # TYPE per family, before its samples; well-formed sample
// lines; cumulative histogram buckets whose +Inf bucket equals _count.
func checkExposition(t *testing.T, text string) {
	t.Helper()
	types := map[string]string{}
	sample := regexp.MustCompile(`^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*",?)*\})? (\S+)$`)
	leLabel := regexp.MustCompile(`,?le="[^"]*"`)
	buckets := map[string][]float64{} // series (without le) → cumulative counts
	counts := map[string]float64{}
	for _, line := range strings.Split(strings.TrimSpace(text), "\n") {
		if rest, ok := strings.CutPrefix(line, "# TYPE "); ok {
			name, typ, _ := strings.Cut(rest, " ")
			if _, dup := types[name]; dup {
				t.Errorf("# TYPE %s appears twice", name)
			}
			types[name] = typ
			continue
		}
		if strings.HasPrefix(line, "# HELP ") {
			continue
		}
		m := sample.FindStringSubmatch(line)
		if m == nil {
			t.Errorf("not a sample line: %q", line)
			continue
		}
		value, err := strconv.ParseFloat(m[3], 64)
		if err != nil {
			t.Errorf("bad value in %q", line)
		}
		name, labels := m[1], m[2]
		family := strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(name, "_bucket"), "_sum"), "_count")
		if _, ok := types[family]; !ok {
			if _, ok := types[name]; !ok {
				t.Errorf("sample %q before its # TYPE", line)
			}
		}
		series := family + strings.TrimSuffix(leLabel.ReplaceAllString(labels, ""), "{}")
		switch {
		case strings.HasSuffix(name, "_bucket"):
			buckets[series] = append(buckets[series], value)
		case strings.HasSuffix(name, "_count") && types[family] == "histogram":
			counts[series] = value
		}
	}
	for series, b := range buckets {
		if !slices.IsSorted(b) {
			t.Errorf("%s buckets are not cumulative: %v", series, b)
		}
		if last := b[len(b)-1]; last != counts[series] {
			t.Errorf("%s: +Inf bucket %v, _count %v; want equal", series, last, counts[series])
		}
	}
}

// TestMetricsPassPromtool checks the exposition with Prometheus's own
// linter, where it is installed (apt-get install -y prometheus; .ci/run
// installs it).
func TestMetricsPassPromtool(t *testing.T) {
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Skip("promtool is not installed")
	}
	g := newTestGateway(t, quietMock(), nil)
	g.get("/getEventsByUserId/1")
	g.post("/addEvent", `{"name": "m", "userId": "1"}`)
	cmd := exec.Command(promtool, "check", "metrics")
	cmd.Stdin = g.get("/metrics").Body
	if out, err := cmd.CombinedOutput(); err != nil || len(out) > 0 {
		t.Errorf("promtool check metrics: %v\n%s", err, out)
	}
}
