package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"eventgate/mock"
)

func TestEndpointsAnswerTheMocksData(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m := mock.New(mock.Options{EventDelay: 500 * time.Millisecond})
		g := newTestGateway(t, m, nil)

		rec := g.get("/getUsers")
		var users []mock.User
		if err := json.Unmarshal(rec.Body.Bytes(), &users); err != nil || rec.Code != 200 {
			t.Fatalf("GET /getUsers = %d %q", rec.Code, rec.Body)
		}
		if len(users) != 3 || users[0].ID != "1" || len(users[0].Events) != 2 {
			t.Errorf("GET /getUsers users = %+v; want users 1, 2, 3, user 1 with 2 events", users)
		}

		rec = g.get("/getEvents")
		upstream := httptest.NewRecorder()
		m.ServeHTTP(upstream, httptest.NewRequest("GET", "/getEvents", nil))
		if rec.Body.String() != strings.TrimSpace(upstream.Body.String())+"\n" {
			t.Errorf("GET /getEvents body = %q; want the upstream's list as it sent it, and a newline: %q", rec.Body, upstream.Body)
		}
		if events := decodeEvents(t, rec.Body); rec.Code != 200 || len(events) != 4 {
			t.Errorf("GET /getEvents = %d, %d events; want 200, 4", rec.Code, len(events))
		}

		start := time.Now()
		rec = g.get("/getEventsByUserId/1")
		took := time.Since(start)
		events := decodeEvents(t, rec.Body)
		if rec.Code != 200 || len(events) != 2 || events[0].ID != "event-1" || events[1].ID != "event-3" {
			t.Errorf("GET /getEventsByUserId/1 = %d %+v; want event-1, event-3", rec.Code, events)
		}
		if took != 500*time.Millisecond {
			t.Errorf("GET /getEventsByUserId/1 took %v; want one parallel round of 500ms", took)
		}

		rec = g.post("/addEvent", `{"name": " Party ", "userId": 3, "details": "bring cake"}`)
		var added struct {
			Success bool   `json:"success"`
			ID      string `json:"id"`
		}
		if err := json.Unmarshal(rec.Body.Bytes(), &added); err != nil || rec.Code != 200 || !added.Success {
			t.Fatalf("POST /addEvent = %d %q; want 200 success", rec.Code, rec.Body)
		}
		stored, ok := m.Event(added.ID)
		want := mock.Event{ID: added.ID, Name: "Party", UserID: "3", Details: "bring cake"}
		if !ok || stored != want {
			t.Errorf("upstream holds %+v (found %v); want %+v", stored, ok, want)
		}
		if u, _ := m.User("3"); u.Events[len(u.Events)-1] != added.ID {
			t.Errorf("user 3's events = %v; want %s last", u.Events, added.ID)
		}

		rec = g.get("/health")
		var health struct {
			Status  string `json:"status"`
			Breaker struct {
				State string `json:"state"`
			} `json:"breaker"`
		}
		if err := json.Unmarshal(rec.Body.Bytes(), &health); err != nil || health.Status != "ok" || health.Breaker.State != "closed" {
			t.Errorf("GET /health = %q; want status ok, breaker closed", rec.Body)
		}
	})
}

// TestPathIDsCannotEscapeTheirSegment sends ids crafted to reach another
// upstream path: the gateway refuses them before calling the upstream.
func TestPathIDsCannotEscapeTheirSegment(t *testing.T) {
	for _, path := range []string{
		"/getEventsByUserId/..%2FaddEvent",
		"/getEventsByUserId/1%2F..%2F..%2FgetUsers",
		"/getEventsByUserId/%2F",
		"/getEventsByUserId/%2e%2e",
		"/getEventsByUserId/.",
		"/getEventsByUserId/1%3Fx=1",
		"/getEventsByUserId/1%23frag",
		"/getEventsByUserId/%00",
		"/getEventsByUserId/" + strings.Repeat("9", 200),
	} {
		g := newTestGateway(t, quietMock(), nil)
		rec := g.get(path)
		if rec.Code != 400 {
			t.Errorf("GET %s = %d %q; want 400", path, rec.Code, rec.Body)
		}
		errorBody(t, rec)
		if n := g.transport.calls.Load(); n != 0 {
			t.Errorf("GET %s reached the upstream %d times; want 0", path, n)
		}
	}
}

func TestConcurrentAddEventsGetDistinctIDsAndAllAreStored(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m := quietMock()
		g := newTestGateway(t, m, nil)
		const n = 100
		ids := make([]string, n)
		var wg sync.WaitGroup
		for i := range n {
			wg.Go(func() {
				rec := g.post("/addEvent", fmt.Sprintf(`{"name": "event %d", "userId": "2"}`, i))
				var body struct{ ID string }
				json.Unmarshal(rec.Body.Bytes(), &body)
				if rec.Code != 200 {
					t.Errorf("POST %d = %d %q", i, rec.Code, rec.Body)
				}
				ids[i] = body.ID
			})
		}
		wg.Wait()
		distinct := map[string]bool{}
		for i, id := range ids {
			distinct[id] = true
			e, ok := m.Event(id)
			if !ok || e.Name != fmt.Sprintf("event %d", i) {
				t.Errorf("acknowledged event %q (request %d) stored as %+v, %v", id, i, e, ok)
			}
		}
		if len(distinct) != n {
			t.Errorf("%d distinct ids for %d events", len(distinct), n)
		}
	})
}

// FuzzPathID sends any id to GET /getEventsByUserId/{id}: the answer is
// JSON, and the upstream is never asked for a path other than one user or
// one event.
func FuzzPathID(f *testing.F) {
	for _, seed := range []string{"1", "..", "%2e%2e", "..%2FaddEvent", "1/../../getUsers", "%2F", "a%00", "a?b", "event-1#x", strings.Repeat("9", 300)} {
		f.Add(seed)
	}
	allowed := regexp.MustCompile(`^/get(UserById|EventById)/[^/?#]+$`)
	var bad []string
	seen := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !allowed.MatchString(r.URL.EscapedPath()) {
			bad = append(bad, r.URL.EscapedPath())
		}
		quietMock().ServeHTTP(w, r)
	})
	g := newTestGateway(f, seen, func(c *config) { c.EventCacheTTL = 0 })
	f.Fuzz(func(t *testing.T, id string) {
		req, err := http.NewRequest("GET", "http://gateway/getEventsByUserId/"+id, nil)
		if err != nil {
			return // not a URL a client could send
		}
		rec := g.serve(req)
		if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
			t.Errorf("GET %q = %d with Content-Type %q; want JSON", id, rec.Code, ct)
		}
		if len(bad) > 0 {
			t.Fatalf("id %q reached the upstream at %v", id, bad)
		}
	})
}

func TestReadyTurns503WhenShuttingDown(t *testing.T) {
	g := newTestGateway(t, quietMock(), nil)
	if rec := g.get("/ready"); rec.Code != 200 {
		t.Errorf("GET /ready = %d; want 200", rec.Code)
	}
	g.ready.Store(false)
	rec := g.get("/ready")
	if rec.Code != 503 || errorBody(t, rec) != "shutting down" {
		t.Errorf("GET /ready while shutting down = %d %q; want 503", rec.Code, rec.Body)
	}
	if rec := g.get("/health"); rec.Code != 200 {
		t.Errorf("GET /health while shutting down = %d; liveness stays 200", rec.Code)
	}
}
