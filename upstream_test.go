package main

import (
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"eventgate/mock"
)

// TestUpstreamFaultsOverTCP points the gateway at real servers that
// misbehave and checks what the client is told. A trickled body must time
// out: were it read outside UPSTREAM_TIMEOUT, it would end as a 200.

var upstreamFaults = []struct {
	name     string
	upstream http.HandlerFunc
	want     int
	message  string
}{
	{"connection reset", func(w http.ResponseWriter, r *http.Request) {
		c, _, _ := w.(http.Hijacker).Hijack()
		c.(*net.TCPConn).SetLinger(0) // close with RST, not FIN
		c.Close()
	}, 502, "could not reach"},
	{"dropped connection", func(w http.ResponseWriter, r *http.Request) { panic(http.ErrAbortHandler) }, 502, "could not reach"},
	{"trickled body", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		body := "[" + strings.Repeat(" ", 100) + "]"
		for i := range len(body) {
			if _, err := io.WriteString(w, body[i:i+1]); err != nil {
				return
			}
			w.(http.Flusher).Flush()
			select {
			case <-time.After(20 * time.Millisecond):
			case <-r.Context().Done():
				return
			}
		}
	}, 504, "did not answer in time"},
	{"hang", func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() }, 504, "did not answer in time"},
	{"HTML", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html")
		io.WriteString(w, "<!doctype html><h1>Welcome to nginx</h1>")
	}, 502, "not a JSON array"},
	{"truncated JSON", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, `[{"id": "event-1", "na`) }, 502, "not a JSON array"},
	{"50 MB body", func(w http.ResponseWriter, r *http.Request) {
		chunk := []byte("[" + strings.Repeat(`{"id": "x"},`, 1<<16))
		for written := 0; written < 50<<20; written += len(chunk) {
			if _, err := w.Write(chunk); err != nil {
				return
			}
		}
	}, 502, "larger than this gateway accepts (8 MiB)"},
	{"500", func(w http.ResponseWriter, r *http.Request) { http.Error(w, "panic: nil map", 500) }, 502, "status 500"},
	{"502", func(w http.ResponseWriter, r *http.Request) { http.Error(w, "bad gateway", http.StatusBadGateway) }, 502, "status 502"},
	{"503", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Retry-After", "7")
		http.Error(w, "busy", http.StatusServiceUnavailable)
	}, 503, "retry after 7 seconds"},
	{"504", func(w http.ResponseWriter, r *http.Request) { http.Error(w, "timeout", http.StatusGatewayTimeout) }, 502, "status 504"},
}

func TestUpstreamFaultsOverTCP(t *testing.T) {
	for _, tt := range upstreamFaults {
		t.Run(tt.name, func(t *testing.T) {
			checkGoroutines(t)
			srv := httptest.NewServer(tt.upstream)
			defer srv.Close()
			// Short only where the timeout is what is tested: reading 50 MB
			// under the race detector takes longer than that.
			timeout := 5 * time.Second
			if tt.want == 504 {
				timeout = 300 * time.Millisecond
			}
			up := testUpstream(upstreamOptions{BaseURL: srv.URL, Timeout: timeout, MaxInflight: 10, Retry: defaultRetryPolicy()})
			defer up.client.CloseIdleConnections()

			_, err := up.Users(t.Context())
			ae := toAPIError(err)
			if ae.Status != tt.want || !strings.Contains(ae.Message, tt.message) {
				t.Errorf("client told %d %q; want %d containing %q (err: %v)", ae.Status, ae.Message, tt.want, tt.message, err)
			}
		})
	}
}

// TestSlowUpstreamTimesOutAndOthersAreStillServed runs on a fake clock: a
// hanging upstream gives 504 after exactly UPSTREAM_TIMEOUT, and the gateway
// answers other requests meanwhile.
func TestSlowUpstreamTimesOutAndOthersAreStillServed(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		mux := http.NewServeMux()
		mux.Handle("GET /getUsers", hangingUpstream())
		mux.Handle("/", quietMock())
		g := newTestGateway(t, mux, nil)
		start := time.Now()
		done := make(chan *httptest.ResponseRecorder)
		go func() { done <- g.get("/getUsers") }()

		time.Sleep(time.Second)
		if rec := g.get("/getEvents"); rec.Code != 200 {
			t.Errorf("GET /getEvents while another request hangs = %d; want 200", rec.Code)
		}
		if rec := g.get("/health"); rec.Code != 200 {
			t.Errorf("GET /health while another request hangs = %d; want 200", rec.Code)
		}
		rec := <-done
		if took := time.Since(start); rec.Code != 504 || took != g.cfg.UpstreamTimeout {
			t.Errorf("hanging upstream = %d after %v; want 504 after UPSTREAM_TIMEOUT (%v)", rec.Code, took, g.cfg.UpstreamTimeout)
		}
	})
}

