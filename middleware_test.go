package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"testing/synctest"
	"time"
)

func TestAPITokenProtectsWritesOnly(t *testing.T) {
	g := newTestGateway(t, quietMock(), func(c *config) { c.APIToken = "s3cret-token" })
	body := `{"name": "x", "userId": "1"}`
	for _, auth := range []string{"", "Bearer wrong", "Bearer s3cret-token-and-more", "Bearer s3cret-toke", "s3cret-token", "Bearers3cret-token", "Basic czNjcmV0LXRva2Vu", "Basic s3cret-token"} {
		rec := g.post("/addEvent", body, "Authorization", auth)
		if rec.Code != 401 || !strings.HasPrefix(rec.Header().Get("WWW-Authenticate"), "Bearer") {
			t.Errorf("Authorization %q = %d, WWW-Authenticate %q; want 401 Bearer", auth, rec.Code, rec.Header().Get("WWW-Authenticate"))
		}
		errorBody(t, rec)
	}
	if n := g.transport.calls.Load(); n != 0 {
		t.Errorf("unauthorised writes reached the upstream %d times", n)
	}
	for _, auth := range []string{"Bearer s3cret-token", "bearer s3cret-token", "BEARER s3cret-token", "Bearer  s3cret-token "} {
		if rec := g.post("/addEvent", body, "Authorization", auth); rec.Code != 200 {
			t.Errorf("Authorization %q = %d; want 200 (the scheme is case-insensitive)", auth, rec.Code)
		}
	}
	if rec := g.get("/getUsers"); rec.Code != 200 {
		t.Errorf("GET /getUsers without a token = %d; reads stay open", rec.Code)
	}
}

func TestEveryAnswerIsSafe(t *testing.T) {
	panicky := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { panic("upstream client bug: index out of range") })
	g := newTestGateway(t, panicky, nil)
	for _, path := range []string{"/getUsers", "/health", "/nowhere"} {
		rec := g.get(path)
		if rec.Header().Get("X-Content-Type-Options") != "nosniff" || rec.Header().Get("Cache-Control") != "no-store" {
			t.Errorf("GET %s headers %v; want nosniff and no-store", path, rec.Header())
		}
	}
	rec := g.get("/getUsers")
	if rec.Code != 500 || errorBody(t, rec) != "internal error" {
		t.Errorf("a panicking handler = %d %q; want 500 internal error", rec.Code, rec.Body)
	}
	if strings.Contains(rec.Body.String(), "index out of range") || strings.Contains(rec.Body.String(), "goroutine") {
		t.Errorf("the panic reached the client: %q", rec.Body)
	}
	if rec := g.get("/health"); rec.Code != 200 {
		t.Errorf("after a panic, GET /health = %d; the server keeps serving", rec.Code)
	}
}

// TestStarTargetsAreAnsweredInJSON sends "OPTIONS *" and "GET *" to a real
// server: each answer is JSON and carries X-Request-ID.
func TestStarTargetsAreAnsweredInJSON(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := newTestGateway(t, quietMock(), nil)
		l := servePipes(t, g.cfg, g.handler, nil)
		for _, tt := range []struct {
			method string
			want   int
			body   string
		}{{"OPTIONS", 200, `"methods"`}, {"GET", 400, "only for OPTIONS"}, {"POST", 400, "only for OPTIONS"}} {
			c := l.dial()
			go fmt.Fprintf(c, "%s * HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", tt.method)
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil {
				t.Fatalf("%s *: %v", tt.method, err)
			}
			body, _ := io.ReadAll(resp.Body)
			c.Close()
			if resp.StatusCode != tt.want || resp.Header.Get("Content-Type") != "application/json" || resp.Header.Get("X-Request-ID") == "" || !strings.Contains(string(body), tt.body) {
				t.Errorf("%s * = %d %q, headers %v; want %d, JSON with %s and an X-Request-ID", tt.method, resp.StatusCode, body, resp.Header, tt.want, tt.body)
			}
		}
	})
}

