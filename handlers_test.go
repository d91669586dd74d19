package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
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

// statusUpstream answers every request with status and body.
func statusUpstream(status int, contentType, body string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", contentType)
		w.WriteHeader(status)
		fmt.Fprint(w, body)
	})
}

// hangingUpstream never answers; it returns when the caller gives up.
func hangingUpstream() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() })
}

// TestErrorTable checks every row of the design brief's error table.
func TestErrorTable(t *testing.T) {
	longBody := `{"name": "` + strings.Repeat("x", 70<<10) + `", "userId": "1"}`
	tests := []struct {
		name        string
		upstream    http.Handler
		method      string
		path        string
		contentType string
		body        string
		wantStatus  int
		wantError   string // a part of the error message
		wantHeader  string // a header that must be set
		wantCalls   bool   // the upstream is called
	}{
		{"malformed JSON", nil, "POST", "/addEvent", "application/json", `{"name": "x",`, 400, "truncated", "", false},
		{"syntax error", nil, "POST", "/addEvent", "application/json", `{"name" "x"}`, 400, "malformed JSON", "", false},
		{"missing name", nil, "POST", "/addEvent", "application/json", `{"userId": "1"}`, 400, "name is required", "", false},
		{"empty name", nil, "POST", "/addEvent", "application/json", `{"name": "  ", "userId": "1"}`, 400, "name must not be empty", "", false},
		{"missing userId", nil, "POST", "/addEvent", "application/json", `{"name": "x"}`, 400, "userId is required", "", false},
		{"empty userId", nil, "POST", "/addEvent", "application/json", `{"name": "x", "userId": ""}`, 400, "userId must not be empty", "", false},
		{"wrong type of name", nil, "POST", "/addEvent", "application/json", `{"name": 5, "userId": "1"}`, 400, "name must be a string", "", false},
		{"duplicate key", nil, "POST", "/addEvent", "application/json", `{"name": "x", "userId": "1", "userId": "2"}`, 400, `has the key "userId" twice`, "", false},
		{"case variant of a field", nil, "POST", "/addEvent", "application/json", `{"name": "x", "UserId": "1"}`, 400, `unknown field "UserId"`, "", false},
		{"unpaired surrogate", nil, "POST", "/addEvent", "application/json", `{"name": "\ud800", "userId": "1"}`, 400, "unpaired surrogate", "", false},
		{"wrong type of userId", nil, "POST", "/addEvent", "application/json", `{"name": "x", "userId": true}`, 400, "userId must be a string or a whole number", "", false},
		{"bad id in path", nil, "GET", "/getEventsByUserId/a%20b", "", "", 400, "invalid user id", "", false},
		{"user not found", nil, "GET", "/getEventsByUserId/99", "", "", 404, `user "99" not found`, "", true},
		{"user not found on add", nil, "POST", "/addEvent", "application/json", `{"name": "x", "userId": "99"}`, 404, `user "99" not found`, "", true},
		{"wrong method", nil, "DELETE", "/getUsers", "", "", 405, "not allowed", "Allow", false},
		{"unknown route", nil, "GET", "/nowhere", "", "", 404, "no route", "", false},
		{"body over the limit", nil, "POST", "/addEvent", "application/json", longBody, 413, "larger than 65536 bytes", "", false},
		{"content type not JSON", nil, "POST", "/addEvent", "text/plain", `{"name": "x", "userId": "1"}`, 415, "must be application/json", "", false},
		{"no content type", nil, "POST", "/addEvent", "", `{"name": "x", "userId": "1"}`, 415, "must be application/json", "", false},
		{"upstream HTML", statusUpstream(200, "text/html", "<html>oops</html>"), "GET", "/getUsers", "", "", 502, "not a JSON array", "", true},
		{"upstream truncated JSON", statusUpstream(200, "application/json", `[{"id": "1"`), "GET", "/getEvents", "", "", 502, "not a JSON array", "", true},
		{"upstream 500", statusUpstream(500, "text/plain", "secret stack trace"), "GET", "/getUsers", "", "", 502, "failed (status 500)", "", true},
		{"upstream 502", statusUpstream(502, "text/plain", "bad gateway"), "GET", "/getUsers", "", "", 502, "failed (status 502)", "", true},
		{"upstream 504", statusUpstream(504, "text/plain", "gateway timeout"), "GET", "/getEvents", "", "", 502, "failed (status 504)", "", true},
		{"upstream 503", statusUpstream(503, "application/json", `{"error": "busy"}`), "GET", "/getUsers", "", "", 503, "overloaded; retry after 5 seconds", "Retry-After", true},
		{"upstream 503 on add", statusUpstream(503, "application/json", `{}`), "POST", "/addEvent", "application/json", `{"name": "x", "userId": "1"}`, 503, "retry after", "Retry-After", true},
		{"upstream too slow", hangingUpstream(), "GET", "/getUsers", "", "", 504, "did not answer in time", "", true},
		{"upstream too slow on add", hangingUpstream(), "POST", "/addEvent", "application/json", `{"name": "x", "userId": "1"}`, 504, "did not answer in time", "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				up := tt.upstream
				if up == nil {
					up = quietMock()
				}
				g := newTestGateway(t, up, nil)
				req := httptest.NewRequest(tt.method, tt.path, strings.NewReader(tt.body))
				if tt.contentType != "" {
					req.Header.Set("Content-Type", tt.contentType)
				}
				rec := g.serve(req)
				if rec.Code != tt.wantStatus {
					t.Errorf("%s %s = %d %q; want %d", tt.method, tt.path, rec.Code, rec.Body, tt.wantStatus)
				}
				if msg := errorBody(t, rec); !strings.Contains(msg, tt.wantError) {
					t.Errorf("error = %q; want it to contain %q", msg, tt.wantError)
				}
				if strings.Contains(rec.Body.String(), "secret") {
					t.Errorf("the upstream's body reached the client: %q", rec.Body)
				}
				if tt.wantHeader != "" && rec.Header().Get(tt.wantHeader) == "" {
					t.Errorf("header %s missing; headers %v", tt.wantHeader, rec.Header())
				}
				if called := g.transport.calls.Load() > 0; called != tt.wantCalls {
					t.Errorf("upstream called: %v; want %v", called, tt.wantCalls)
				}
			})
		})
	}
}