func TestDroppedConnectionsReachTheClientAs502(t *testing.T) {
	checkGoroutines(t)
	srv := httptest.NewServer(mock.New(mock.Options{FailRate: 1}))
	defer srv.Close()
	up := testUpstream(upstreamOptions{BaseURL: srv.URL, Timeout: time.Second, MaxInflight: 10, Retry: defaultRetryPolicy()})
	defer up.client.CloseIdleConnections()
	g := newTestGateway(t, quietMock(), nil)
	answers := newMemoryPool(1 << 30)
	users := newListReader("getUsers", up.Users, answers)
	defer users.Close()
	ready := new(atomic.Bool)
	ready.Store(true)
	h := newServer(slog.New(slog.DiscardHandler), g.cfg, services{up: up, users: users, metrics: newMetrics(), answers: answers, ready: ready})
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/getUsers", nil))
	if rec.Code != 502 || errorBody(t, rec) != "could not reach the event service" {
		t.Errorf("GET /getUsers with every connection dropped = %d %q; want 502", rec.Code, rec.Body)
	}
}

func TestUpstreamErrorsAreClassified(t *testing.T) {
	tests := []struct {
		status int
		kind   failure
		fault  bool
	}{
		{404, failNotFound, false},
		{400, failRejected, false},
		{409, failRejected, false},
		{429, failUnavailable, true},
		{503, failUnavailable, true},
		{500, failStatus, true},
		{302, failRedirect, true},
		{307, failRedirect, true},
	}
	for _, tt := range tests {
		synctest.Test(t, func(t *testing.T) {
			up := testUpstream(upstreamOptions{BaseURL: "http://x", Timeout: time.Second, MaxInflight: 1,
				Transport: &handlerTransport{h: statusUpstream(tt.status, "text/plain", "")}})
			err := up.AddEvent(t.Context(), newEvent{ID: "e", Name: "n", UserID: "1"})
			var ue *upstreamError
			if !errors.As(err, &ue) || ue.Kind != tt.kind || upstreamFault(err) != tt.fault {
				t.Errorf("status %d: err %v; want kind %s, fault %v", tt.status, err, tt.kind, tt.fault)
			}
		})
	}
	if upstreamFault(fmt.Errorf("wrapped: %w", &upstreamError{Kind: failCanceled})) {
		t.Error("a cancelled call counted as an upstream fault")
	}
}

// upstreamAttack is one way a hostile Event API answers: routes replaces
// some of the mock's routes; the client sends method path body and must get
// status want with an error containing message ("" for a success, whose
// body check looks at).
type upstreamAttack struct {
	name         string
	routes       map[string]http.HandlerFunc
	edit         func(*config)
	method, path string
	want         int
	message      string
	check        func(t *testing.T, rec *httptest.ResponseRecorder, g *testGateway)
}

// answer serves status with body and the header pairs given.
func answer(status int, body string, header ...string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		for i := 0; i+1 < len(header); i += 2 {
			w.Header().Set(header[i], header[i+1])
		}
		w.WriteHeader(status)
		io.WriteString(w, body)
	}
}

// userWith answers a user whose events are the JSON list given.
func userWith(events string) http.HandlerFunc {
	return answer(200, `{"id": "1", "userName": "alice", "events": `+events+`}`)
}

// idList returns a JSON array of n event ids made by id(i).
func idList(n int, id func(int) string) string {
	ids := make([]string, n)
	for i := range ids {
		ids[i] = strconv.Quote(id(i))
	}
	return "[" + strings.Join(ids, ",") + "]"
}

// TestHostileUpstream attacks the gateway from the upstream's side, over
// real TCP: each attack is answered as the trust boundary says, the gateway
// stays up, nothing reaches a second host the upstream points to, and no
// write the upstream did not confirm is acknowledged.
// The attacks of TestHostileUpstream, by what they go after. Each group is
// a function so that the table reads in parts; stray is the URL of the host
// that must never be reached.

// addBody is the write every write attack sends.
const addBody = `{"name": "x", "userId": "1"}`

