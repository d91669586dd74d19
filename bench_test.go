package main

import (
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// BenchmarkFanout makes the lookups of a cold fan-out of N events over
// real HTTP to an httptest upstream that answers each after a fixed 20 ms,
// so the floor is 20 ms whatever N. "gateway" goes through the event loader
// (cache off, bounds, retries, checks, metrics); "bare" is the reference,
// N goroutines with a plain http.Client and nothing else: its excess over
// the floor is net/http's share of the gateway's.
//
//	go test -run '^$' -bench Fanout -benchmem -count 6 .
func BenchmarkFanout(b *testing.B) {
	const delay = 20 * time.Millisecond
	overFloor := func(b *testing.B) {
		b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N)/1000-float64(delay.Milliseconds()), "ms-over-floor/op")
	}
	for _, n := range []int{1, 10, 100, 1000} {
		api := newFakeEventAPI(delay)
		api.addUser("u", n)
		srv := httptest.NewServer(api)
		ids := api.users["u"]
		b.Run(fmt.Sprintf("N=%d/gateway", n), func(b *testing.B) {
			benchLoad(b, srv.URL, "u", ids)
			overFloor(b)
		})
		b.Run(fmt.Sprintf("N=%d/bare", n), func(b *testing.B) {
			benchGetAll(b, srv.URL, ids)
			overFloor(b)
		})
		srv.Close()
	}
}

// BenchmarkMockRound is one cold round of 1,000 event lookups against the
// default mock (500 ms per lookup) running in a process of its own, over
// loopback TCP, as bench/fanout.sh measures it but without the gateway's
// HTTP front: "gateway" through the event loader wired as the gateway wires
// it (hedging on), "bare" with 1,000 goroutines and a plain http.Client.
// allocs/lookup counts this process's allocations only (the mock's are its
// own). Each iteration takes over half a second, so give it a count:
//
//	go test -run '^$' -bench MockRound -benchtime 11x -count 5 .
func BenchmarkMockRound(b *testing.B) {
	base := startProcess(b, "-mock", "MOCK_ADD_CAPACITY=0", "MOCK_FAIL_RATE=0", "MOCK_EVENT_DELAY=500ms")
	ids := make([]string, 1000)
	for i := range ids {
		ids[i] = fmt.Sprintf("bench-%d", i)
		body := fmt.Sprintf(`{"id": %q, "name": "bench", "userId": "3"}`, ids[i])
		resp, err := http.Post(base+"/addEvent", "application/json", strings.NewReader(body))
		if err != nil || resp.StatusCode != 200 {
			b.Fatalf("adding an event to the mock: %v %v", resp, err)
		}
		resp.Body.Close()
	}
	http.DefaultClient.CloseIdleConnections()
	perLookup := func(b *testing.B) {
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		b.ReportMetric(float64(ms.Mallocs-startMallocs)/float64(b.N)/float64(len(ids)), "allocs/lookup")
	}
	b.Run("gateway", func(b *testing.B) {
		startMallocs = mallocs()
		benchLoad(b, base, "3", ids)
		perLookup(b)
	})
	b.Run("bare", func(b *testing.B) {
		startMallocs = mallocs()
		benchGetAll(b, base, ids)
		perLookup(b)
	})
}

// startMallocs is the allocation count when a sub-benchmark began.
var startMallocs uint64

func mallocs() uint64 {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.Mallocs
}

// benchLoad loads ids, events of user owner, from the upstream at base
// through an event loader wired as the gateway wires it, with the cache
// off, once per iteration.
func benchLoad(b *testing.B, base, owner string, ids []string) {
	cfg := testConfig(b)
	up := testUpstream(upstreamOptions{BaseURL: base, Timeout: 5 * time.Second, MaxInflight: cfg.UpstreamMaxInflight,
		Retry: defaultRetryPolicy(), Hedge: newHedgePolicy(0, 2*time.Second)})
	defer up.client.CloseIdleConnections()
	loader := newEventLoader(loaderOptions{MaxBytes: 1 << 30, Metrics: newMetrics(), Cache: newEventCache(cacheOptions{MaxBytes: 1 << 30, Metrics: newMetrics(), Fetch: up.Event}), Limit: cfg.FanoutLimit})
	for b.Loop() {
		if events, err := loader.Load(b.Context(), owner, ids, unbounded()); err != nil || len(events) != len(ids) {
			b.Fatalf("Load = %d events, %v; want %d", len(events), err, len(ids))
		}
	}
}

// benchGetAll looks up ids from the upstream at base with one goroutine
// each and a plain http.Client, once per iteration.
func benchGetAll(b *testing.B, base string, ids []string) {
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: len(ids)}}
	defer client.CloseIdleConnections()
	for b.Loop() {
		getAll(b, client, base, ids)
	}
}

