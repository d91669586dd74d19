package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
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
	if strings.HasPrefix(r.URL.Path, "/getUserById/") {
		events, ok := f.users[r.URL.Path[len("/getUserById/"):]]
		if !ok {
			http.Error(w, "{}", 404)
			return
		}
		json.NewEncoder(w).Encode(map[string]any{"events": events})
		return
	}
	id := r.URL.Path[len("/getEventById/"):]
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

// askAndLeave serves GET path for a client that hangs up after d, and
// returns what was recorded; inside a synctest bubble.
func askAndLeave(g *testGateway, path string, d time.Duration) *httptest.ResponseRecorder {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan *httptest.ResponseRecorder)
	go func() { done <- g.serve(httptest.NewRequestWithContext(ctx, "GET", path, nil)) }()
	time.Sleep(d)
	cancel()
	return <-done
}

// TestClientGoingAwayLetsSentLookupsFinish: when the client leaves, the
// lookups already sent are not cancelled (the upstream sees none cut off);
// they finish, are cached, and the next request is answered from the cache
// without a call. Nothing of the request keeps running after that
// (synctest fails the test if a goroutine is left).
func TestClientGoingAwayLetsSentLookupsFinish(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		api := newFakeEventAPI(500 * time.Millisecond)
		api.addUser("u", 200)
		g := newTestGateway(t, api, nil)
		if rec := askAndLeave(g, "/getEventsByUserId/u", 100*time.Millisecond); rec.Code != statusClientClosed {
			t.Errorf("status logged %d; want %d", rec.Code, statusClientClosed)
		}
		time.Sleep(time.Second)
		if n := atomic.LoadInt64(&api.cancelled); n != 0 {
			t.Errorf("upstream saw %d lookups cancelled; want none: they were sent, and finish", n)
		}
		start := time.Now()
		if ids := eventIDs(t, g.get("/getEventsByUserId/u")); len(ids) != 200 || time.Since(start) != 0 {
			t.Errorf("the next request = %d events after %v; want 200 at once, from the cache", len(ids), time.Since(start))
		}
		if n, _ := api.lookups(); n != 200 {
			t.Errorf("upstream saw %d lookups in all; want 200, one per event", n)
		}
	})
}

// TestLookupsNotSentWhenTheClientLeavesAreNeverSent: with 5 upstream slots
// and 50 lookups wanted, 5 are sent and 45 wait; when the client leaves,
// none of the 45 is ever sent, however long one waits.
func TestLookupsNotSentWhenTheClientLeavesAreNeverSent(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		api := newFakeEventAPI(500 * time.Millisecond)
		api.addUser("u", 50)
		g := newTestGateway(t, api, func(c *config) { c.UpstreamMaxInflight = 5 })
		askAndLeave(g, "/getEventsByUserId/u", 100*time.Millisecond)
		time.Sleep(10 * time.Second)
		if n, _ := api.lookups(); n != 5 {
			t.Errorf("upstream saw %d lookups; want the 5 sent before the client left", n)
		}
	})
}

// TestRequestDeadlineEndsTheFanoutWith504: the client is answered 504 at
// REQUEST_TIMEOUT; the lookups it started run on to their own
// UPSTREAM_TIMEOUT, and only then are cut off.
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
		if n := atomic.LoadInt64(&api.cancelled); n != 0 {
			t.Errorf("at the request's deadline, upstream saw %d lookups cancelled; want none yet", n)
		}
		time.Sleep(4 * time.Second)
		synctest.Wait()
		if n := atomic.LoadInt64(&api.cancelled); n != 50 {
			t.Errorf("at UPSTREAM_TIMEOUT, upstream saw %d lookups cancelled; want 50", n)
		}
	})
}