// memoryAttacks try to make the gateway hold more than its bounds.
func memoryAttacks() []upstreamAttack {
	return []upstreamAttack{
		{name: "one id listed 1,000,000 times", routes: map[string]http.HandlerFunc{"GET /getUserById/{id}": userWith(idList(1_000_000, func(int) string { return "e" }))},
			path: "/getEventsByUserId/1", want: 502, message: "larger than this gateway accepts", check: noLookups},
		{name: "one id listed 5,000 times", routes: map[string]http.HandlerFunc{"GET /getUserById/{id}": userWith(idList(5000, func(int) string { return "event-1" }))},
			path: "/getEventsByUserId/1", want: 200, check: eventsAre("event-1")},
		{name: "500,000 ids", routes: map[string]http.HandlerFunc{"GET /getUserById/{id}": userWith(idList(500_000, func(i int) string { return "e" + strconv.Itoa(i) }))},
			path: "/getEventsByUserId/1", want: 502, message: "larger than this gateway accepts", check: noLookups},
		{name: "one id more than MAX_USER_EVENTS", routes: map[string]http.HandlerFunc{"GET /getUserById/{id}": userWith(idList(10_001, func(i int) string { return "e" + strconv.Itoa(i) }))},
			path: "/getEventsByUserId/1", want: 502, message: `user "1" has more than 10000 events`, check: noLookups},
		{name: "an 8 MB event", routes: map[string]http.HandlerFunc{"GET /getEventById/{id}": bigEvent(false)},
			path: "/getEventsByUserId/1", want: 502, message: "larger than this gateway accepts (256 KiB)"},
		{name: "an 8 MB event, chunked", routes: map[string]http.HandlerFunc{"GET /getEventById/{id}": bigEvent(true)},
			path: "/getEventsByUserId/1", want: 502, message: "larger than this gateway accepts (256 KiB)"},
		{name: "events past MAX_RESPONSE_BYTES", edit: func(c *config) { c.MaxResponseBytes = 1 << 20 },
			routes: map[string]http.HandlerFunc{
				"GET /getUserById/{id}":  userWith(idList(10, func(i int) string { return "e" + strconv.Itoa(i) })),
				"GET /getEventById/{id}": eventOf("1", 200<<10),
			},
			path: "/getEventsByUserId/1", want: 502, message: "add up to more than 1 MiB"},
		{name: "events compressed 740 times (gzip, asked for or not)", routes: map[string]http.HandlerFunc{"GET /getEventById/{id}": gzipBomb},
			path: "/getEventsByUserId/1", want: 502, message: "not a JSON object"},
		{name: "9 MB of headers", routes: map[string]http.HandlerFunc{"GET /getEventById/{id}": answer(200, `{}`, "X-Junk", strings.Repeat("j", 9<<20))},
			path: "/getEventsByUserId/1", want: 502, message: "could not reach"},
	}
}

// writeAttacks answer a write without confirming it, or send it elsewhere.
func writeAttacks(stray string) []upstreamAttack {
	return []upstreamAttack{
		{name: "write answered with HTML", routes: map[string]http.HandlerFunc{"POST /addEvent": answer(200, "<html>ok</html>", "Content-Type", "text/html")},
			method: "POST", path: "/addEvent", want: 502, message: "did not confirm"},
		{name: "write answered success false", routes: map[string]http.HandlerFunc{"POST /addEvent": answer(200, `{"success": false}`)},
			method: "POST", path: "/addEvent", want: 502, message: "did not confirm", check: func(t *testing.T, rec *httptest.ResponseRecorder, g *testGateway) {
				if n := g.breaker.Snapshot().FailuresInWindow; n != 1 {
					t.Errorf("breaker counted %d faults; want the unconfirmed write as one", n)
				}
			}},
		{name: "write answered success as a string", routes: map[string]http.HandlerFunc{"POST /addEvent": answer(200, `{"success": "true"}`)},
			method: "POST", path: "/addEvent", want: 502, message: "did not confirm"},
		{name: "write answered Success in another case", routes: map[string]http.HandlerFunc{"POST /addEvent": answer(200, `{"Success": true}`)},
			method: "POST", path: "/addEvent", want: 502, message: "did not confirm"},
		{name: "write answered success twice", routes: map[string]http.HandlerFunc{"POST /addEvent": answer(200, `{"success": false, "success": true}`)},
			method: "POST", path: "/addEvent", want: 502, message: "did not confirm"},
		{name: "write confirmed for another id", routes: map[string]http.HandlerFunc{"POST /addEvent": answer(200, `{"success": true, "id": "event-1"}`)},
			method: "POST", path: "/addEvent", want: 502, message: "did not confirm"},
		{name: "write answered 204", routes: map[string]http.HandlerFunc{"POST /addEvent": answer(204, ``)},
			method: "POST", path: "/addEvent", want: 502, message: "did not confirm"},
		{name: "write redirected with 302", routes: map[string]http.HandlerFunc{"POST /addEvent": redirectTo(stray, 302)},
			method: "POST", path: "/addEvent", want: 502, message: "redirect (status 302)"},
		{name: "write redirected with 307", routes: map[string]http.HandlerFunc{"POST /addEvent": redirectTo(stray, 307)},
			method: "POST", path: "/addEvent", want: 502, message: "redirect (status 307)"},
		{name: "write confirmed", method: "POST", path: "/addEvent", want: 200},
	}
}

// redirectAttacks point reads to another host.
func redirectAttacks(stray string) []upstreamAttack {
	return []upstreamAttack{
		{name: "list redirected", routes: map[string]http.HandlerFunc{"GET /getUsers": redirectTo(stray, 302)},
			path: "/getUsers", want: 502, message: "redirect (status 302)"},
		{name: "user redirected", routes: map[string]http.HandlerFunc{"GET /getUserById/{id}": redirectTo(stray, 301)},
			path: "/getEventsByUserId/1", want: 502, message: "redirect (status 301)"},
		{name: "event redirected", routes: map[string]http.HandlerFunc{"GET /getEventById/{id}": redirectTo(stray, 308)},
			path: "/getEventsByUserId/1", want: 502, message: "redirect (status 308)"},
	}
}

