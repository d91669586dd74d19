package main

import (
	"bytes"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// durationBuckets are the upper bounds, in seconds, of every duration
// histogram: from a cache hit to a request deadline.
var durationBuckets = []float64{0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10}

// metrics collects what GET /metrics exposes, in the Prometheus text format,
// with no library. Every part of eventgate that counts is given one; it is
// safe for concurrent use.
type metrics struct {
	mu          sync.Mutex            // protects the maps
	requests    map[labels]uint64     // route, code; every map is written through count or observe
	reqDuration map[labels]*histogram // route
	upDuration  map[labels]*histogram // call, outcome
	cache       map[labels]uint64     // result
	transitions map[labels]uint64     // from, to
	hedges      map[labels]uint64     // call, result (sent, won)
	admission   map[labels]uint64     // decision: admitted, queued, refused
	admitWait   map[labels]*histogram // (none): how long admitted writes waited for their turn

	upstreamInflight  atomic.Int64  // upstream calls in flight
	upstreamDials     atomic.Uint64 // upstream connections opened
	foreignWithheld   atomic.Uint64 // events withheld: another user's
	clientConns       atomic.Int64  // client connections open
	clientRefused     atomic.Uint64 // client connections closed at once: over the cap, none idle
	clientIdleEvicted atomic.Uint64 // idle client connections closed to make room

	// hedgeDelays, if set, returns the current hedge delay of each call
	// kind; set once, by wire.
	hedgeDelays func() map[string]time.Duration
	// memoryPools are the memory budget's pools by name; set once, by wire.
	memoryPools map[string]*memoryPool
	// breakerState, if set, returns the breaker's state now; set once, by wire.
	breakerState func() breakerState
	// pacing, if set, returns the admission's estimate (writes per second,
	// 0 if not paced) and the writes waiting for a turn; set once, by wire.
	pacing func() (perSecond float64, waiting int)
}

// labels is a series' label values, in the order its family names them.
type labels [2]string

type histogram struct {
	counts []uint64 // per bucket, not cumulative; the last is +Inf
	sum    float64
	count  uint64
}

func newMetrics() *metrics {
	return &metrics{
		requests:    map[labels]uint64{},
		reqDuration: map[labels]*histogram{},
		upDuration:  map[labels]*histogram{},
		cache:       map[labels]uint64{},
		transitions: map[labels]uint64{},
		hedges:      map[labels]uint64{},
		admission:   map[labels]uint64{},
		admitWait:   map[labels]*histogram{},
	}
}

// count adds one to the series l of the counter family series (one of m's
// maps).
func (m *metrics) count(series map[labels]uint64, l labels) {
	m.mu.Lock()
	series[l]++
	m.mu.Unlock()
}

// observe adds d to the series l of the histogram family series.
func (m *metrics) observe(series map[labels]*histogram, l labels, d time.Duration) {
	m.mu.Lock()
	defer m.mu.Unlock()
	h := series[l]
	if h == nil {
		h = &histogram{counts: make([]uint64, len(durationBuckets)+1)}
		series[l] = h
	}
	i, _ := slices.BinarySearch(durationBuckets, d.Seconds())
	h.counts[i]++
	h.sum += d.Seconds()
	h.count++
}

// ServeHTTP writes every metric in the Prometheus text exposition format.
func (m *metrics) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var b bytes.Buffer
	m.mu.Lock()
	writeCounter(&b, "eventgate_http_requests_total", "Requests answered, by route pattern and status code.",
		[]string{"route", "code"}, m.requests)
	writeHistograms(&b, "eventgate_http_request_duration_seconds", "Time to answer a request, by route pattern.",
		[]string{"route"}, m.reqDuration)
	writeHistograms(&b, "eventgate_upstream_request_duration_seconds", "Time of one upstream call, by call and outcome.",
		[]string{"call", "outcome"}, m.upDuration)
	writeCounter(&b, "eventgate_event_cache_lookups_total", "Event lookups by result: hit, stale (served while it is fetched again), miss, or coalesced into a lookup in flight.",
		[]string{"result"}, m.cache)
	writeCounter(&b, "eventgate_breaker_transitions_total", "Circuit breaker state changes.",
		[]string{"from", "to"}, m.transitions)
	writeCounter(&b, "eventgate_upstream_hedges_total", "Hedged reads: second calls sent after the hedge delay, and those that answered first.",
		[]string{"call", "result"}, m.hedges)
	writeCounter(&b, "eventgate_admission_writes_total", "Writes by what the admission decided: admitted at once, queued for a turn, or refused (503, nothing sent).",
		[]string{"decision"}, m.admission)
	writeHistograms(&b, "eventgate_admission_wait_seconds", "How long admitted writes waited for their turn.",
		nil, m.admitWait)
	m.mu.Unlock()
	if m.pacing != nil {
		perSecond, waiting := m.pacing()
		family(&b, "eventgate_admission_estimate_writes_per_second", "gauge", "The write rate the upstream is estimated to accept; 0 before the first overload (not paced).", perSecond)
		family(&b, "eventgate_admission_waiting", "gauge", "Writes waiting for their turn.", float64(waiting))
	}
	if m.hedgeDelays != nil {
		fmt.Fprintf(&b, "# HELP eventgate_upstream_hedge_delay_seconds How long a read of each kind may run before it is hedged.\n# TYPE eventgate_upstream_hedge_delay_seconds gauge\n")
		delays := m.hedgeDelays()
		for _, call := range slices.Sorted(maps.Keys(delays)) {
			fmt.Fprintf(&b, "eventgate_upstream_hedge_delay_seconds{call=%q} %g\n", call, delays[call].Seconds())
		}
	}

	if m.breakerState != nil {
		fmt.Fprintf(&b, "# HELP eventgate_breaker_state Circuit breaker state: 1 for the current one.\n# TYPE eventgate_breaker_state gauge\n")
		now := m.breakerState()
		for _, s := range []breakerState{stateClosed, stateOpen, stateHalfOpen} {
			fmt.Fprintf(&b, "eventgate_breaker_state{state=%q} %d\n", s, boolInt(now == s))
		}
	}
	family(&b, "eventgate_upstream_inflight", "gauge", "Upstream calls in flight.", float64(m.upstreamInflight.Load()))
	family(&b, "eventgate_upstream_connections_opened_total", "counter", "Upstream TCP connections dialed.", float64(m.upstreamDials.Load()))
	family(&b, "eventgate_foreign_events_withheld_total", "counter", "Events left out of an answer because the upstream says they belong to another user.", float64(m.foreignWithheld.Load()))
	family(&b, "eventgate_client_connections", "gauge", "Client connections open.", float64(m.clientConns.Load()))
	family(&b, "eventgate_client_connections_refused_total", "counter", "Client connections closed at once: MAX_CONNECTIONS were open and none was idle.", float64(m.clientRefused.Load()))
	family(&b, "eventgate_client_connections_idle_closed_total", "counter", "Idle keep-alive client connections closed to make room for a new one at MAX_CONNECTIONS.", float64(m.clientIdleEvicted.Load()))
	if m.memoryPools != nil {
		pools := slices.Sorted(maps.Keys(m.memoryPools))
		fmt.Fprintf(&b, "# HELP eventgate_memory_budget_bytes The memory budget for requests in flight (MEMORY_BUDGET), by pool.\n# TYPE eventgate_memory_budget_bytes gauge\n")
		for _, p := range pools {
			fmt.Fprintf(&b, "eventgate_memory_budget_bytes{pool=%q} %d\n", p, m.memoryPools[p].total)
		}
		fmt.Fprintf(&b, "# HELP eventgate_memory_in_use_bytes Bytes of the memory budget held now, by pool.\n# TYPE eventgate_memory_in_use_bytes gauge\n")
		for _, p := range pools {
			fmt.Fprintf(&b, "eventgate_memory_in_use_bytes{pool=%q} %d\n", p, m.memoryPools[p].inUse())
		}
		fmt.Fprintf(&b, "# HELP eventgate_memory_refused_total Waits for the memory budget that ran out of time or were left, by pool.\n# TYPE eventgate_memory_refused_total counter\n")
		for _, p := range pools {
			fmt.Fprintf(&b, "eventgate_memory_refused_total{pool=%q} %d\n", p, m.memoryPools[p].refused.Load())
		}
	}
	v, goVersion := version()
	fmt.Fprintf(&b, "# HELP eventgate_build_info The version of eventgate serving, and the Go it was built with.\n# TYPE eventgate_build_info gauge\neventgate_build_info{version=%q,goversion=%q} 1\n", v, goVersion)
	writeProcessMetrics(&b)

	w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
	w.Write(b.Bytes())
}