func TestWrongMethodListsAllowedMethods(t *testing.T) {
	g := newTestGateway(t, quietMock(), nil)
	tests := []struct{ method, path, allow string }{
		{"POST", "/getUsers", "GET, HEAD"},
		{"PUT", "/getEventsByUserId/1", "GET, HEAD"},
		{"GET", "/addEvent", "POST"},
	}
	for _, tt := range tests {
		rec := g.serve(httptest.NewRequest(tt.method, tt.path, nil))
		if rec.Code != 405 || rec.Header().Get("Allow") != tt.allow {
			t.Errorf("%s %s = %d, Allow %q; want 405, Allow %q", tt.method, tt.path, rec.Code, rec.Header().Get("Allow"), tt.allow)
		}
		errorBody(t, rec)
	}
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

// TestUpstreamIDsStayInTheirSegment calls the upstream client directly with
// hostile ids (as a user's event list could hold): each reaches only its
// own route, with the id intact, or is refused without a call.
func TestUpstreamIDsStayInTheirSegment(t *testing.T) {
	var mu sync.Mutex
	var seen []string
	rec := http.NewServeMux()
	record := func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen = append(seen, r.Pattern+" "+r.PathValue("id"))
		mu.Unlock()
		w.Write([]byte(`{"events": []}`))
	}
	rec.HandleFunc("GET /getUserById/{id}", record)
	rec.HandleFunc("GET /getEventById/{id}", record)
	rec.HandleFunc("/", record)
	g := newTestGateway(t, rec, nil)
	up := newUpstream(upstreamOptions{BaseURL: "http://upstream.test", Timeout: time.Second, MaxInflight: 1, Transport: g.transport})

	for _, id := range []string{"../addEvent", "1/../../getUsers", "%2F", "a?b=c", "a#b", "a b"} {
		seen = nil
		up.UserEventIDs(t.Context(), id)
		up.Event(t.Context(), id)
		want := []string{"GET /getUserById/{id} " + id, "GET /getEventById/{id} " + id}
		if strings.Join(seen, "|") != strings.Join(want, "|") {
			t.Errorf("id %q reached %q; want %q", id, seen, want)
		}
	}
	for _, id := range []string{".", "..", ""} {
		seen = nil
		_, err := up.UserEventIDs(t.Context(), id)
		if err == nil || len(seen) != 0 {
			t.Errorf("id %q: err %v, reached %q; want an error and no call", id, err, seen)
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

func TestRequestIDIsEchoedAndForwarded(t *testing.T) {
	var forwarded string
	up := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		forwarded = r.Header.Get("X-Request-ID")
		w.Write([]byte(`[]`))
	})
	g := newTestGateway(t, up, nil)
	req := httptest.NewRequest("GET", "/getUsers", nil)
	req.Header.Set("X-Request-ID", "trace-42")
	rec := g.serve(req)
	if got := rec.Header().Get("X-Request-ID"); got != "trace-42" || forwarded != "trace-42" {
		t.Errorf("X-Request-ID echoed %q, forwarded %q; want trace-42 both", got, forwarded)
	}

	rec = g.get("/getUsers")
	if got := rec.Header().Get("X-Request-ID"); got == "" || got != forwarded {
		t.Errorf("generated X-Request-ID echoed %q, forwarded %q; want the same, not empty", got, forwarded)
	}
}