// gzipBomb answers the event asked for as 255 KB of JSON compressed to a
// few hundred bytes, with Content-Encoding: gzip whether or not the
// gateway asked for it (it must not: an Accept-Encoding is a 502 here too).
func gzipBomb(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("Accept-Encoding") != "" {
		w.WriteHeader(http.StatusTeapot)
		return
	}
	w.Header().Set("Content-Encoding", "gzip")
	zw := gzip.NewWriter(w)
	fmt.Fprintf(zw, `{"id": %q, "userId": "1", "details": "%s"}`, r.PathValue("id"), strings.Repeat(" ", 255_000))
	zw.Close()
}

// manyMembers answers the event asked for, of user 1, as an object of n
// members.
func manyMembers(n int) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, `{"id": %q, "userId": "1"`, r.PathValue("id"))
		for i := range n - 2 {
			fmt.Fprintf(w, `, "m%d": %d`, i, i)
		}
		io.WriteString(w, "}")
	}
}

// shapeAttacks answer with JSON of the wrong shape, or another user's event.
func shapeAttacks() []upstreamAttack {
	return []upstreamAttack{
		{name: "user is null", routes: map[string]http.HandlerFunc{"GET /getUserById/{id}": answer(200, `null`)},
			path: "/getEventsByUserId/1", want: 502, message: "not an object"},
		{name: "user's events is a string", routes: map[string]http.HandlerFunc{"GET /getUserById/{id}": userWith(`"event-1"`)},
			path: "/getEventsByUserId/1", want: 502, message: "not an object with an array of event ids"},
		{name: "user's events holds a number", routes: map[string]http.HandlerFunc{"GET /getUserById/{id}": userWith(`["event-1", 3]`)},
			path: "/getEventsByUserId/1", want: 502, message: "not an object with an array of event ids"},
		{name: "user's events holds null", routes: map[string]http.HandlerFunc{"GET /getUserById/{id}": userWith(`[null]`)},
			path: "/getEventsByUserId/1", want: 502, message: "not an object with an array of event ids"},
		{name: "user has Events and events", routes: map[string]http.HandlerFunc{"GET /getUserById/{id}": answer(200, `{"events": [], "Events": ["event-2"]}`)},
			path: "/getEventsByUserId/1", want: 502, message: "not an object with an array of event ids"},
		{name: "user without events", routes: map[string]http.HandlerFunc{"GET /getUserById/{id}": answer(200, `{"id": "1"}`)},
			path: "/getEventsByUserId/1", want: 200, check: eventsAre("")},
		{name: "a user listing the ids . and ..", routes: map[string]http.HandlerFunc{"GET /getUserById/{id}": userWith(`["event-1", ".", "..", "event-3"]`)},
			path: "/getEventsByUserId/1", want: 200, check: eventsAre("event-1,event-3")},
		{name: "event of 65 members", routes: map[string]http.HandlerFunc{"GET /getEventById/{id}": manyMembers(65)},
			path: "/getEventsByUserId/1", want: 502, message: "not a JSON object"},
		{name: "event of 64 members", routes: map[string]http.HandlerFunc{"GET /getEventById/{id}": manyMembers(64)},
			path: "/getEventsByUserId/1", want: 200},
		{name: "event is null", routes: map[string]http.HandlerFunc{"GET /getEventById/{id}": answer(200, `null`)},
			path: "/getEventsByUserId/1", want: 502, message: "not a JSON object"},
		{name: "event is another event", routes: map[string]http.HandlerFunc{"GET /getEventById/{id}": answer(200, `{"id": "event-2", "userId": "1"}`)},
			path: "/getEventsByUserId/1", want: 502, message: "another event"},
		{name: "event names its owner twice", routes: map[string]http.HandlerFunc{"GET /getEventById/{id}": answer(200, `{"id": "event-1", "userId": "1", "userId": "2"}`)},
			path: "/getEventsByUserId/1", want: 502, message: "not a JSON object"},
		{name: "event of another user", routes: map[string]http.HandlerFunc{"GET /getUserById/{id}": userWith(`["event-1", "event-2", "event-3"]`)},
			path: "/getEventsByUserId/1", want: 200, check: func(t *testing.T, rec *httptest.ResponseRecorder, g *testGateway) {
				eventsAre("event-1,event-3")(t, rec, g)
				if text := g.get("/metrics").Body.String(); !strings.Contains(text, "eventgate_foreign_events_withheld_total 1\n") {
					t.Error("/metrics does not count the withheld event")
				}
			}},
		{name: "event naming no owner", routes: map[string]http.HandlerFunc{"GET /getEventById/{id}": eventOf("", 0)},
			path: "/getEventsByUserId/1", want: 200, check: eventsAre("")},
	}
}