func writeCounter(b *bytes.Buffer, name, help string, names []string, series map[labels]uint64) {
	fmt.Fprintf(b, "# HELP %s %s\n# TYPE %s counter\n", name, help, name)
	for _, l := range sortedLabels(series) {
		fmt.Fprintf(b, "%s{%s} %d\n", name, formatLabels(names, l), series[l])
	}
}

func writeHistograms(b *bytes.Buffer, name, help string, names []string, series map[labels]*histogram) {
	fmt.Fprintf(b, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name)
	for _, l := range sortedLabels(series) {
		h, ls := series[l], formatLabels(names, l)
		var cumulative uint64
		for i, c := range h.counts {
			cumulative += c
			le := "+Inf"
			if i < len(durationBuckets) {
				le = strconv.FormatFloat(durationBuckets[i], 'g', -1, 64)
			}
			fmt.Fprintf(b, "%s_bucket{%s} %d\n", name, strings.TrimPrefix(ls+`,le="`+le+`"`, ","), cumulative)
		}
		if ls != "" {
			ls = "{" + ls + "}"
		}
		fmt.Fprintf(b, "%s_sum%s %g\n%s_count%s %d\n", name, ls, h.sum, name, ls, h.count)
	}
}

func sortedLabels[V any](m map[labels]V) []labels {
	ls := make([]labels, 0, len(m))
	for l := range m {
		ls = append(ls, l)
	}
	slices.SortFunc(ls, func(a, b labels) int { return strings.Compare(a[0]+"\x00"+a[1], b[0]+"\x00"+b[1]) })
	return ls
}

// labelEscaper escapes a label value as the exposition format requires.
var labelEscaper = strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`)

func formatLabels(names []string, l labels) string {
	parts := make([]string, len(names))
	for i, n := range names {
		parts[i] = n + `="` + labelEscaper.Replace(l[i]) + `"`
	}
	return strings.Join(parts, ",")
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}
