package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"
)

// fakeEventAPI is an upstream whose users and event answers a test sets
// freely: lists with duplicates or unknown ids, failing events, delays.
type fakeEventAPI struct {
	delay   time.Duration       // before every event answer
	users   map[string][]string // user id → event ids
	failing map[string]int      // event id → status it answers with, at once

	mu        sync.Mutex
	calls     map[string]int // event id → lookups received
	inflight  int
	peak      int   // most event lookups in flight at once
	cancelled int64 // event lookups whose caller gave up
}

func newFakeEventAPI(delay time.Duration) *fakeEventAPI {
	return &fakeEventAPI{delay: delay, users: map[string][]string{}, failing: map[string]int{}, calls: map[string]int{}}
}

// addUser gives user id the events e0 … e(n-1).
func (f *fakeEventAPI) addUser(id string, n int) {
	for i := range n {
		f.users[id] = append(f.users[id], fmt.Sprintf("e%d", i))
	}
}

func (f *fakeEventAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if strings.HasPrefix(r.URL.Path, "/getUserById/") {
		events, ok := f.users[r.URL.Path[len("/getUserById/"):]]
		if !ok {
			http.Error(w, "{}", 404)
			return
		}
		json.NewEncoder(w).Encode(map[string]any{"events": events})
		return
	}
	id = r.URL.Path[len("/getEventById/"):]
	f.mu.Lock()
	f.calls[id]++
	f.inflight++
	f.peak = max(f.peak, f.inflight)
	status := f.failing[id]
	f.mu.Unlock()
	defer func() {
		f.mu.Lock()
		f.inflight--
		f.mu.Unlock()
	}()
	if status != 0 {
		w.WriteHeader(status)
		return
	}
	select {
	case <-time.After(f.delay):
	case <-r.Context().Done():
		atomic.AddInt64(&f.cancelled, 1)
		return
	}
	if id == "gone" {
		http.Error(w, "{}", 404)
		return
	}
	fmt.Fprintf(w, `{"id": %q, "userId": %q}`, id, f.owner(id))
}

// owner returns the user that lists event id first, as the upstream's
// events say of themselves.
func (f *fakeEventAPI) owner(id string) string {
	for user, ids := range f.users {
		if slices.Contains(ids, id) {
			return user
		}
	}
	return ""
}

func (f *fakeEventAPI) lookups() (total, peak int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, n := range f.calls {
		total += n
	}
	return total, f.peak
}

// eventIDs decodes a response's events and returns their ids.
func eventIDs(t *testing.T, rec *httptest.ResponseRecorder) []string {
	t.Helper()
	if rec.Code != 200 {
		t.Fatalf("status %d %q; want 200", rec.Code, rec.Body)
	}
	var ids []string
	for _, e := range decodeEvents(t, rec.Body) {
		ids = append(ids, e.ID)
	}
	return ids
}

// TestFanoutKeepsOrderListsDuplicatesOnceAndSkipsGoneEvents: an event is an
// entity, so a list naming it twice is answered with it once, at its first
// place, and it is fetched once.
func TestFanoutKeepsOrderListsDuplicatesOnceAndSkipsGoneEvents(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		api := newFakeEventAPI(500 * time.Millisecond)
		api.users["u"] = []string{"e3", "e1", "gone", "e3", "e2"}
		g := newTestGateway(t, api, nil)
		got := strings.Join(eventIDs(t, g.get("/getEventsByUserId/u")), ",")
		if got != "e3,e1,e2" {
			t.Errorf("events = %s; want e3,e1,e2 (the repeat and the gone one left out)", got)
		}
		if api.calls["e3"] != 1 || api.calls["gone"] != 1 {
			t.Errorf("lookups %v; want each id once", api.calls)
		}
	})
}

// TestFanoutTakesOneRound checks the latency floor: however many events a
// user has (up to FANOUT_LIMIT), their lookups run in one parallel round.
func TestFanoutTakesOneRound(t *testing.T) {
	for _, n := range []int{1, 10, 100, 1000} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				api := newFakeEventAPI(500 * time.Millisecond)
				api.addUser("u", n)
				g := newTestGateway(t, api, nil)
				start := time.Now()
				if ids := eventIDs(t, g.get("/getEventsByUserId/u")); len(ids) != n {
					t.Errorf("%d events; want %d", len(ids), n)
				}
				if took := time.Since(start); took != 500*time.Millisecond {
					t.Errorf("%d events took %v; want one round, 500ms", n, took)
				}
			})
		})
	}
}