// retryAfterAttacks send 429 and 503 with absurd or absent Retry-After.
func retryAfterAttacks() []upstreamAttack {
	return []upstreamAttack{
		{name: "429 without Retry-After", routes: map[string]http.HandlerFunc{"GET /getUsers": answer(429, ``)},
			path: "/getUsers", want: 503, message: "retry after 5 seconds", check: retryAfterWithin(5, 5)},
		{name: "Retry-After of 292 years", routes: map[string]http.HandlerFunc{"GET /getUsers": answer(503, ``, "Retry-After", "9223372036")},
			path: "/getUsers", want: 503, message: "retry after 60 seconds", check: retryAfterWithin(60, 60)},
		{name: "Retry-After that wraps around 2^64 nanoseconds", routes: map[string]http.HandlerFunc{"GET /getUsers": answer(503, ``, "Retry-After", "18446744074")},
			path: "/getUsers", want: 503, check: retryAfterWithin(60, 60)},
		{name: "Retry-After past 2^64 seconds", routes: map[string]http.HandlerFunc{"GET /getUsers": answer(503, ``, "Retry-After", "18446744073709551616")},
			path: "/getUsers", want: 503, message: "retry after 60 seconds", check: retryAfterWithin(60, 60)},
		{name: "Retry-After as a date", routes: map[string]http.HandlerFunc{"GET /getUsers": func(w http.ResponseWriter, r *http.Request) {
			answer(503, ``, "Retry-After", time.Now().Add(30*time.Second).UTC().Format(http.TimeFormat))(w, r)
		}}, path: "/getUsers", want: 503, check: retryAfterWithin(29, 30)},
		{name: "Retry-After in the past", routes: map[string]http.HandlerFunc{"GET /getUsers": answer(503, ``, "Retry-After", "Mon, 02 Jan 2006 15:04:05 GMT")},
			path: "/getUsers", want: 503, check: retryAfterWithin(1, 1)},
		{name: "Retry-After of 0", routes: map[string]http.HandlerFunc{"GET /getUsers": answer(503, ``, "Retry-After", "0")},
			path: "/getUsers", want: 503, check: retryAfterWithin(1, 1)},
		{name: "429 on a write", routes: map[string]http.HandlerFunc{"POST /addEvent": answer(429, ``, "Retry-After", "7")},
			method: "POST", path: "/addEvent", want: 503, message: "retry after 7 seconds", check: func(t *testing.T, rec *httptest.ResponseRecorder, g *testGateway) {
				if n := g.breaker.Snapshot().FailuresInWindow; n != 1 {
					t.Errorf("breaker counted %d faults; want the 429 as one", n)
				}
			}},
	}
}

// redirectTo answers with a redirect of the given code to the same path on stray.
func redirectTo(stray string, code int) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, stray+r.URL.Path, code)
	}
}

// bigEvent answers an 8 MB event, with its length declared or chunked.
func bigEvent(chunked bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		body := `{"id": "event-1", "userId": "1", "details": "` + strings.Repeat("x", 8<<20) + `"}`
		if !chunked {
			w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		} else {
			w.Write([]byte(body[:10]))
			w.(http.Flusher).Flush()
			body = body[10:]
		}
		io.WriteString(w, body)
	}
}

// eventOf answers the event asked for as one of user's, with size bytes of details.
func eventOf(user string, size int) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, `{"id": %q, "userId": %q, "details": %q}`, r.PathValue("id"), user, strings.Repeat("x", size))
	}
}

// noLookups checks that the gateway looked up no event.
func noLookups(t *testing.T, rec *httptest.ResponseRecorder, g *testGateway) {
	if n := upstreamCalls(g, "getEventById"); n != 0 {
		t.Errorf("%d event lookups were made; want none", n)
	}
}

// eventsAre checks the ids of the events answered.
func eventsAre(want string) func(*testing.T, *httptest.ResponseRecorder, *testGateway) {
	return func(t *testing.T, rec *httptest.ResponseRecorder, g *testGateway) {
		if got := strings.Join(eventIDs(t, rec), ","); got != want {
			t.Errorf("events %q; want %q", got, want)
		}
	}
}

// retryAfterWithin checks the answer's Retry-After, in seconds.
func retryAfterWithin(lo, hi int) func(*testing.T, *httptest.ResponseRecorder, *testGateway) {
	return func(t *testing.T, rec *httptest.ResponseRecorder, g *testGateway) {
		if n, err := strconv.Atoi(rec.Header().Get("Retry-After")); err != nil || n < lo || n > hi {
			t.Errorf("Retry-After %q; want %d to %d seconds", rec.Header().Get("Retry-After"), lo, hi)
		}
	}
}

