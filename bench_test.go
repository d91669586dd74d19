package main

import (
	"fmt"
	"net/http/httptest"
	"testing"
	"time"
)

// BenchmarkFanout loads N events through the real HTTP client from an
// httptest upstream that answers each after a fixed 20 ms, with the cache
// off: every iteration is one cold fan-out. The floor is 20 ms whatever N;
// the excess over it is the gateway's own cost.
//
//	go test -run '^$' -bench Fanout -benchmem -count 6 .
func BenchmarkFanout(b *testing.B) {
	const delay = 20 * time.Millisecond
	for _, n := range []int{1, 10, 100, 1000} {
		b.Run(fmt.Sprintf("N=%d", n), func(b *testing.B) {
			api := newFakeEventAPI(delay)
			api.addUser("u", n)
			srv := httptest.NewServer(api)
			defer srv.Close()
			cfg := testConfig(b)
			up := newUpstream(upstreamOptions{BaseURL: srv.URL, Timeout: 5 * time.Second, MaxInflight: cfg.UpstreamMaxInflight})
			defer up.client.CloseIdleConnections()
			loader := newEventLoader(up, cfg.FanoutLimit, newEventCache(cacheOptions{Fetch: up.Event, Size: cfg.EventCacheSize}))
			ids := api.users["u"]
			for b.Loop() {
				if events, err := loader.Load(b.Context(), ids); err != nil || len(events) != n {
					b.Fatalf("Load = %d events, %v", len(events), err)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N)/1000-float64(delay.Milliseconds()), "ms-over-floor/op")
		})
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