func TestFanoutIsBoundedPerRequestAndPerProcess(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		api := newFakeEventAPI(500 * time.Millisecond)
		api.addUser("a", 100)
		for i := range 100 { // other ids: the same ones would be coalesced
			api.users["b"] = append(api.users["b"], fmt.Sprintf("f%d", i))
		}
		g := newTestGateway(t, api, func(c *config) {
			c.FanoutLimit, c.UpstreamMaxInflight, c.EventCacheTTL = 10, 15, 0
		})
		start := time.Now()
		eventIDs(t, g.get("/getEventsByUserId/a"))
		if took := time.Since(start); took != 5*time.Second {
			t.Errorf("100 events with FANOUT_LIMIT=10 took %v; want 10 rounds, 5s", took)
		}
		if _, peak := api.lookups(); peak != 10 {
			t.Errorf("peak lookups in flight = %d; want FANOUT_LIMIT, 10", peak)
		}

		api.peak = 0
		var wg sync.WaitGroup
		for _, user := range []string{"a", "b"} {
			wg.Go(func() { g.get("/getEventsByUserId/" + user) })
		}
		wg.Wait()
		if _, peak := api.lookups(); peak != 15 {
			t.Errorf("peak lookups in flight for two requests = %d; want UPSTREAM_MAX_INFLIGHT, 15", peak)
		}
	})
}

// TestHugeRequestDoesNotStarveSmallOnes runs a request for 5,000 events and,
// while it runs, one for a single event: the small one takes one round.
func TestHugeRequestDoesNotStarveSmallOnes(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		api := newFakeEventAPI(500 * time.Millisecond)
		api.addUser("huge", 5000)
		api.users["small"] = []string{"only"}
		g := newTestGateway(t, api, nil)

		hugeDone := make(chan time.Duration)
		start := time.Now()
		go func() {
			eventIDs(t, g.get("/getEventsByUserId/huge"))
			hugeDone <- time.Since(start)
		}()
		time.Sleep(100 * time.Millisecond)
		smallStart := time.Now()
		eventIDs(t, g.get("/getEventsByUserId/small"))
		if took := time.Since(smallStart); took != 500*time.Millisecond {
			t.Errorf("small request took %v while a huge one ran; want one round, 500ms", took)
		}
		if took := <-hugeDone; took != time.Second {
			t.Errorf("5,000 events took %v; want 2 rounds of FANOUT_LIMIT=2500, 1s", took)
		}
	})
}

// TestClientGoingAwayCancelsEveryLookup checks that when the client leaves,
// the upstream sees every outstanding lookup cancelled and nothing of the
// request keeps running (synctest fails the test if a goroutine is left).
func TestClientGoingAwayCancelsEveryLookup(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		api := newFakeEventAPI(500 * time.Millisecond)
		api.addUser("u", 200)
		g := newTestGateway(t, api, nil)
		ctx, cancel := context.WithCancel(context.Background())
		req := httptest.NewRequestWithContext(ctx, "GET", "/getEventsByUserId/u", nil)
		done := make(chan *httptest.ResponseRecorder)
		go func() { done <- g.serve(req) }()
		time.Sleep(100 * time.Millisecond)
		cancel()
		rec := <-done
		synctest.Wait()
		if n := atomic.LoadInt64(&api.cancelled); n != 200 {
			t.Errorf("upstream saw %d lookups cancelled; want all 200", n)
		}
		if rec.Code != statusClientClosed {
			t.Errorf("status logged %d; want %d", rec.Code, statusClientClosed)
		}
		if n := len(g.loaderFlights()); n != 0 {
			t.Errorf("%d lookups still registered after the client left", n)
		}
	})
}

func TestRequestDeadlineEndsTheFanoutWith504(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		api := newFakeEventAPI(time.Minute)
		api.addUser("u", 50)
		g := newTestGateway(t, api, func(c *config) { c.RequestTimeout, c.UpstreamTimeout = time.Second, 5*time.Second })
		start := time.Now()
		rec := g.get("/getEventsByUserId/u")
		if took := time.Since(start); rec.Code != 504 || took != time.Second {
			t.Errorf("= %d after %v; want 504 after REQUEST_TIMEOUT, 1s", rec.Code, took)
		}
		synctest.Wait()
		if n := atomic.LoadInt64(&api.cancelled); n != 50 {
			t.Errorf("upstream saw %d lookups cancelled; want 50", n)
		}
	})
}