// TestHostileUpstream attacks the gateway from the upstream's side, over
// real TCP: each attack is answered as the trust boundary says, the gateway
// stays up, nothing reaches a second host the upstream points to, and no
// write the upstream did not confirm is acknowledged.
func TestHostileUpstream(t *testing.T) {
	var strayCalls atomic.Int64
	stray := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		strayCalls.Add(1)
		io.WriteString(w, `[{"id": "event-9", "userId": "1"}]`)
	}))
	defer stray.Close()
	attacks := slices.Concat(memoryAttacks(), writeAttacks(stray.URL), redirectAttacks(stray.URL), shapeAttacks(), retryAfterAttacks())
	for _, a := range attacks {
		t.Run(a.name, func(t *testing.T) {
			checkGoroutines(t)
			strayCalls.Store(0)
			runAttack(t, a)
			if n := strayCalls.Load(); n != 0 {
				t.Errorf("the host the upstream pointed to received %d requests; want none", n)
			}
		})
	}
}

// runAttack serves the attack's upstream over TCP and checks what the
// client is told, that nothing unconfirmed was acknowledged, and that the
// gateway still answers.
func runAttack(t *testing.T, a upstreamAttack) {
	m := mock.New(mock.Options{})
	mux := http.NewServeMux()
	for pattern, h := range a.routes {
		mux.Handle(pattern, h)
	}
	mux.Handle("/", m)
	up := httptest.NewServer(mux)
	defer up.Close()
	g := newGatewayAt(t, up.URL, nil, a.edit)
	defer g.close()

	var rec *httptest.ResponseRecorder
	if a.method == "POST" {
		rec = g.post(a.path, addBody)
	} else {
		rec = g.get(a.path)
	}
	if rec.Code != a.want {
		t.Fatalf("%s %s = %d %.300q; want %d", a.method, a.path, rec.Code, rec.Body, a.want)
	}
	if a.message != "" {
		if msg := errorBody(t, rec); !strings.Contains(msg, a.message) {
			t.Errorf("error %q; want it to contain %q", msg, a.message)
		}
	}
	if a.check != nil {
		a.check(t, rec, g)
	}
	if rec.Code == 200 && a.method == "POST" {
		if _, stored := m.Event(addedID(rec.Body.String())); !stored {
			t.Errorf("acknowledged %q, which the upstream did not store", rec.Body)
		}
	}
	if rec := g.get("/health"); rec.Code != 200 {
		t.Errorf("after the attack, GET /health = %d; want 200", rec.Code)
	}
}

// upstreamCalls returns how many calls of kind op the gateway has made, as
// /metrics counts them.
func upstreamCalls(g *testGateway, op string) int {
	total := 0
	prefix := `eventgate_upstream_request_duration_seconds_count{call="` + op + `",`
	for _, line := range strings.Split(g.get("/metrics").Body.String(), "\n") {
		if rest, ok := strings.CutPrefix(line, prefix); ok {
			n, _ := strconv.Atoi(rest[strings.LastIndexByte(rest, ' ')+1:])
			total += n
		}
	}
	return total
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
	up := testUpstream(upstreamOptions{BaseURL: "http://upstream.test", Timeout: time.Second, MaxInflight: 1, Transport: g.transport})

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

// TestTransportNeverReplaysByItself warms the connection pool with 20 idle
// connections, then has the upstream drop every connection that asks for
// /getUsers without answering. Go's transport would re-send the request on
// each idle connection in turn; eventgate's reads reach the upstream only
// as often as its own retries allow (three attempts), and the last attempt
// of each is one eventgate counted.
func TestTransportNeverReplaysByItself(t *testing.T) {
	checkGoroutines(t)
	const warm = 20
	var arrived sync.WaitGroup
	arrived.Add(warm)
	var users atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/getUsers" {
			users.Add(1)
			conn, _, _ := http.NewResponseController(w).Hijack()
			conn.Close()
			return
		}
		if r.URL.Path == "/getUserById/u" {
			io.WriteString(w, `{"id":"u","events":["e0","e1","e2","e3","e4","e5","e6","e7","e8","e9","e10","e11","e12","e13","e14","e15","e16","e17","e18","e19"]}`)
			return
		}
		arrived.Done()
		arrived.Wait() // all 20 lookups at once: 20 connections, idle afterwards
		id := strings.TrimPrefix(r.URL.Path, "/getEventById/")
		fmt.Fprintf(w, `{"id":%q,"userId":"u"}`, id)
	}))
	defer srv.Close()
	g := newGatewayAt(t, srv.URL, nil, nil)
	defer g.close()
	if rec := g.get("/getEventsByUserId/u"); rec.Code != 200 {
		t.Fatalf("warming with a user of %d events = %d", warm, rec.Code)
	}
	rec := g.get("/getUsers")
	if rec.Code != 502 {
		t.Errorf("/getUsers with every connection dropped = %d; want 502", rec.Code)
	}
	if n := users.Load(); n > 3 {
		t.Errorf("upstream received /getUsers %d times for one request; want at most 3, the attempts eventgate made", n)
	}
}