// TestOneFailingLookupFailsFast checks that an event answering 500 fails
// the request at once with 502, without waiting for the other lookups,
// which are not cut off: they finish and are cached for the next request.
func TestOneFailingLookupFailsFast(t *testing.T) {
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
		time.Sleep(time.Second)
		started, _ := api.lookups()
		if n := atomic.LoadInt64(&api.cancelled); n != 0 || started > 20 {
			t.Errorf("upstream saw %d of %d lookups cancelled; want none, at most 20 sent", n, started)
		}
	})
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
	up := testUpstream(upstreamOptions{BaseURL: srv.URL, Timeout: 5 * time.Second, MaxInflight: 100, Metrics: m})
	defer up.client.CloseIdleConnections()
	loader := newEventLoader(loaderOptions{MaxBytes: 1 << 30, Metrics: newMetrics(), Cache: newEventCache(cacheOptions{MaxBytes: 1 << 30, Metrics: newMetrics(), Fetch: up.Event}), Limit: 100})
	for range 20 {
		events, err := loader.Load(t.Context(), "u", api.users["u"], unbounded())
		if err != nil || len(events) != 50 {
			t.Fatalf("Load = %d events, %v", len(events), err)
		}
	}
	if n := conns.Load(); n > 60 {
		t.Errorf("1,000 lookups opened %d connections; want about 50, reused", n)
	}
	rec := httptest.NewRecorder()
	m.ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if want := fmt.Sprintf("eventgate_upstream_connections_opened_total %d\n", conns.Load()); !strings.Contains(rec.Body.String(), want) {
		t.Errorf("/metrics lacks %q: it must count the connections the upstream accepted", want)
	}
}

// countingLoader is a loader over a cache whose fetches of events of user
// "u" are counted.
func countingLoader(t *testing.T) (*eventLoader, *atomic.Int64) {
	var fetches atomic.Int64
	fetch := func(_ context.Context, id string) (event, error) {
		fetches.Add(1)
		return event{JSON: json.RawMessage(`{}`), UserID: "u"}, nil
	}
	c := newEventCache(cacheOptions{MaxBytes: 1 << 30, Metrics: newMetrics(), Fetch: fetch, TTL: time.Hour})
	t.Cleanup(c.Close)
	return newEventLoader(loaderOptions{MaxBytes: 1 << 30, Metrics: newMetrics(), Cache: c, Limit: 10}), &fetches
}

// TestLoadAfterTheContextEndedLooksNothingUp: a load whose request has
// already ended (the client left, the deadline passed) makes no lookup and
// says why, instead of answering an empty list.
func TestLoadAfterTheContextEndedLooksNothingUp(t *testing.T) {
	l, fetches := countingLoader(t)
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	events, err := l.Load(ctx, "u", []string{"e1", "e2", "e3"}, unbounded())
	if err == nil || toAPIError(err).Status != statusClientClosed || fetches.Load() != 0 {
		t.Errorf("Load after the client left = %d events, %v, after %d fetches; want the client's leaving and no fetch", len(events), err, fetches.Load())
	}
}

// TestWarmLoadDoesNoPerEventWork: the events of a user that are all cached
// are answered from the cache directly, with no worker, flight or
// allocation per event (11 allocations for 100 events here; over 300 if
// they went through the worker pool).
func TestWarmLoadDoesNoPerEventWork(t *testing.T) {
	l, _ := countingLoader(t)
	ids := make([]string, 100)
	for i := range ids {
		ids[i] = fmt.Sprint("e", i)
	}
	held := unbounded()
	l.Load(t.Context(), "u", ids, held)
	if allocs := testing.AllocsPerRun(20, func() { l.Load(t.Context(), "u", ids, held) }); allocs > 20 {
		t.Errorf("a warm load of 100 events made %v allocations; want at most 20, none per event", allocs)
	}
}