// TestOneFailingLookupFailsFastAndCancelsTheRest checks that an event
// answering 500 fails the request at once with 502, without waiting for
// the other lookups, which are cancelled.
func TestOneFailingLookupFailsFastAndCancelsTheRest(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		api := newFakeEventAPI(500 * time.Millisecond)
		api.addUser("u", 20)
		api.failing["e7"] = 500
		g := newTestGateway(t, api, nil)
		start := time.Now()
		rec := g.get("/getEventsByUserId/u")
		if took := time.Since(start); rec.Code != 502 || took != 0 {
			t.Errorf("= %d after %v; want 502 at once", rec.Code, took)
		}
		synctest.Wait()
		started, _ := api.lookups()
		if n := atomic.LoadInt64(&api.cancelled); n != int64(started-1) || started > 20 {
			t.Errorf("upstream saw %d of %d lookups cancelled; want every one but the failed one", n, started)
		}
	})
}

func TestEventCacheServesRepeatsRefreshesAndExpires(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		api := newFakeEventAPI(500 * time.Millisecond)
		api.addUser("u", 30)
		g := newTestGateway(t, api, nil) // EVENT_CACHE_TTL=60s
		eventIDs(t, g.get("/getEventsByUserId/u"))
		start := time.Now()
		if ids := eventIDs(t, g.get("/getEventsByUserId/u")); len(ids) != 30 {
			t.Fatalf("warm request: %d events; want 30", len(ids))
		}
		if took := time.Since(start); took != 0 {
			t.Errorf("warm request took %v; want no event round", took)
		}
		if n, _ := api.lookups(); n != 30 {
			t.Errorf("%d event lookups after a repeat; want 30, the repeat served from cache", n)
		}
		api.users["u"] = append(api.users["u"], "new") // the user lookup is never cached
		if ids := eventIDs(t, g.get("/getEventsByUserId/u")); len(ids) != 31 {
			t.Errorf("after the user gained an event: %d events; want 31", len(ids))
		}

		// Past the TTL the cached events are stale: served at once while
		// they are fetched again in the background.
		time.Sleep(61 * time.Second)
		start = time.Now()
		if ids := eventIDs(t, g.get("/getEventsByUserId/u")); len(ids) != 31 {
			t.Errorf("stale request: %d events; want 31", len(ids))
		}
		if took := time.Since(start); took != 0 {
			t.Errorf("stale request took %v; want no event round", took)
		}
		eventIDs(t, g.get("/getEventsByUserId/u")) // while the refresh runs: no second one
		time.Sleep(time.Second)
		synctest.Wait()
		if n, _ := api.lookups(); n != 31+31 {
			t.Errorf("%d event lookups after the TTL; want 62, all 31 refreshed once", n)
		}
		if text := g.get("/metrics").Body.String(); !strings.Contains(text, `eventgate_event_cache_lookups_total{result="stale"} 62`) {
			t.Errorf("/metrics does not count 62 stale lookups (two requests of 31):\n%s", text)
		}

		// Unasked for two TTLs, they are gone: the next request waits.
		time.Sleep(121 * time.Second)
		start = time.Now()
		eventIDs(t, g.get("/getEventsByUserId/u"))
		if took := time.Since(start); took != 500*time.Millisecond {
			t.Errorf("request after 2×TTL took %v; want one event round, 500ms", took)
		}
		if n, _ := api.lookups(); n != 31+31+31 {
			t.Errorf("%d event lookups after 2×TTL; want 93", n)
		}
	})
}

// TestStaleEventRefreshThatFails keeps serving the copy it has when the
// refresh meets an upstream fault, and drops it when the upstream says the
// event is gone.
func TestStaleEventRefreshThatFails(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		api := newFakeEventAPI(500 * time.Millisecond)
		api.users["u"] = []string{"broken", "deleted", "fine"}
		g := newTestGateway(t, api, nil) // EVENT_CACHE_TTL=60s
		eventIDs(t, g.get("/getEventsByUserId/u"))

		time.Sleep(61 * time.Second)
		api.mu.Lock()
		api.failing["broken"] = http.StatusInternalServerError
		api.failing["deleted"] = http.StatusNotFound
		api.mu.Unlock()
		if got := eventIDs(t, g.get("/getEventsByUserId/u")); fmt.Sprint(got) != "[broken deleted fine]" {
			t.Errorf("stale request = %v; want all three, served from the cache", got)
		}
		time.Sleep(time.Second) // the refreshes, and the retries of the broken one
		synctest.Wait()
		if got := eventIDs(t, g.get("/getEventsByUserId/u")); fmt.Sprint(got) != "[broken fine]" {
			t.Errorf("after the refresh = %v; want [broken fine]: the failed refresh keeps its copy, the deleted event is left out", got)
		}
	})
}