// getAll looks up every event in ids at once, one goroutine each, with
// nothing but client, and fails b unless all answer 200.
func getAll(b *testing.B, client *http.Client, base string, ids []string) {
	var wg sync.WaitGroup
	var failed atomic.Int32
	for _, id := range ids {
		wg.Go(func() {
			resp, err := client.Get(base + "/getEventById/" + id)
			if err != nil {
				failed.Add(1)
				return
			}
			if _, err := io.ReadAll(resp.Body); err != nil || resp.StatusCode != 200 {
				failed.Add(1)
			}
			resp.Body.Close()
		})
	}
	wg.Wait()
	if failed.Load() > 0 {
		b.Fatalf("%d of %d lookups failed", failed.Load(), len(ids))
	}
}

// BenchmarkWarmEventsByUser serves GET /getEventsByUserId/{id} through the
// whole handler for a user whose 1,000 events are all cached: one user
// lookup (in memory here) and the cache's work.
func BenchmarkWarmEventsByUser(b *testing.B) {
	api := newFakeEventAPI(0)
	api.addUser("u", 1000)
	g := newTestGateway(b, api, nil)
	g.get("/getEventsByUserId/u")
	req := httptest.NewRequest("GET", "/getEventsByUserId/u", nil)
	for b.Loop() {
		rec := httptest.NewRecorder()
		g.handler.ServeHTTP(rec, req)
		if rec.Code != 200 {
			b.Fatal(rec.Code)
		}
	}
}

func BenchmarkParseAddEvent(b *testing.B) {
	body := []byte(`{"name": "Launch party", "userId": 3, "details": "Rooftop, 7pm, bring a friend"}`)
	for b.Loop() {
		if _, err := parseAddEvent("application/json", body); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkCraftedRequests: the gateway's own cost (headers already parsed)
// of the costliest requests a client can craft within the header limit (a
// wrong method, and an unmatched path, each with 5,000 one-byte headers,
// about 30 KB) against an ordinary GET /health.
//
//	go test -run '^$' -bench CraftedRequests -benchmem -count 6 .
func BenchmarkCraftedRequests(b *testing.B) {
	g := newTestGateway(b, quietMock(), nil)
	manyHeaders := func(method, path string) *http.Request {
		r := httptest.NewRequest(method, path, nil)
		for i := range 5000 {
			r.Header[fmt.Sprint("H", i)] = []string{"x"}
		}
		return r
	}
	for _, c := range []struct {
		name string
		req  *http.Request
	}{
		{"health", httptest.NewRequest("GET", "/health", nil)},
		{"wrong-method-5000-headers", manyHeaders("DELETE", "/getUsers")},
		{"no-route-5000-headers", manyHeaders("GET", "/nothing/here")},
	} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				g.handler.ServeHTTP(httptest.NewRecorder(), c.req)
			}
		})
	}
}

// BenchmarkListPassThrough is one GET /getEvents through the whole gateway
// handler (middleware, request log to a discarding handler, metrics, the
// memory budget, the upstream client, ETag), over real HTTP to the mock in
// this process, one at a time (so nothing is collapsed). For a profile:
//
//	go test -run '^$' -bench ListPassThrough -benchmem -cpuprofile cpu.out .
func BenchmarkListPassThrough(b *testing.B) {
	srv := httptest.NewServer(quietMock())
	defer srv.Close()
	g := newGatewayAt(b, srv.URL, nil, nil)
	defer g.close()
	req := httptest.NewRequest("GET", "/getEvents", nil)
	for b.Loop() {
		rec := httptest.NewRecorder()
		g.handler.ServeHTTP(rec, req)
		if rec.Code != 200 {
			b.Fatalf("GET /getEvents = %d", rec.Code)
		}
	}
}

// BenchmarkAccessLine writes one request's access line to a discarding
// writer in JSON, through slog's handler ("slog", as before the line was
// written by hand) and through newLogger's ("newLogger").
func BenchmarkAccessLine(b *testing.B) {
	line := &accessLine{
		time: time.Now(), requestID: "FY6WESV6A2Y2FXJCZYPDCKVH3F", traceID: "46530a67cbca7e0cc90a362b7e7881c2",
		method: "GET", route: "GET /getEvents", path: "/getEvents", client: "127.0.0.1:40594",
		status: 200, bytes: 312, duration: 1757074,
	}
	cfg := testConfig(b)
	cfg.LogFormat = "json"
	for _, l := range []struct {
		name   string
		logger *slog.Logger
	}{
		{"slog", slog.New(slog.NewJSONHandler(io.Discard, nil))},
		{"newLogger", newLogger(io.Discard, cfg)},
	} {
		b.Run(l.name, func(b *testing.B) {
			for b.Loop() {
				logAccess(b.Context(), l.logger, line)
			}
		})
	}
}
