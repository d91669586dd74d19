package main

import (
	"context"
	"errors"
	"eventgate/mock"
	"fmt"
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
			http.Error(w, "", http.StatusBadGateway)
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

// attemptTimes runs p.do with a call that always fails with err, under
// ctx, and returns when each attempt was made and when do returned,
// relative to the start; inside a synctest bubble.
func attemptTimes(ctx context.Context, p retryPolicy, err error) (attempts []time.Duration, returned time.Duration) {
	start := time.Now()
	p.do(ctx, func() ([]byte, error) {
		attempts = append(attempts, time.Since(start))
		return nil, err
	}, retryable)
	return attempts, time.Since(start)
}

// TestRetryPolicyBacksOffWithJitterWithinTheDeadline checks the waits on a
// fake clock: 10–20 ms then 20–40 ms (half the delay plus jitter of up to
// half, the delay doubling), never a wait that would outlast the request's
// deadline, and none after the caller has gone.
func TestRetryPolicyBacksOffWithJitterWithinTheDeadline(t *testing.T) {
	network := &upstreamError{Op: "getUsers", Kind: failNetwork}
	ms := time.Millisecond
	tests := []struct {
		name      string
		jitter    float64
		deadline  time.Duration // 0: none
		cancelAt  time.Duration // 0: never
		attempts  string
		returnsAt time.Duration
	}{
		{"no jitter", 0, 0, 0, "[0s 10ms 30ms]", 30 * ms},
		{"most jitter", 0.5, 0, 0, "[0s 15ms 45ms]", 45 * ms},
		{"a wait that would outlast the deadline is not made", 0, 25 * ms, 0, "[0s 10ms]", 10 * ms},
		{"the caller leaves during a wait", 0, 0, 5 * ms, "[0s]", 5 * ms},
	}
	for _, tt := range tests {
		synctest.Test(t, func(t *testing.T) {
			ctx := t.Context()
			if tt.deadline > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, tt.deadline)
				defer cancel()
			}
			if tt.cancelAt > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithCancel(ctx)
				time.AfterFunc(tt.cancelAt, cancel)
			}
			p := retryPolicy{Attempts: 3, BaseDelay: 20 * ms, Budget: newRetryBudget(1, 10, time.Second), Jitter: func() float64 { return tt.jitter }}
			attempts, returned := attemptTimes(ctx, p, network)
			if fmt.Sprint(attempts) != tt.attempts || returned != tt.returnsAt {
				t.Errorf("%s: attempts at %v, returned at %v; want %s, %v", tt.name, attempts, returned, tt.attempts, tt.returnsAt)
			}
		})
	}
}

func TestRetryableFailures(t *testing.T) {
	tests := []struct {
		err  error
		want bool
	}{
		{&upstreamError{Kind: failNetwork}, true},
		{&upstreamError{Kind: failStatus, Status: 502}, true},
		{&upstreamError{Kind: failStatus, Status: 504}, true},
		{&upstreamError{Kind: failStatus, Status: 500}, false},
		{&upstreamError{Kind: failUnavailable, Status: 503}, true},
		{&upstreamError{Kind: failUnavailable, Status: 503, RetryAfter: time.Second}, false},
		{&upstreamError{Kind: failTimeout}, false},
		{&upstreamError{Kind: failMalformed}, false},
		{&upstreamError{Kind: failNotFound, Status: 404}, false},
		{errors.New("not an upstream error"), false},
	}
	for _, tt := range tests {
		if got := retryable(tt.err); got != tt.want {
			t.Errorf("retryable(%v) = %v; want %v", tt.err, got, tt.want)
		}
	}
}
