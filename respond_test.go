package main

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"testing/synctest"
	"time"
)

// TestEvery503SaysWhenToComeBack: even when the breaker's next trial is
// due this instant, a 503 carries a Retry-After of at least one second.
func TestEvery503SaysWhenToComeBack(t *testing.T) {
	for _, err := range []error{&openError{RetryAfter: 0}, &openError{RetryAfter: 200 * time.Millisecond}, errorf(503, "shutting down")} {
		rec := httptest.NewRecorder()
		writeError(rec, httptest.NewRequest("POST", "/addEvent", nil), err)
		if rec.Code != 503 || rec.Header().Get("Retry-After") != "1" {
			t.Errorf("%v answered %d with Retry-After %q; want 503 with 1", err, rec.Code, rec.Header().Get("Retry-After"))
		}
	}
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

// TestErrorTable checks every row of the README's error table.
var longBody = `{"name": "` + strings.Repeat("x", 70<<10) + `", "userId": "1"}`

var errorTable = []struct {
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

func TestErrorTable(t *testing.T) {
	for _, tt := range errorTable {
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