func TestEventCacheCanBeTurnedOffAndStillCoalesces(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		api := newFakeEventAPI(500 * time.Millisecond)
		api.addUser("u", 10)
		g := newTestGateway(t, api, func(c *config) { c.EventCacheTTL = 0 })
		var wg sync.WaitGroup
		for range 5 {
			wg.Go(func() { eventIDs(t, g.get("/getEventsByUserId/u")) })
		}
		wg.Wait()
		if n, _ := api.lookups(); n != 10 {
			t.Errorf("5 concurrent requests made %d lookups; want 10, coalesced", n)
		}
		eventIDs(t, g.get("/getEventsByUserId/u"))
		if n, _ := api.lookups(); n != 20 {
			t.Errorf("with the cache off, a later request made %d lookups in all; want 20", n)
		}
	})
}

func TestEventCacheIsBounded(t *testing.T) {
	fetch := func(_ context.Context, id string) (event, error) { return event{JSON: json.RawMessage(`{}`)}, nil }
	c := newEventCache(cacheOptions{Fetch: fetch, TTL: time.Minute, Size: 2})
	defer c.Close()
	for _, id := range []string{"a", "b", "a", "c"} { // "b" is least recently used when "c" arrives
		c.Get(t.Context(), id)
	}
	if _, ok := c.peek(t.Context(), "b", time.Now()); ok || entries(c) != 2 {
		t.Errorf("cache holds %d entries, b present %v; want 2, b evicted", entries(c), ok)
	}
	for _, id := range []string{"a", "c"} {
		if _, ok := c.peek(t.Context(), id, time.Now()); !ok {
			t.Errorf("%s evicted; want it kept", id)
		}
	}
}

// TestEventCacheIsBoundedInBytes fills a cache whose byte bound holds three
// 1 KB events: the fourth pushes out the least recently used, whatever the
// entry count allows, and an event larger than the whole cache is not kept.
func TestEventCacheIsBoundedInBytes(t *testing.T) {
	sizes := map[string]int{"a": 1000, "b": 1000, "c": 1000, "d": 1000, "huge": 10_000}
	fetch := func(_ context.Context, id string) (event, error) {
		return event{JSON: json.RawMessage(`"` + strings.Repeat("x", sizes[id]-2) + `"`)}, nil
	}
	c := newEventCache(cacheOptions{Fetch: fetch, TTL: time.Minute, Size: 1000, MaxBytes: 3 * (1000 + 1 + entryOverhead)})
	defer c.Close()
	for _, id := range []string{"a", "b", "c", "a", "d"} { // "b" is least recently used when "d" arrives
		c.Get(t.Context(), id)
	}
	for id, want := range map[string]bool{"a": true, "b": false, "c": true, "d": true} {
		if _, ok := c.peek(t.Context(), id, time.Now()); ok != want {
			t.Errorf("%s cached: %v; want %v", id, ok, want)
		}
	}
	c.Get(t.Context(), "huge")
	if _, ok := c.peek(t.Context(), "huge", time.Now()); ok || entries(c) != 3 {
		t.Errorf("an event larger than the cache: kept %v, %d entries; want not kept, the 3 others untouched", ok, entries(c))
	}
	if _, bytes := c.Len(); bytes != 3*(1000+1+entryOverhead) {
		t.Errorf("cache counts %d bytes; want %d", bytes, 3*(1000+1+entryOverhead))
	}
}

