package main

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// corsGateway is a gateway with CORS_ORIGINS set to origins.
func corsGateway(t *testing.T, origins string) *testGateway {
	policy, err := loadConfig(envOf(map[string]string{"CORS_ORIGINS": origins}))
	if err != nil {
		t.Fatal(err)
	}
	return newTestGateway(t, quietMock(), func(c *config) { c.CORS, c.APIToken = policy.CORS, "s3cret" })
}

func corsRequest(method, path, origin string, header ...string) *http.Request {
	req, _ := http.NewRequest(method, path, nil)
	if method == "POST" {
		req, _ = http.NewRequest(method, path, strings.NewReader(`{"name": "x", "userId": "1"}`))
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Origin", origin)
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	return req
}

// TestCORSAllowsListedOriginsOnly: an allowed origin's answers say so and
// expose the headers a script reads; another origin's get no CORS header
// (the answer is otherwise the same); every answer varies by Origin; no
// answer ever allows credentials.
func TestCORSAllowsListedOriginsOnly(t *testing.T) {
	g := corsGateway(t, "https://app.example.com, http://localhost:5173")
	for _, tt := range []struct {
		origin, want string
	}{
		{"https://app.example.com", "https://app.example.com"},
		{"http://localhost:5173", "http://localhost:5173"},
		{"https://evil.example", ""},
		{"https://app.example.com.evil.example", ""},
		{"null", ""},
	} {
		rec := g.serve(corsRequest("GET", "/getUsers", tt.origin))
		h := rec.Header()
		if rec.Code != 200 || h.Get("Access-Control-Allow-Origin") != tt.want || !strings.Contains(strings.Join(h.Values("Vary"), ","), "Origin") {
			t.Errorf("GET from %s: %d, Allow-Origin %q, Vary %q; want 200, %q, Origin", tt.origin, rec.Code, h.Get("Access-Control-Allow-Origin"), h.Values("Vary"), tt.want)
		}
		exposed := h.Get("Access-Control-Expose-Headers")
		if tt.want != "" && (!strings.Contains(exposed, "ETag") || !strings.Contains(exposed, "traceresponse") || !strings.Contains(exposed, "Retry-After")) {
			t.Errorf("GET from %s exposes %q; want ETag, Retry-After, traceresponse among them", tt.origin, exposed)
		}
		if tt.want == "" && exposed != "" {
			t.Errorf("GET from a disallowed origin %s exposes %q", tt.origin, exposed)
		}
		if h.Get("Access-Control-Allow-Credentials") != "" {
			t.Errorf("GET from %s allows credentials", tt.origin)
		}
	}
	rec := g.serve(corsRequest("POST", "/addEvent", "https://app.example.com", "Authorization", "Bearer s3cret"))
	if rec.Code != 200 || rec.Header().Get("Access-Control-Allow-Origin") != "https://app.example.com" {
		t.Errorf("POST from an allowed origin: %d, Allow-Origin %q", rec.Code, rec.Header().Get("Access-Control-Allow-Origin"))
	}
}

// TestCORSPreflights: a preflight from an allowed origin, for a method the
// path has, is 204 with the methods, the headers and a Max-Age, before any
// token is asked for; one from another origin, or for a method the path
// does not have, is 403 without CORS headers. With "*", any origin may
// read, but a write's preflight is refused.
func TestCORSPreflights(t *testing.T) {
	g := corsGateway(t, "https://app.example.com,*")
	for _, tt := range []struct {
		path, origin, method string
		want                 int
		allowOrigin          string
	}{
		{"/addEvent", "https://app.example.com", "POST", 204, "https://app.example.com"},
		{"/getEvents", "https://app.example.com", "GET", 204, "https://app.example.com"},
		{"/getEvents", "https://other.example", "GET", 204, "*"},
		{"/addEvent", "https://other.example", "POST", 403, ""},
		{"/addEvent", "https://app.example.com", "DELETE", 403, ""},
		{"/nowhere", "https://app.example.com", "GET", 403, ""},
	} {
		rec := g.serve(corsRequest("OPTIONS", tt.path, tt.origin, "Access-Control-Request-Method", tt.method,
			"Access-Control-Request-Headers", "content-type, idempotency-key, traceparent"))
		h := rec.Header()
		if rec.Code != tt.want || h.Get("Access-Control-Allow-Origin") != tt.allowOrigin {
			t.Errorf("preflight %s %s from %s: %d, Allow-Origin %q; want %d, %q", tt.method, tt.path, tt.origin, rec.Code, h.Get("Access-Control-Allow-Origin"), tt.want, tt.allowOrigin)
			continue
		}
		if tt.want != 204 {
			errorBody(t, rec)
			continue
		}
		methods, headers := h.Get("Access-Control-Allow-Methods"), h.Get("Access-Control-Allow-Headers")
		if !strings.Contains(methods, tt.method) || !strings.Contains(headers, "Idempotency-Key") || !strings.Contains(headers, "traceparent") || h.Get("Access-Control-Max-Age") == "" {
			t.Errorf("preflight %s %s: methods %q, headers %q, max-age %q", tt.method, tt.path, methods, headers, h.Get("Access-Control-Max-Age"))
		}
		if tt.allowOrigin == "*" && strings.Contains(methods, "POST") {
			t.Errorf("a preflight allowed for any origin lists %q; want reads only", methods)
		}
	}
	if rec := g.serve(corsRequest("POST", "/addEvent", "https://other.example", "Authorization", "Bearer s3cret")); rec.Header().Get("Access-Control-Allow-Origin") != "" {
		t.Errorf("a write from an origin allowed to read only got Allow-Origin %q", rec.Header().Get("Access-Control-Allow-Origin"))
	}
}

// TestCORSOffByDefault: with CORS_ORIGINS empty, answers carry no CORS
// header and a preflight is what any OPTIONS is (405 with Allow).
func TestCORSOffByDefault(t *testing.T) {
	g := newTestGateway(t, quietMock(), nil)
	rec := g.serve(corsRequest("OPTIONS", "/addEvent", "https://app.example.com", "Access-Control-Request-Method", "POST"))
	if rec.Code != 405 || rec.Header().Get("Access-Control-Allow-Origin") != "" {
		t.Errorf("preflight with CORS off: %d, Allow-Origin %q; want 405 and none", rec.Code, rec.Header().Get("Access-Control-Allow-Origin"))
	}
	for _, bad := range []string{"app.example.com", "https://app.example.com/path", "ftp://x", "https://u@app.example.com"} {
		if _, err := loadConfig(envOf(map[string]string{"CORS_ORIGINS": bad})); err == nil || !strings.Contains(err.Error(), "CORS_ORIGINS") {
			t.Errorf("CORS_ORIGINS=%s: %v; want an error naming the variable", bad, err)
		}
	}
}

// TestCORSPreflightOnAPathNotCanonical: a preflight for /x/../addEvent is
// the 400 of any path that is not canonical, never a failure of eventgate.
func TestCORSPreflightOnAPathNotCanonical(t *testing.T) {
	g := corsGateway(t, "https://app.example.com")
	for _, path := range []string{"/getUsers/../addEvent", "//addEvent", "/x/../getUsers"} {
		req := corsRequest("OPTIONS", "/", "https://app.example.com", "Access-Control-Request-Method", "POST")
		req.URL.Path = path
		if rec := g.serve(req); rec.Code != 400 {
			t.Errorf("preflight on %s = %d; want 400", path, rec.Code)
		}
	}
	methodsOf := pathMethods(routes(testConfig(t), services{}))
	if m := methodsOf(httptest.NewRequest("OPTIONS", "/x/../getUsers", nil)); m != nil {
		t.Errorf("the methods of a path that is not canonical: %v; want none", m)
	}
	for _, bad := range []string{"https://app.example.com:443", "http://app.example.com:80", "https://*.example.com"} {
		if _, err := loadConfig(envOf(map[string]string{"CORS_ORIGINS": bad})); err == nil {
			t.Errorf("CORS_ORIGINS=%s, which no browser sends, was accepted", bad)
		}
	}
}
