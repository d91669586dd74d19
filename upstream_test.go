package main

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"eventgate/mock"
)

// TestUpstreamFaultsOverTCP points the gateway at real servers that
// misbehave and checks what the client is told. A trickled body must time
// out: were it read outside UPSTREAM_TIMEOUT, it would end as a 200.
func TestUpstreamFaultsOverTCP(t *testing.T) {
	tests := []struct {
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
		{"502", func(w http.ResponseWriter, r *http.Request) { http.Error(w, "bad gateway", 502) }, 502, "status 502"},
		{"503", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Retry-After", "7")
			http.Error(w, "busy", 503)
		}, 503, "retry after 7 seconds"},
		{"504", func(w http.ResponseWriter, r *http.Request) { http.Error(w, "timeout", 504) }, 502, "status 504"},
	}
	for _, tt := range tests {
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
			up := newUpstream(upstreamOptions{BaseURL: srv.URL, Timeout: timeout, MaxInflight: 10, Retry: defaultRetryPolicy()})
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
	up := newUpstream(upstreamOptions{BaseURL: srv.URL, Timeout: time.Second, MaxInflight: 10, Retry: defaultRetryPolicy()})
	defer up.client.CloseIdleConnections()
	g := newTestGateway(t, quietMock(), nil)
	h := newServer(slog.New(slog.DiscardHandler), g.cfg, services{up: up, metrics: newMetrics()})
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/getUsers", nil))
	if rec.Code != 502 || errorBody(t, rec) != "could not reach the event service" {
		t.Errorf("GET /getUsers with every connection dropped = %d %q; want 502", rec.Code, rec.Body)
	}
}

func TestRetriesHideDroppedConnections(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := newTestGateway(t, mock.New(mock.Options{FailRate: 0.05}), nil)
		failed := 0
		for i := range 2000 {
			path := "/getUsers"
			if i%2 == 1 {
				path = "/getEvents"
			}
			if g.get(path).Code != 200 {
				failed++
			}
		}
		if rate := float64(failed) / 2000; rate >= 0.005 {
			t.Errorf("%d of 2,000 requests failed (%.2f%%); want under 0.5%%", failed, 100*rate)
		}
		if calls := g.transport.calls.Load(); calls > 2000*11/10 {
			t.Errorf("%d upstream calls for 2,000 requests; retries should add about 5%%", calls)
		}
	})
}

func TestRetriesAreNeverMadeForWritesOrTimeouts(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var calls atomic.Int64
		g := newTestGateway(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			calls.Add(1)
			http.Error(w, "", 502)
		}), nil)
		g.post("/addEvent", `{"name": "a", "userId": "1"}`)
		if n := calls.Load(); n != 1 {
			t.Errorf("POST /addEvent reached the upstream %d times; want 1, never retried", n)
		}
		calls.Store(0)
		g.get("/getUsers")
		if n := calls.Load(); n != 3 {
			t.Errorf("GET /getUsers with a 502 reached the upstream %d times; want 3 tries", n)
		}

		g2 := newTestGateway(t, hangingUpstream(), nil)
		g2.get("/getUsers")
		if n := g2.transport.calls.Load(); n != 1 {
			t.Errorf("a timed-out GET was tried %d times; want 1", n)
		}
	})
}

// TestRetryBudgetBoundsExtraLoad fails every call: retries stop at the
// budget, 10% of requests plus a floor of 10 per window.
func TestRetryBudgetBoundsExtraLoad(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := newTestGateway(t, statusUpstream(503, "text/plain", ""), nil)
		for range 1000 {
			g.get("/getEvents")
		}
		if extra := g.transport.calls.Load() - 1000; extra > 1000/10+10 {
			t.Errorf("1,000 failing requests made %d retries; want at most 110", extra)
		}
	})
}

func TestRetryBudgetWindowSlides(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := newRetryBudget(0.1, 0, 10*time.Second)
		for range 100 {
			b.deposit(time.Now())
		}
		granted := 0
		for b.withdraw(time.Now()) {
			granted++
		}
		if granted != 10 {
			t.Errorf("100 requests granted %d retries; want 10", granted)
		}
		time.Sleep(11 * time.Second)
		if b.withdraw(time.Now()) {
			t.Error("a retry was granted from requests that slid out of the window")
		}
	})
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
			up := newUpstream(upstreamOptions{BaseURL: "http://x", Timeout: time.Second, MaxInflight: 1,
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
