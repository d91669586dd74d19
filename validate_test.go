package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"
	"unicode/utf8"
)

// TestSlowWriteBodiesAreNotTheUpstreamsFault sends POST /addEvent over real
// server connections whose bodies' last byte arrives late, with the default
// REQUEST_TIMEOUT (10s) and UPSTREAM_TIMEOUT (2s), to an upstream that takes
// 1s to store: a body complete while 2s are left is sent and stored, its
// write running past the 8s mark; a later one is answered 408 at the 8s
// mark and never sent. The breaker counts none of it, so an honest write
// after them succeeds.
func TestSlowWriteBodiesAreNotTheUpstreamsFault(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m := quietMock()
		g := newTestGateway(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			time.Sleep(time.Second)
			m.ServeHTTP(w, r)
		}), nil)
		l := servePipes(t, g.cfg, g.handler, nil)
		write := func(name string, lastByteAt time.Duration) (int, string, time.Duration) {
			body := fmt.Sprintf(`{"name": %q, "userId": "1"}`, name)
			head := fmt.Sprintf("POST /addEvent HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", len(body), body[:len(body)-1])
			return exchange(l.dial(), head, lastByteAt, body[len(body)-1:])
		}

		tests := []struct {
			name       string
			lastByteAt time.Duration
			want       int
		}{
			{"in time", 7900 * time.Millisecond, 200},
			{"just too late", 8100 * time.Millisecond, 408},
			{"at the request deadline", 9990 * time.Millisecond, 408},
			{"after it", 11 * time.Second, 408},
		}
		codes := make([]int, len(tests))
		bodies := make([]string, len(tests))
		answeredAt := make([]time.Duration, len(tests))
		var wg sync.WaitGroup
		for i, tt := range tests {
			wg.Go(func() { codes[i], bodies[i], answeredAt[i] = write(tt.name, tt.lastByteAt) })
		}
		wg.Wait()
		for i, tt := range tests {
			_, stored := m.Event(addedID(bodies[i]))
			if codes[i] != tt.want || (tt.want == 200) != stored {
				t.Errorf("body completed at %v = %d %q, stored %v; want %d", tt.lastByteAt, codes[i], bodies[i], stored, tt.want)
			}
			if tt.want == 408 && answeredAt[i] != 8*time.Second {
				t.Errorf("body completed at %v answered after %v; want 8s, as soon as it could no longer be sent in time", tt.lastByteAt, answeredAt[i])
			}
		}
		if n := g.transport.calls.Load(); n != 1 {
			t.Errorf("the upstream received %d writes; want 1, the one in time", n)
		}
		if s := g.breaker.Snapshot(); s.State != "closed" || s.FailuresInWindow != 0 {
			t.Errorf("breaker %s with %d faults; want closed with none: slow clients are not the upstream's fault", s.State, s.FailuresInWindow)
		}
		if code, body, _ := write("honest", 0); code != 200 {
			t.Errorf("an honest write after the slow ones = %d %q; want 200", code, body)
		}
	})
}

// slowReader returns its text after a wait, as a client trickling a body.
type slowReader struct {
	wait time.Duration
	r    io.Reader
}

func (s *slowReader) Read(p []byte) (int, error) {
	time.Sleep(s.wait)
	s.wait = 0
	return s.r.Read(p)
}

// TestLateBodyWithoutAReadDeadline covers a connection that cannot take a
// read deadline: a body that has arrived with less than UPSTREAM_TIMEOUT
// left is still refused, with no upstream call.
func TestLateBodyWithoutAReadDeadline(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := newTestGateway(t, quietMock(), func(c *config) { c.RequestTimeout = 3 * time.Second })
		req := httptest.NewRequest("POST", "/addEvent", &slowReader{wait: 1500 * time.Millisecond, r: strings.NewReader(`{"name": "x", "userId": "1"}`)})
		req.Header.Set("Content-Type", "application/json")
		rec := g.serve(req)
		if rec.Code != 408 || g.transport.calls.Load() != 0 {
			t.Errorf("body complete with 1.5s of REQUEST_TIMEOUT=3s left = %d %q after %d upstream calls; want 408 and none", rec.Code, rec.Body, g.transport.calls.Load())
		}
		if s := g.breaker.Snapshot(); s.FailuresInWindow != 0 {
			t.Errorf("breaker counted %d faults; want none", s.FailuresInWindow)
		}
	})
}

