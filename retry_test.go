package main

import (
	"eventgate/mock"
	"net/http"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"
)

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

		for _, tt := range []struct {
			status     int
			retryAfter string
			want       int64
		}{{503, "", 3}, {429, "", 3}, {503, "7", 1}, {429, "1", 1}} {
			g := newTestGateway(t, answer(tt.status, ``, "Retry-After", tt.retryAfter), nil)
			g.get("/getUsers")
			if n := g.transport.calls.Load(); n != tt.want {
				t.Errorf("GET /getUsers answered %d with Retry-After %q reached the upstream %d times; want %d", tt.status, tt.retryAfter, n, tt.want)
			}
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
