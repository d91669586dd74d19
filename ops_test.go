package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"testing/synctest"
	"time"
)

// TestOpenAPIMatchesTheRoutes keeps openapi.yaml and routes in step: every
// registered route is documented and every documented one is registered.
func TestOpenAPIMatchesTheRoutes(t *testing.T) {
	f, err := os.Open("openapi.yaml")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	pathLine := regexp.MustCompile(`^  (/\S*):$`)
	methodLine := regexp.MustCompile(`^    (get|put|post|delete|patch|head|options):$`)
	var documented []string
	inPaths, current := false, ""
	for sc := bufio.NewScanner(f); sc.Scan(); {
		line := sc.Text()
		switch {
		case line == "paths:":
			inPaths = true
		case len(line) > 0 && line[0] != ' ' && line[0] != '#':
			inPaths = false
		case inPaths && pathLine.MatchString(line):
			current = pathLine.FindStringSubmatch(line)[1]
		case inPaths && methodLine.MatchString(line):
			documented = append(documented, strings.ToUpper(methodLine.FindStringSubmatch(line)[1])+" "+current)
		}
	}
	var registered []string
	for _, r := range routes(testConfig(t), services{}) {
		registered = append(registered, r.pattern)
	}
	slices.Sort(documented)
	slices.Sort(registered)
	if !slices.Equal(documented, registered) {
		t.Errorf("openapi.yaml documents\n%q\nthe server registers\n%q", documented, registered)
	}
}