// TestHostileRequests sends requests a careless or malicious client could
// send: each gets the right 4xx with a JSON error, and none reaches the
// upstream.
var nested = strings.Repeat("[", 20_000) + strings.Repeat("]", 20_000) // past the decoder's depth limit, within the size limit

var hostileRequests = []struct {
	name        string
	method      string
	path        string
	contentType string
	body        string
	header      [2]string
	want        int
}{
	{"malformed JSON", "POST", "/addEvent", "application/json", `{"name":`, nil2, 400},
	{"name of a zero-width space", "POST", "/addEvent", "application/json", `{"name": "\u200b", "userId": "1"}`, nil2, 400},
	{"name of a byte-order mark", "POST", "/addEvent", "application/json", `{"name": "\ufeff\ufeff", "userId": "1"}`, nil2, 400},
	{"name with a bidi override", "POST", "/addEvent", "application/json", `{"name": "invoice\u202egpj.exe", "userId": "1"}`, nil2, 400},
	{"details with a bidi isolate", "POST", "/addEvent", "application/json", `{"name": "ok", "userId": "1", "details": "a\u2066b"}`, nil2, 400},
	{"name of spaces and marks only", "POST", "/addEvent", "application/json", `{"name": "\u3000\u200d", "userId": "1"}`, nil2, 400},
	{"truncated JSON", "POST", "/addEvent", "application/json", `{"name": "a", "userId": "1"`, nil2, 400},
	{"deeply nested value", "POST", "/addEvent", "application/json", `{"name": ` + nested + `}`, nil2, 400},
	{"deeply nested body", "POST", "/addEvent", "application/json", nested, nil2, 400},
	{"name is a number", "POST", "/addEvent", "application/json", `{"name": 1, "userId": "1"}`, nil2, 400},
	{"name is an array", "POST", "/addEvent", "application/json", `{"name": ["a"], "userId": "1"}`, nil2, 400},
	{"userId is an object", "POST", "/addEvent", "application/json", `{"name": "a", "userId": {}}`, nil2, 400},
	{"userId is a fraction", "POST", "/addEvent", "application/json", `{"name": "a", "userId": 1.5}`, nil2, 400},
	{"userId is negative", "POST", "/addEvent", "application/json", `{"name": "a", "userId": -1}`, nil2, 400},
	{"userId is a boolean", "POST", "/addEvent", "application/json", `{"name": "a", "userId": false}`, nil2, 400},
	{"userId holds a slash", "POST", "/addEvent", "application/json", `{"name": "a", "userId": "1/../2"}`, nil2, 400},
	{"userId is too long", "POST", "/addEvent", "application/json", `{"name": "a", "userId": "` + strings.Repeat("1", 129) + `"}`, nil2, 400},
	{"details is a number", "POST", "/addEvent", "application/json", `{"name": "a", "userId": "1", "details": 5}`, nil2, 400},
	{"empty name", "POST", "/addEvent", "application/json", `{"name": "", "userId": "1"}`, nil2, 400},
	{"blank name", "POST", "/addEvent", "application/json", `{"name": " \t ", "userId": "1"}`, nil2, 400},
	{"huge name", "POST", "/addEvent", "application/json", `{"name": "` + strings.Repeat("é", 201) + `", "userId": "1"}`, nil2, 400},
	{"huge details", "POST", "/addEvent", "application/json", `{"name": "a", "userId": "1", "details": "` + strings.Repeat("x", 2001) + `"}`, nil2, 400},
	{"escaped NUL in name", "POST", "/addEvent", "application/json", `{"name": "a\u0000b", "userId": "1"}`, nil2, 400},
	{"escaped NUL in userId", "POST", "/addEvent", "application/json", `{"name": "a", "userId": "1\u0000"}`, nil2, 400},
	{"raw NUL byte", "POST", "/addEvent", "application/json", "{\"name\": \"a\x00\", \"userId\": \"1\"}", nil2, 400},
	{"bell in name", "POST", "/addEvent", "application/json", `{"name": "a\u0007", "userId": "1"}`, nil2, 400},
	{"invalid UTF-8", "POST", "/addEvent", "application/json", "{\"name\": \"\xff\xfe\", \"userId\": \"1\"}", nil2, 400},
	{"unknown field", "POST", "/addEvent", "application/json", `{"name": "a", "userId": "1", "admin": true}`, nil2, 400},
	{"duplicate userId", "POST", "/addEvent", "application/json", `{"name": "x", "userId": "1", "userId": "2"}`, nil2, 400},
	{"duplicate through an escape", "POST", "/addEvent", "application/json", `{"name": "x", "userId": "1", "user\u0049d": "2"}`, nil2, 400},
	{"keys in another case", "POST", "/addEvent", "application/json", `{"NAME": "x", "UserId": "1"}`, nil2, 400},
	{"a case variant beside the key", "POST", "/addEvent", "application/json", `{"name": "x", "userId": "1", "USERID": "2"}`, nil2, 400},
	{"lone high surrogate", "POST", "/addEvent", "application/json", `{"name": "\ud800", "userId": "1"}`, nil2, 400},
	{"lone low surrogate in details", "POST", "/addEvent", "application/json", `{"name": "x", "userId": "1", "details": "a\udc00"}`, nil2, 400},
	{"surrogate pair split by a letter", "POST", "/addEvent", "application/json", `{"name": "\ud83dx\ude00", "userId": "1"}`, nil2, 400},
	{"two objects", "POST", "/addEvent", "application/json", `{"name": "a", "userId": "1"} {"name": "b", "userId": "1"}`, nil2, 400},
	{"trailing garbage", "POST", "/addEvent", "application/json", `{"name": "a", "userId": "1"} x`, nil2, 400},
	{"empty body", "POST", "/addEvent", "application/json", ``, nil2, 400},
	{"null body", "POST", "/addEvent", "application/json", `null`, nil2, 400},
	{"array body", "POST", "/addEvent", "application/json", `[]`, nil2, 400},
	{"string body", "POST", "/addEvent", "application/json", `"event"`, nil2, 400},
	{"10 MB body", "POST", "/addEvent", "application/json", `{"name": "` + strings.Repeat("x", 10<<20) + `"}`, nil2, 413},
	{"missing Content-Type", "POST", "/addEvent", "", `{"name": "a", "userId": "1"}`, nil2, 415},
	{"text Content-Type", "POST", "/addEvent", "text/plain", `{"name": "a", "userId": "1"}`, nil2, 415},
	{"form Content-Type", "POST", "/addEvent", "multipart/form-data; boundary=x", `{"name": "a", "userId": "1"}`, nil2, 415},
	{"malformed Content-Type", "POST", "/addEvent", "application/json; ===", `{"name": "a", "userId": "1"}`, nil2, 415},
	{"bad Idempotency-Key", "POST", "/addEvent", "application/json", `{"name": "a", "userId": "1"}`, [2]string{"Idempotency-Key", "a b"}, 400},
	{"encoded slash in id", "GET", "/getEventsByUserId/1%2Fx", "", "", nil2, 400},
	{"encoded dots in id", "GET", "/getEventsByUserId/%2E%2E", "", "", nil2, 400},
	{"dot segments in path", "GET", "/getEventsByUserId/../addEvent", "", "", nil2, 400},
	{"very long id", "GET", "/getEventsByUserId/" + strings.Repeat("7", 10_000), "", "", nil2, 400},
	{"unicode id", "GET", "/getEventsByUserId/%E2%80%AE1", "", "", nil2, 400},
	{"unknown method on a read", "PATCH", "/getUsers", "", "", nil2, 405},
	{"made-up method", "BREW", "/addEvent", "", "", nil2, 405},
	{"unknown path", "GET", "/admin", "", "", nil2, 404},
}

