package main

import (
	"bytes"
	"strconv"
	"strings"
	"testing"
	"time"
)

// testBinaryStarted is set as this test binary starts.
var testBinaryStarted = time.Now()

// TestProcessMetricsAreTheProcesss: the standard series say what the
// process is: its start a little before now, resident memory and open
// files above zero, and the limit on open files this process has.
func TestProcessMetricsAreTheProcesss(t *testing.T) {
	var b bytes.Buffer
	writeProcessMetrics(&b)
	values := map[string]float64{}
	for _, line := range strings.Split(b.String(), "\n") {
		if name, v, ok := strings.Cut(line, " "); ok && !strings.HasPrefix(line, "#") {
			values[name], _ = strconv.ParseFloat(v, 64)
		}
	}
	// This test binary is the process: it started just before its package
	// variables were set (boot time has whole seconds, hence the slack).
	start := time.Unix(0, int64(values["process_start_time_seconds"]*1e9))
	if d := testBinaryStarted.Sub(start); d < -time.Second || d > 30*time.Second {
		t.Errorf("process_start_time_seconds is %v before this test binary's first moments; want a few seconds at most", d)
	}
	if values["process_resident_memory_bytes"] < 1<<20 || values["process_open_fds"] < 3 || values["process_max_fds"] != float64(fileLimit()) {
		t.Errorf("process series %v; want over 1 MiB resident, at least 3 open files, the open-files limit", values)
	}
}