// TestWaitingForASlotIsNotTheUpstreamsTime: with 15 upstream slots and two
// users of 10 events each at 1.5 s a lookup, some of the second user's
// lookups wait 1.5 s for a slot and then take 1.5 s: 3 s in all, past UPSTREAM_TIMEOUT
// (2 s), which starts only once a call is sent. Both are 200, and no call
// is counted as an upstream timeout; with hedging on, as by default.
func TestWaitingForASlotIsNotTheUpstreamsTime(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		api := newFakeEventAPI(1500 * time.Millisecond)
		api.addUser("a", 10)
		api.users["b"] = []string{"b0", "b1", "b2", "b3", "b4", "b5", "b6", "b7", "b8", "b9"}
		// 15 slots: a's user and 10 lookups, b's user, and 3 of b's lookups
		// run at once; b's other 7 wait for a's to end.
		g := newTestGateway(t, api, func(c *config) { c.UpstreamMaxInflight, c.HedgeDelay = 15, 0 })
		var wg sync.WaitGroup
		codes := make([]int, 2)
		for i, user := range []string{"a", "b"} {
			wg.Go(func() {
				codes[i] = g.get("/getEventsByUserId/" + user).Code
			})
			time.Sleep(time.Millisecond) // a's lookups take the slots first
		}
		wg.Wait()
		if codes[0] != 200 || codes[1] != 200 {
			t.Errorf("two users at once = %v; want both 200", codes)
		}
		if m := g.get("/metrics").Body.String(); strings.Contains(m, `outcome="timeout"`) {
			t.Errorf("/metrics counts upstream timeouts:\n%s", m)
		}
	})
}

// TestAWriteThatWaitedTooLongIsNotSent: the only upstream slot is held by a
// read that hangs; a keyed write waits for it until the request's deadline,
// and is answered 503 with Retry-After as the gateway's own overload.
// Nothing is sent, the breaker counts no fault, and the key keeps no trace:
// once the slot is free, the same key with another body is stored.
func TestAWriteThatWaitedTooLongIsNotSent(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var writes atomic.Int32
		m := quietMock()
		hang := make(chan struct{})
		g := newTestGateway(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method == http.MethodPost {
				writes.Add(1)
				m.ServeHTTP(w, r)
				return
			}
			<-hang
		}), func(c *config) {
			c.UpstreamMaxInflight, c.UpstreamTimeout = 1, time.Minute
			c.RequestTimeout = 61 * time.Second
		})
		read := make(chan int)
		go func() { read <- g.get("/getUsers").Code }()
		synctest.Wait()
		rec := g.post("/addEvent", `{"name": "n", "userId": "1"}`, "Idempotency-Key", "k")
		if rec.Code != 503 || rec.Header().Get("Retry-After") == "" || !strings.Contains(rec.Body.String(), "gateway is busy") {
			t.Errorf("a write that found no slot in time = %d %q, Retry-After %q; want 503 saying the gateway is busy, with Retry-After",
				rec.Code, rec.Body, rec.Header().Get("Retry-After"))
		}
		if n := writes.Load(); n != 0 {
			t.Errorf("upstream received %d writes; want none", n)
		}
		if s := g.breaker.Snapshot(); s.FailuresInWindow != 0 {
			t.Errorf("breaker counts %d faults; want none: the gateway waited, not the upstream", s.FailuresInWindow)
		}
		close(hang)
		<-read
		if rec := g.post("/addEvent", `{"name": "other", "userId": "1"}`, "Idempotency-Key", "k"); rec.Code != 200 {
			t.Errorf("the key of a write never sent, with another body = %d %q; want 200: no trace kept", rec.Code, rec.Body)
		}
	})
}

// TestAnEventKeepsNoLargerBuffer: an event padded with 240 KB of
// whitespace, declared or chunked, is kept as a buffer of its own size, so
// the cache holds what it counts and not the buffer it was read into.
func TestAnEventKeepsNoLargerBuffer(t *testing.T) {
	pad := strings.Repeat(" ", 120_000)
	for _, chunked := range []bool{false, true} {
		up := testUpstream(upstreamOptions{BaseURL: "http://upstream.test", Timeout: time.Second, MaxInflight: 1,
			Transport: &handlerTransport{h: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if chunked {
					w.(http.Flusher).Flush()
				}
				io.WriteString(w, pad+`{"id": "e", "userId": "1"}`+pad)
			})}})
		ev, err := up.Event(t.Context(), "e")
		if err != nil || string(ev.JSON) != `{"id": "e", "userId": "1"}` || cap(ev.JSON) > 2*len(ev.JSON) {
			t.Errorf("chunked %v: event %.40q of capacity %d, %v; want the object alone in a buffer about its length", chunked, ev.JSON, cap(ev.JSON), err)
		}
	}
}