func TestHostileRequests(t *testing.T) {
	g := newTestGateway(t, quietMock(), nil)
	for _, tt := range hostileRequests {
		t.Run(tt.name, func(t *testing.T) {
			req := httptest.NewRequest(tt.method, "/", strings.NewReader(tt.body))
			req.URL.Path, req.URL.RawPath = mustUnescape(t, tt.path), tt.path
			if tt.contentType != "" {
				req.Header.Set("Content-Type", tt.contentType)
			}
			if tt.header[0] != "" {
				req.Header.Set(tt.header[0], tt.header[1])
			}
			before := g.transport.calls.Load()
			rec := g.serve(req)
			if rec.Code != tt.want {
				t.Errorf("%s %.60s = %d %.200q; want %d", tt.method, tt.path, rec.Code, rec.Body, tt.want)
			}
			errorBody(t, rec)
			if n := g.transport.calls.Load() - before; n != 0 {
				t.Errorf("the upstream received %d calls; want none", n)
			}
		})
	}
}

var nil2 [2]string

func mustUnescape(t *testing.T, p string) string {
	t.Helper()
	u, err := url.PathUnescape(p)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

func FuzzParseAddEvent(f *testing.F) {
	for _, seed := range []string{
		`{"name": "Party", "userId": "1", "details": "x"}`,
		`{"name": "Party", "userId": 3}`,
		`{"name": " ", "userId": ""}`,
		`{"name": "a\u0000", "userId": 1.5}`,
		`[{"name": "a"}]`,
		`{"name": "a", "userId": "1"} {}`,
		`{"name": "a", "userId": "1", "extra": null}`,
		"{\"name\": \"\xff\"}",
		`{"name": "a", "userId": "1", "userId": "2"}`,
		`{"NAME": "a", "userId": "1"}`,
		`{"name": "\ud800", "userId": "1"}`,
	} {
		f.Add(seed)
	}
	idChars := regexp.MustCompile(`^[A-Za-z0-9._-]{1,128}$`)
	f.Fuzz(func(t *testing.T, body string) {
		req, err := parseAddEvent("application/json", []byte(body))
		if err != nil {
			ae, ok := err.(*apiError)
			if !ok || ae.Status != 400 || ae.Message == "" {
				t.Fatalf("parseAddEvent(%q) error = %#v; want a 400 apiError with a message", body, err)
			}
			return
		}
		if n := len([]rune(req.Name)); n < 1 || n > maxNameLength || req.Name != strings.TrimSpace(req.Name) {
			t.Errorf("parseAddEvent(%q) accepted name %q", body, req.Name)
		}
		if !idChars.MatchString(req.UserID) || req.UserID == "." || req.UserID == ".." {
			t.Errorf("parseAddEvent(%q) accepted userId %q", body, req.UserID)
		}
		if len([]rune(req.Details)) > maxDetailsLen {
			t.Errorf("parseAddEvent(%q) accepted %d characters of details", body, len([]rune(req.Details)))
		}
		// What was accepted reads the same to any decoder: encoding/json
		// (case-insensitive, last duplicate wins) finds exactly these fields.
		var std map[string]json.RawMessage
		if err := json.Unmarshal([]byte(body), &std); err != nil {
			t.Fatalf("parseAddEvent(%q) accepted what encoding/json refuses: %v", body, err)
		}
		var lenient struct{ Name, UserID, Details *string }
		json.Unmarshal([]byte(body), &lenient)
		for k := range std {
			if k != "name" && k != "userId" && k != "details" {
				t.Errorf("parseAddEvent(%q) accepted the key %q", body, k)
			}
		}
		if lenient.Name == nil || strings.TrimSpace(*lenient.Name) != req.Name || strings.ContainsRune(req.Name+req.Details, utf8.RuneError) {
			t.Errorf("parseAddEvent(%q) = %+v; a lenient decoder reads name %v", body, req, lenient.Name)
		}
	})
}

func TestIdempotencyKeyHeader(t *testing.T) {
	tests := []struct {
		values []string
		want   string // "" for a refusal
	}{
		{[]string{`8e03978e-40d5-43e8-bc93-6894a57f9324`}, "8e03978e-40d5-43e8-bc93-6894a57f9324"},
		{[]string{`"8e03978e-40d5-43e8-bc93-6894a57f9324"`}, "8e03978e-40d5-43e8-bc93-6894a57f9324"},
		{[]string{`  "spaces inside are allowed"  `}, "spaces inside are allowed"},
		{[]string{`"a \"quoted\" \\ key"`}, `a "quoted" \ key`},
		{[]string{`"` + strings.Repeat("k", 255) + `"`}, strings.Repeat("k", 255)},
		{[]string{`"` + strings.Repeat("k", 256) + `"`}, ""},
		{[]string{`"unterminated`}, ""},
		{[]string{`"a" trailing`}, ""},
		{[]string{`"bad \n escape"`}, ""},
		{[]string{"\"tab\tinside\""}, ""},
		{[]string{`""`}, ""},
		{[]string{``}, ""},
		{[]string{`bare with spaces`}, ""},
		{[]string{"caf\u00e9"}, ""},
		{[]string{"a", "b"}, ""},
	}
	for _, tt := range tests {
		got, err := parseIdempotencyKey(tt.values)
		if got != tt.want || (err == nil) != (tt.want != "") {
			t.Errorf("parseIdempotencyKey(%q) = %q, %v; want %q", tt.values, got, err, tt.want)
		}
		if err != nil && toAPIError(err).Status != 400 {
			t.Errorf("parseIdempotencyKey(%q) refused with %v; want 400", tt.values, err)
		}
	}
}
