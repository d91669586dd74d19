package main

import (
	"bufio"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

// TestHostileRequests sends requests a careless or malicious client could
// send: each gets the right 4xx with a JSON error, and none reaches the
// upstream.
func TestHostileRequests(t *testing.T) {
	nested := strings.Repeat("[", 20_000) + strings.Repeat("]", 20_000) // past the decoder's depth limit, within the size limit
	tests := []struct {
		name        string
		method      string
		path        string
		contentType string
		body        string
		header      [2]string
		want        int
	}{
		{"malformed JSON", "POST", "/addEvent", "application/json", `{"name":`, nil2, 400},
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
	g := newTestGateway(t, quietMock(), nil)
	for _, tt := range tests {
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

// startRealServer serves the gateway's handler over TCP with the timeouts
// run sets, except a read timeout short enough for a test.
func startRealServer(t *testing.T, g *testGateway) string {
	t.Helper()
	srv := httptest.NewUnstartedServer(g.handler)
	prod := newHTTPServer(g.cfg, g.handler, slog.New(slog.DiscardHandler))
	srv.Config.ReadHeaderTimeout = prod.ReadHeaderTimeout
	srv.Config.MaxHeaderBytes = prod.MaxHeaderBytes
	srv.Config.ReadTimeout = 300 * time.Millisecond
	srv.Start()
	t.Cleanup(srv.Close)
	return srv.Listener.Addr().String()
}

// rawRequest writes raw to a new connection and returns the status and
// body of the answer.
func rawRequest(t *testing.T, addr, raw string) (string, string) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second)) // a safety net, never reached when the server is right
	if _, err := io.WriteString(c, raw); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("reading the answer: %v", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.Status, string(body)
}

// TestHostileConnections covers what only a real connection can send: an
// oversized header block and a body that stops arriving.
func TestHostileConnections(t *testing.T) {
	checkGoroutines(t)
	// The body must arrive while UPSTREAM_TIMEOUT is left of REQUEST_TIMEOUT:
	// here within 300ms.
	g := newTestGateway(t, quietMock(), func(c *config) { c.RequestTimeout = c.UpstreamTimeout + 300*time.Millisecond })
	addr := startRealServer(t, g)

	huge := "GET /getUsers HTTP/1.1\r\nHost: x\r\nX-Junk: " + strings.Repeat("a", 70<<10) + "\r\n\r\n"
	if status, _ := rawRequest(t, addr, huge); !strings.HasPrefix(status, "431") {
		t.Errorf("70 KiB of headers = %s; want 431", status)
	}

	slow := "POST /addEvent HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"name\": "
	status, body := rawRequest(t, addr, slow) // and then nothing more
	if !strings.HasPrefix(status, "408") || !strings.Contains(body, "too slowly") {
		t.Errorf("a stalled body = %s %q; want 408 with a JSON error", status, body)
	}
	if n := g.transport.calls.Load(); n != 0 {
		t.Errorf("the upstream received %d calls; want none", n)
	}
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