// TestMissingEventsAreRememberedAndSummarised: a user listing 1,000 ids the
// upstream answers 404 and 1,000 events of another user. The first request
// looks each up once; the next ones within missingTTL make no lookup at
// all; after it, the missing ones are looked up again. Each request writes
// one log line about what it left out, whatever the count, and a short one.
func TestMissingEventsAreRememberedAndSummarised(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		api := newFakeEventAPI(0)
		for i := range 1000 {
			api.failing[fmt.Sprint("gone-", i)] = 404
			api.users["u"] = append(api.users["u"], fmt.Sprint("gone-", i), fmt.Sprint("theirs-", i))
		}
		owned := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if id, ok := strings.CutPrefix(r.URL.Path, "/getEventById/theirs-"); ok {
				api.ServeHTTP(httptest.NewRecorder(), r) // counted
				fmt.Fprintf(w, `{"id": "theirs-%s", "userId": "other"}`, id)
				return
			}
			api.ServeHTTP(w, r)
		})
		var logs bytes.Buffer
		log := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelWarn}))
		cfg := testConfig(t)
		s := wire(cfg, log, "http://upstream.test", &handlerTransport{h: owned})
		defer s.Close()
		h := newServer(log, cfg, s)
		get := func() int {
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, httptest.NewRequest("GET", "/getEventsByUserId/u", nil))
			return rec.Code
		}
		if code := get(); code != 200 {
			t.Fatalf("= %d; want 200", code)
		}
		first, _ := api.lookups()
		for range 3 {
			get()
		}
		if n, _ := api.lookups(); first != 2000 || n != first {
			t.Errorf("lookups: %d for the first request, %d after three more; want 2000, then none", first, n)
		}
		lines := strings.Split(strings.TrimSpace(logs.String()), "\n")
		if len(lines) != 4 || len(logs.String()) > 4*1024 {
			t.Errorf("%d log lines, %d bytes, for four requests; want one short line each:\n%.2000s", len(lines), logs.Len(), logs.String())
		}
		if !strings.Contains(lines[0], "missing_upstream=1000") || !strings.Contains(lines[0], "of_another_user=1000") {
			t.Errorf("the line does not count what was left out: %s", lines[0])
		}
		time.Sleep(missingTTL + time.Second)
		get()
		if n, _ := api.lookups(); n != 3000 {
			t.Errorf("lookups after missingTTL: %d; want 1000 more, the missing ones again", n-first)
		}
	})
}

// TestCachedEventsCountTowardTheAnswerBound: with every event of a user in
// the cache, an answer past MaxBytes still fails, without a lookup.
func TestCachedEventsCountTowardTheAnswerBound(t *testing.T) {
	var fetches atomic.Int32
	cache := newEventCache(cacheOptions{MaxBytes: 1 << 30, Metrics: newMetrics(), TTL: time.Minute, MaxRefreshes: 1,
		Fetch: func(_ context.Context, id string) (event, error) {
			fetches.Add(1)
			return event{JSON: json.RawMessage(`{"id":"` + id + `","details":"` + strings.Repeat("x", 1000) + `"}`), UserID: "u"}, nil
		}})
	defer cache.Close()
	ids := []string{"a", "b", "c"}
	if _, err := newEventLoader(loaderOptions{MaxBytes: 1 << 30, Metrics: newMetrics(), Cache: cache, Limit: 10}).Load(t.Context(), "u", ids, unbounded()); err != nil {
		t.Fatal(err)
	}
	_, err := newEventLoader(loaderOptions{Metrics: newMetrics(), Cache: cache, Limit: 10, MaxBytes: 2500}).Load(t.Context(), "u", ids, unbounded())
	var ue *upstreamError
	if !errors.As(err, &ue) || ue.Kind != failTooLarge || fetches.Load() != 3 {
		t.Errorf("three cached events of 1 KB under a 2,500-byte bound = %v after %d lookups; want too large, no more lookups", err, fetches.Load())
	}
}

// TestAPanicInAFanoutWorkerFailsOnlyItsLoad: a lookup that panics on a
// fan-out worker's own goroutine (after Close, the cache looks up on its
// caller's goroutine) fails that load with an error; the other workers
// end, and the next load is answered.
func TestAPanicInAFanoutWorkerFailsOnlyItsLoad(t *testing.T) {
	checkGoroutines(t)
	c := newEventCache(cacheOptions{MaxBytes: 1 << 30, Metrics: newMetrics(), TTL: time.Minute, MaxRefreshes: 1,
		Fetch: func(_ context.Context, id string) (event, error) {
			if id == "bad" {
				panic("on purpose")
			}
			return event{JSON: json.RawMessage(`{}`), UserID: "u"}, nil
		}})
	c.Close()
	l := newEventLoader(loaderOptions{MaxBytes: 1 << 30, Metrics: newMetrics(), Cache: c, Limit: 4})
	ids := []string{"a", "b", "bad", "c", "d", "e"}
	if _, err := l.Load(t.Context(), "u", ids, unbounded()); err == nil || !strings.Contains(err.Error(), "on purpose") {
		t.Errorf("a load whose lookup panicked = %v; want the panic as its error", err)
	}
	if events, err := l.Load(t.Context(), "u", []string{"a", "b"}, unbounded()); err != nil || len(events) != 2 {
		t.Errorf("the next load = %d events, %v; want 2, nil", len(events), err)
	}
}