// TestUpstreamAuthorizationOnEveryCall: with UPSTREAM_AUTHORIZATION set,
// every upstream call (lists, a user, its events, a write) carries it as
// Authorization, and never the client's own credential, even with
// API_TOKEN on; without it, no call carries an Authorization at all.
func TestUpstreamAuthorizationOnEveryCall(t *testing.T) {
	for _, credential := range []string{"Bearer upstream-s3cret", ""} {
		m := quietMock()
		var mu sync.Mutex
		seen := map[string]string{} // path → Authorization
		g := newTestGateway(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			mu.Lock()
			seen[r.URL.Path] = r.Header.Get("Authorization")
			mu.Unlock()
			m.ServeHTTP(w, r)
		}), func(c *config) { c.UpstreamAuthorization, c.APIToken = credential, "client-token" })
		g.get("/getUsers")
		g.get("/getEvents")
		g.get("/getEventsByUserId/1")
		if rec := g.post("/addEvent", `{"name": "x", "userId": "1"}`, "Authorization", "Bearer client-token"); rec.Code != 200 {
			t.Fatalf("POST /addEvent = %d", rec.Code)
		}
		mu.Lock()
		if len(seen) < 5 {
			t.Errorf("only %d upstream paths were called: %v", len(seen), seen)
		}
		for path, got := range seen {
			if got != credential {
				t.Errorf("with UPSTREAM_AUTHORIZATION %q, %s carried Authorization %q", credential, path, got)
			}
		}
		mu.Unlock()
	}
}

// TestUpstreamAuthorizationStaysSecret: the credential is in no log line
// (start-up included); a bad one's error says its length, not its bytes;
// UPSTREAM_AUTHORIZATION_FILE is read, trimmed of its newline, and both at
// once are refused.
func TestUpstreamAuthorizationStaysSecret(t *testing.T) {
	checkGoroutines(t)
	logs, stop, errc, _ := startRun(t, map[string]string{"UPSTREAM_AUTHORIZATION": "Bearer upstream-s3cret", "LOG_LEVEL": "debug"})
	stop()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if text := logs.String(); strings.Contains(text, "s3cret") || !strings.Contains(text, "upstream_authorization") {
		t.Errorf("start-up log shows the credential, or does not say one is set:\n%s", text)
	}
	_, err := loadConfig(envOf(map[string]string{"UPSTREAM_AUTHORIZATION": "Bearer s3cret\r\nX-Injected: 1"}))
	if err == nil || strings.Contains(err.Error(), "s3cret") || !strings.Contains(err.Error(), "UPSTREAM_AUTHORIZATION") {
		t.Errorf("a credential that would end its header: %v; want an error naming the variable, not the value", err)
	}
	file := filepath.Join(t.TempDir(), "credential")
	if err := writeFile(file, "Bearer from-a-file\n"); err != nil {
		t.Fatal(err)
	}
	if c, err := loadConfig(envOf(map[string]string{"UPSTREAM_AUTHORIZATION_FILE": file})); err != nil || c.UpstreamAuthorization != "Bearer from-a-file" {
		t.Errorf("from a file: %q, %v; want the file's line", c.UpstreamAuthorization, err)
	}
	_, err = loadConfig(envOf(map[string]string{"UPSTREAM_AUTHORIZATION_FILE": file, "UPSTREAM_AUTHORIZATION": "Bearer s3cret"}))
	if err == nil || strings.Contains(err.Error(), "s3cret") || strings.Contains(err.Error(), "from-a-file") {
		t.Errorf("both set: %v; want an error showing neither", err)
	}
}

// TestUpstreamAuthorizationNeverThroughAPlainProxy: with an http upstream
// and a proxy from the environment, which would read the credential, the
// start stops and says why (in a process of its own: net/http reads the
// proxy variables once per process).
func TestUpstreamAuthorizationNeverThroughAPlainProxy(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second) // a start that does not stop is killed
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "EVENTGATE_RUN_MAIN=1", "PORT=0", "SHUTDOWN_DRAIN=0s",
		"UPSTREAM_URL=http://events.internal.test", "UPSTREAM_AUTHORIZATION=Bearer s3cret", "HTTP_PROXY=http://127.0.0.1:9", "NO_PROXY=")
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "in the clear") || strings.Contains(string(out), "s3cret") {
		t.Errorf("http upstream behind a proxy, with a credential: %v\n%s\nwant a refusal to start that names the risk, not the credential", err, out)
	}
}

// TestACallWhoseCallerLeftIsNeverSent: a read whose caller has already
// gone (a cancelled request, a reset stream) is not sent, even when a slot
// is free, and is no attempt in /metrics.
func TestACallWhoseCallerLeftIsNeverSent(t *testing.T) {
	tr := &handlerTransport{h: quietMock()}
	m := newMetrics()
	up := testUpstream(upstreamOptions{BaseURL: "http://upstream.test", Timeout: time.Second, MaxInflight: 10, Transport: tr, Metrics: m})
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	for range 50 {
		if _, err := up.Users(ctx); !unsent(err) {
			t.Fatalf("a read for a caller that left = %v; want an unsent error", err)
		}
	}
	if n := tr.calls.Load(); n != 0 {
		t.Errorf("%d of 50 reads for a caller that left were sent; want none", n)
	}
}
