package main

import (
	"bytes"
	"fmt"
	"os"
	"runtime"
	"runtime/debug"
	rtmetrics "runtime/metrics"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// The standard process_* and go_* series, under the names Prometheus's Go
// client gives them, so that dashboards and alerts made for any Go service
// work for eventgate too, with no dependency. They are read when scraped:
// from the runtime, getrusage and getrlimit, and /proc (Linux); the start
// time is when the package was initialised; a series
// that cannot be read on this system is left out.

// writeProcessMetrics appends the process_* and go_* series to b.
func writeProcessMetrics(b *bytes.Buffer) {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) == nil {
		cpu := time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
		family(b, "process_cpu_seconds_total", "counter", "Total user and system CPU time spent in seconds.", cpu.Seconds())
	}
	if vsize, rss, ok := memoryPages(); ok {
		page := float64(os.Getpagesize())
		family(b, "process_resident_memory_bytes", "gauge", "Resident memory size in bytes.", float64(rss)*page)
		family(b, "process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.", float64(vsize)*page)
	}
	if fds, err := os.ReadDir("/proc/self/fd"); err == nil {
		family(b, "process_open_fds", "gauge", "Number of open file descriptors.", float64(len(fds)))
	}
	if max := fileLimit(); max > 0 {
		family(b, "process_max_fds", "gauge", "Maximum number of open file descriptors.", float64(max))
	}
	family(b, "process_start_time_seconds", "gauge", "Start time of the process since unix epoch in seconds.", float64(processStarted.UnixNano())/1e9)

	family(b, "go_goroutines", "gauge", "Number of goroutines that currently exist.", float64(runtime.NumGoroutine()))
	threads, _ := runtime.ThreadCreateProfile(nil)
	family(b, "go_threads", "gauge", "Number of OS threads created.", float64(threads))
	samples := []rtmetrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}, {Name: "/memory/classes/total:bytes"}}
	rtmetrics.Read(samples)
	family(b, "go_memstats_heap_alloc_bytes", "gauge", "Number of heap bytes allocated and still in use.", float64(samples[0].Value.Uint64()))
	family(b, "go_memstats_sys_bytes", "gauge", "Number of bytes obtained from system.", float64(samples[1].Value.Uint64()))
	writeGCPauses(b)
	fmt.Fprintf(b, "# HELP go_info Information about the Go environment.\n# TYPE go_info gauge\ngo_info{version=%q} 1\n", runtime.Version())
}

// family writes a family of one unlabelled sample.
func family(b *bytes.Buffer, name, typ, help string, v float64) {
	fmt.Fprintf(b, "# HELP %s %s\n# TYPE %s %s\n%s %s\n", name, help, name, typ, name, strconv.FormatFloat(v, 'g', -1, 64))
}

// writeGCPauses writes go_gc_duration_seconds: a summary of the
// stop-the-world pauses of garbage collection, its quantiles over the
// recent pauses the runtime keeps.
func writeGCPauses(b *bytes.Buffer) {
	stats := debug.GCStats{PauseQuantiles: make([]time.Duration, 5)}
	debug.ReadGCStats(&stats)
	const name = "go_gc_duration_seconds"
	fmt.Fprintf(b, "# HELP %s A summary of the wall-time pause (stop-the-world) duration in garbage collection cycles.\n# TYPE %s summary\n", name, name)
	for i, q := range []string{"0", "0.25", "0.5", "0.75", "1"} {
		fmt.Fprintf(b, "%s{quantile=%q} %g\n", name, q, stats.PauseQuantiles[i].Seconds())
	}
	fmt.Fprintf(b, "%s_sum %g\n%s_count %d\n", name, stats.PauseTotal.Seconds(), name, stats.NumGC)
}

// memoryPages reads the process's virtual and resident size, in pages.
func memoryPages() (vsize, rss uint64, ok bool) {
	data, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		return 0, 0, false
	}
	f := strings.Fields(string(data))
	if len(f) < 2 {
		return 0, 0, false
	}
	vsize, err1 := strconv.ParseUint(f[0], 10, 64)
	rss, err2 := strconv.ParseUint(f[1], 10, 64)
	return vsize, rss, err1 == nil && err2 == nil
}

// processStarted is when the process started, as near as Go can see it:
// when this package was initialised, before main.
var processStarted = time.Now()

// fileLimit returns the process's limit on open files (the Go runtime
// raises the soft limit to the hard one at start), or 0 if it is unknown.
func fileLimit() uint64 {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return 0
	}
	return rl.Cur
}
