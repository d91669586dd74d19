package main

import (
	"net/http"
	"net/http/httptest"
	"testing"
)

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