// TestSlowReadersGetTheWholeAnswer: a 2 MiB list to a client that reads 64
// KiB every 5 s (160 s in all, far past any whole-answer timeout) arrives
// whole; a client that stops reading is cut off writeStallTimeout after
// its last read.
func TestSlowReadersGetTheWholeAnswer(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		list := "[" + strings.Repeat(`"x",`, 512<<10-1) + `"x"]`
		g := newTestGateway(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			io.WriteString(w, list)
		}), func(c *config) { c.RequestTimeout = 20 * time.Second })
		l := servePipes(t, g.cfg, g.handler, nil)
		ask := func() (*bufio.Reader, func()) {
			c := l.dial()
			io.WriteString(c, "GET /getEvents HTTP/1.1\r\nHost: x\r\n\r\n")
			return bufio.NewReaderSize(c, 64<<10), func() { c.Close() }
		}

		slow, done := ask()
		defer done()
		resp, err := http.ReadResponse(slow, nil)
		if err != nil {
			t.Fatal(err)
		}
		got := 0
		buf := make([]byte, 64<<10)
		for {
			n, err := io.ReadFull(resp.Body, buf)
			got += n
			if err != nil {
				break
			}
			time.Sleep(5 * time.Second)
		}
		if got != len(list)+1 {
			t.Errorf("a client reading 64 KiB every 5 s got %d bytes; want the whole answer, %d", got, len(list)+1)
		}

		stopped, done2 := ask()
		defer done2()
		resp, err = http.ReadResponse(stopped, nil)
		if err != nil {
			t.Fatal(err)
		}
		io.ReadFull(resp.Body, buf) // one piece, then nothing
		time.Sleep(time.Minute)
		n, err := io.Copy(io.Discard, resp.Body)
		if err == nil || int(n)+len(buf) >= len(list) {
			t.Errorf("a client that stopped reading got %d more bytes, %v; want the answer cut off", n, err)
		}
	})
}

// TestAccessLogBoundsThePath: the request line keeps at most 256 bytes of
// a path the client sent, however long, and 32 of a method, and names an
// unmatched route so.
func TestAccessLogBoundsThePath(t *testing.T) {
	var logs strings.Builder
	h := withAccessLog(slog.New(slog.NewJSONHandler(&logs, nil)), newMetrics())(http.NotFoundHandler())
	long := "/" + strings.Repeat("a", 10_000)
	method := strings.Repeat("M", 10_000)
	h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest(method, long, nil))
	var entry map[string]any
	if err := json.Unmarshal([]byte(logs.String()), &entry); err != nil {
		t.Fatal(err)
	}
	if path, _ := entry["path"].(string); path != long[:256]+"…" || entry["route"] != "unmatched" || entry["status"] != float64(404) {
		t.Errorf("logged path of %d bytes, route %v, status %v; want the path's first 256 bytes and …, unmatched, 404", len(path), entry["route"], entry["status"])
	}
	if m, _ := entry["method"].(string); m != method[:32]+"…" {
		t.Errorf("logged a method of %d bytes; want its first 32 and …", len(m))
	}
}

// TestAccessLogCountsNoBodyForHEAD: a HEAD answer's line says 0 bytes:
// net/http sends no body, though the handler writes one.
func TestAccessLogCountsNoBodyForHEAD(t *testing.T) {
	var logs strings.Builder
	h := withAccessLog(slog.New(slog.NewJSONHandler(&logs, nil)), newMetrics())(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "a body of some bytes")
	}))
	h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("HEAD", "/getUsers", nil))
	h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("GET", "/getUsers", nil))
	lines := strings.Split(strings.TrimSpace(logs.String()), "\n")
	var head, get map[string]any
	json.Unmarshal([]byte(lines[0]), &head)
	json.Unmarshal([]byte(lines[1]), &get)
	if head["bytes"] != float64(0) || get["bytes"] != float64(20) {
		t.Errorf("bytes logged: HEAD %v, GET %v; want 0 and 20", head["bytes"], get["bytes"])
	}
}