// TestStaleRefreshesAreBounded: one request over many stale events starts
// no more background lookups than one request's fan-out may run; the rest
// are served stale and refreshed by later requests.
func TestStaleRefreshesAreBounded(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		api := newFakeEventAPI(500 * time.Millisecond)
		api.addUser("u", 30)
		g := newTestGateway(t, api, func(c *config) { c.FanoutLimit = 10 })
		eventIDs(t, g.get("/getEventsByUserId/u"))
		time.Sleep(61 * time.Second)

		for i, want := range []int{40, 50, 60, 60} {
			start := time.Now()
			if ids := eventIDs(t, g.get("/getEventsByUserId/u")); len(ids) != 30 {
				t.Fatalf("request %d: %d events; want 30", i, len(ids))
			}
			if took := time.Since(start); took != 0 {
				t.Errorf("request %d took %v; want no event round", i, took)
			}
			time.Sleep(time.Second)
			synctest.Wait()
			if n, _ := api.lookups(); n != want {
				t.Errorf("after request %d: %d lookups; want %d, 10 more stale events refreshed while any are left", i, n, want)
			}
		}
	})
}

// TestEventCacheCloseEndsItsRefreshes: a background refresh belongs to the
// cache, and Close cancels it and waits for it.
func TestEventCacheCloseEndsItsRefreshes(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var calls atomic.Int32
		var cancelled atomic.Bool
		fetch := func(ctx context.Context, id string) (event, error) {
			if calls.Add(1) == 1 {
				return event{JSON: json.RawMessage(`{}`)}, nil
			}
			<-ctx.Done() // an upstream that never answers the refresh
			cancelled.Store(true)
			return event{}, ctx.Err()
		}
		c := newEventCache(cacheOptions{Fetch: fetch, TTL: time.Minute, Size: 10, MaxRefreshes: 10})
		c.Get(t.Context(), "a")
		time.Sleep(61 * time.Second)
		if _, ok := c.peek(t.Context(), "a", time.Now()); !ok {
			t.Fatal("stale event not served")
		}
		synctest.Wait()
		if calls.Load() != 2 {
			t.Fatalf("%d fetches; want 2, the second a refresh", calls.Load())
		}
		c.Close()
		if !cancelled.Load() {
			t.Error("Close returned before the refresh ended")
		}

		// A request that outlives the shutdown is still answered, and
		// starts nothing in the background.
		if _, ok := c.peek(t.Context(), "a", time.Now()); !ok || calls.Load() != 2 {
			t.Errorf("after Close: stale event served %v, %d fetches; want served, no new refresh", ok, calls.Load())
		}
		ctx, cancel := context.WithCancel(t.Context())
		cancel()
		if _, err := c.Get(ctx, "b"); err == nil || calls.Load() != 3 {
			t.Errorf("after Close, Get(b) with its context ended = %v after %d fetches; want the caller's own fetch, cancelled", err, calls.Load())
		}
	})
}

// loaderFlights lists the lookups the gateway's cache has in flight.
func (g *testGateway) loaderFlights() []string {
	c := g.cache
	c.mu.Lock()
	defer c.mu.Unlock()
	var ids []string
	for id := range c.flights {
		ids = append(ids, id)
	}
	return ids
}

// TestFanoutReusesConnections makes 20 requests of 50 events each over real
// TCP and counts the connections the upstream accepted: the transport keeps
// them for reuse instead of dialing one per call.
func TestFanoutReusesConnections(t *testing.T) {
	checkGoroutines(t)
	api := newFakeEventAPI(10 * time.Millisecond)
	api.addUser("u", 50)
	var conns atomic.Int64
	srv := httptest.NewUnstartedServer(api)
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	srv.Start()
	defer srv.Close()

	m := newMetrics()
	up := newUpstream(upstreamOptions{BaseURL: srv.URL, Timeout: 5 * time.Second, MaxInflight: 100, Metrics: m})
	defer up.client.CloseIdleConnections()
	loader := newEventLoader(loaderOptions{Cache: newEventCache(cacheOptions{Fetch: up.Event, Size: 10}), Limit: 100})
	for range 20 {
		events, err := loader.Load(t.Context(), "u", api.users["u"])
		if err != nil || len(events) != 50 {
			t.Fatalf("Load = %d events, %v", len(events), err)
		}
	}
	if n := conns.Load(); n > 60 {
		t.Errorf("1,000 lookups opened %d connections; want about 50, reused", n)
	}
	if dialed := m.dials.Load(); dialed != uint64(conns.Load()) {
		t.Errorf("metrics counted %d connections dialed; the upstream accepted %d", dialed, conns.Load())
	}
}

// entries returns how many events c holds.
func entries(c *eventCache) int {
	n, _ := c.Len()
	return n
}