// TestMetricsAreValidExposition scrapes /metrics after some traffic and
// checks the rules of the text format that a scraper relies on.
func TestMetricsAreValidExposition(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := newTestGateway(t, quietMock(), nil)
		g.get("/getUsers")
		g.get("/getEventsByUserId/1")
		g.get("/getEventsByUserId/1")
		g.get("/nowhere")
		g.post("/addEvent", `{"name": "m", "userId": "1"}`)
		rec := g.get("/metrics")
		if ct := rec.Header().Get("Content-Type"); !strings.HasPrefix(ct, "text/plain; version=0.0.4") {
			t.Errorf("Content-Type = %q", ct)
		}
		text := rec.Body.String()

		types := map[string]string{}
		sample := regexp.MustCompile(`^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*",?)*\})? (\S+)$`)
		leLabel := regexp.MustCompile(`,?le="[^"]*"`)
		buckets := map[string][]float64{} // series (without le) → cumulative counts
		counts := map[string]float64{}
		for _, line := range strings.Split(strings.TrimSpace(text), "\n") {
			if rest, ok := strings.CutPrefix(line, "# TYPE "); ok {
				name, typ, _ := strings.Cut(rest, " ")
				if _, dup := types[name]; dup {
					t.Errorf("# TYPE %s appears twice", name)
				}
				types[name] = typ
				continue
			}
			if strings.HasPrefix(line, "# HELP ") {
				continue
			}
			m := sample.FindStringSubmatch(line)
			if m == nil {
				t.Errorf("not a sample line: %q", line)
				continue
			}
			value, err := strconv.ParseFloat(m[3], 64)
			if err != nil {
				t.Errorf("bad value in %q", line)
			}
			name, labels := m[1], m[2]
			family := strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(name, "_bucket"), "_sum"), "_count")
			if _, ok := types[family]; !ok {
				if _, ok := types[name]; !ok {
					t.Errorf("sample %q before its # TYPE", line)
				}
			}
			series := family + leLabel.ReplaceAllString(labels, "")
			switch {
			case strings.HasSuffix(name, "_bucket"):
				buckets[series] = append(buckets[series], value)
			case strings.HasSuffix(name, "_count") && types[family] == "histogram":
				counts[series] = value
			}
		}
		for series, b := range buckets {
			if !slices.IsSorted(b) {
				t.Errorf("%s buckets are not cumulative: %v", series, b)
			}
			if last := b[len(b)-1]; last != counts[series] {
				t.Errorf("%s: +Inf bucket %v, _count %v; want equal", series, last, counts[series])
			}
		}
		for _, want := range []string{
			`eventgate_http_requests_total{route="GET /getUsers",code="200"} 1`,
			`eventgate_http_requests_total{route="unmatched",code="404"} 1`,
			`eventgate_http_request_duration_seconds_count{route="GET /getEventsByUserId/{id}"} 2`,
			`eventgate_upstream_request_duration_seconds_count{call="getEventById",outcome="ok"} 2`,
			`eventgate_event_cache_lookups_total{result="hit"} 2`,
			`eventgate_event_cache_lookups_total{result="miss"} 2`,
			`eventgate_breaker_state{state="closed"} 1`,
			`eventgate_upstream_inflight 0`,
			"go_goroutines ",
		} {
			if !strings.Contains(text, want) {
				t.Errorf("/metrics lacks %q", want)
			}
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

// TestJSONLogsCarryRequestIDsAndNoSecrets runs the real server with JSON
// logs and a token, and reads every line it logged.
func TestJSONLogsCarryRequestIDsAndNoSecrets(t *testing.T) {
	checkGoroutines(t)
	logs, stop, errc, port := startRun(t, map[string]string{
		"LOG_FORMAT": "json", "API_TOKEN": "s3cret-token", "MOCK_EVENT_DELAY": "1ms",
	})
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	client := &http.Client{Transport: &http.Transport{}}
	req, _ := http.NewRequest("POST", base+"/addEvent", strings.NewReader(`{"name": "x", "userId": "1"}`))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer s3cret-token-guess")
	req.Header.Set("X-Request-ID", "req-77")
	if resp, err := client.Do(req); err != nil || resp.StatusCode != 401 {
		t.Fatalf("wrong token: %v %v", resp, err)
	} else {
		resp.Body.Close()
	}
	client.CloseIdleConnections()
	stop()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}

	text := logs.String()
	if strings.Contains(text, "s3cret") {
		t.Errorf("the token appears in the logs:\n%s", text)
	}
	sawRequest := false
	for _, line := range strings.Split(strings.TrimSpace(text), "\n") {
		var entry map[string]any
		if err := json.Unmarshal([]byte(line), &entry); err != nil {
			t.Errorf("log line is not JSON: %q", line)
			continue
		}
		for _, key := range []string{"time", "level", "msg"} {
			if _, ok := entry[key]; !ok {
				t.Errorf("log line lacks %q: %q", key, line)
			}
		}
		if entry["msg"] == "request" {
			sawRequest = true
			if entry["request_id"] != "req-77" || entry["status"] != float64(401) || entry["route"] != "POST /addEvent" {
				t.Errorf("request log line = %q; want request_id req-77, status 401, route POST /addEvent", line)
			}
		}
	}
	if !sawRequest || !strings.Contains(text, "bearer token required") {
		t.Errorf("logs lack the request line or the start-up line's write protection:\n%s", text)
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

// TestUpstreamPasswordNeverLogged starts eventgate with credentials in
// UPSTREAM_URL, and refuses a bad one: the password is in neither the
// start-up log nor the error.
func TestUpstreamPasswordNeverLogged(t *testing.T) {
	checkGoroutines(t)
	logs, stop, errc, _ := startRun(t, map[string]string{"UPSTREAM_URL": "http://gate:s3cret-pass@127.0.0.1:9"})
	stop()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if text := logs.String(); strings.Contains(text, "s3cret") || !strings.Contains(text, "gate:xxxxx@127.0.0.1:9") {
		t.Errorf("start-up log shows the password, or not the redacted URL:\n%s", text)
	}
	err := run(t.Context(), []string{"eventgate", "-env-file="}, envOf(map[string]string{"UPSTREAM_URL": "ftp://gate:s3cret-pass@x"}), io.Discard, io.Discard)
	if err == nil || strings.Contains(err.Error(), "s3cret") || !strings.Contains(err.Error(), "UPSTREAM_URL") {
		t.Errorf("a bad UPSTREAM_URL gave %v; want an error naming the variable, without the password", err)
	}
}
