package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"
)

// slowFirst is an upstream whose events answer at once, except that the
// first lookup of each id in slow waits for wait (or until cancelled, which
// it counts).
type slowFirst struct {
	api       *fakeEventAPI
	slow      map[string]bool
	wait      time.Duration
	mu        sync.Mutex
	seen      map[string]int
	cancelled atomic.Int32
}

func newSlowFirst(wait time.Duration, slow ...string) *slowFirst {
	s := &slowFirst{api: newFakeEventAPI(0), slow: map[string]bool{}, wait: wait, seen: map[string]int{}}
	for _, id := range slow {
		s.slow[id] = true
	}
	return s
}

func (s *slowFirst) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	id, isEvent := strings.CutPrefix(r.URL.Path, "/getEventById/")
	s.mu.Lock()
	s.seen[id]++
	first := s.seen[id] == 1
	s.mu.Unlock()
	if isEvent && first && s.slow[id] {
		select {
		case <-time.After(s.wait):
		case <-r.Context().Done():
			s.cancelled.Add(1)
			return
		}
	}
	s.api.ServeHTTP(w, r)
}

func (s *slowFirst) calls(id string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.seen[id]
}

func hedgeAfter(d time.Duration) func(*config) {
	return func(c *config) { c.HedgeDelay = d }
}

// TestSlowReadIsHedgedOnceAndTheLoserCancelled: a lookup that has not
// answered after HEDGE_DELAY is sent once more; the hedge's answer is used
// at once, and the first call is cancelled.
func TestSlowReadIsHedgedOnceAndTheLoserCancelled(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		up := newSlowFirst(time.Minute, "e0")
		up.api.addUser("u", 3)
		g := newTestGateway(t, up, hedgeAfter(100*time.Millisecond))
		start := time.Now()
		if ids := eventIDs(t, g.get("/getEventsByUserId/u")); len(ids) != 3 || time.Since(start) != 100*time.Millisecond {
			t.Errorf("answered %v after %v; want 3 events after the hedge delay, 100ms", ids, time.Since(start))
		}
		synctest.Wait()
		if up.calls("e0") != 2 || up.calls("e1") != 1 || up.cancelled.Load() != 1 {
			t.Errorf("calls e0 %d, e1 %d, cancelled %d; want the slow one sent twice, the first cancelled, the others once", up.calls("e0"), up.calls("e1"), up.cancelled.Load())
		}
		wantMetrics(t, g, `eventgate_upstream_hedges_total{call="getEventById",result="sent"} 1`,
			`eventgate_upstream_hedges_total{call="getEventById",result="won"} 1`)
	})
}

// TestReadIsHedgedAtMostOnce: when the hedge is slow too, no third call is
// made, and the first answer is used.
func TestReadIsHedgedAtMostOnce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		api := newFakeEventAPI(time.Second)
		api.addUser("u", 1)
		g := newTestGateway(t, api, hedgeAfter(100*time.Millisecond))
		start := time.Now()
		eventIDs(t, g.get("/getEventsByUserId/u"))
		if took, n := time.Since(start), api.calls["e0"]; took != time.Second || n != 2 {
			t.Errorf("answered after %v with %d calls; want the first's answer at 1s, 2 calls", took, n)
		}
		wantMetrics(t, g, `eventgate_upstream_hedges_total{call="getEventById",result="sent"} 1`)
	})
}

// TestHedgesStopWhenTheBudgetIsSpent: in a general slowdown, hedges draw on
// the retry budget (a tenth of requests, plus 10 a window) and stop there.
func TestHedgesStopWhenTheBudgetIsSpent(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		api := newFakeEventAPI(time.Second)
		api.addUser("u", 200)
		g := newTestGateway(t, api, hedgeAfter(10*time.Millisecond))
		eventIDs(t, g.get("/getEventsByUserId/u"))
		if total, _ := api.lookups(); total != 200+30 {
			t.Errorf("%d lookups for 200 events; want 230, hedges stopping at 10%% + 10", total)
		}
		wantMetrics(t, g, `eventgate_upstream_hedges_total{call="getEventById",result="sent"} 30`)
	})
}

// TestWritesAreNeverHedged: a slow POST /addEvent is sent once.
func TestWritesAreNeverHedged(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m := quietMock()
		var calls atomic.Int32
		g := newTestGateway(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			calls.Add(1)
			time.Sleep(time.Second)
			m.ServeHTTP(w, r)
		}), hedgeAfter(10*time.Millisecond))
		if rec := g.post("/addEvent", `{"name": "x", "userId": "1"}`); rec.Code != 200 || calls.Load() != 1 {
			t.Errorf("a slow write = %d after %d calls; want 200 after 1", rec.Code, calls.Load())
		}
	})
}

// TestHedgeIsPartOfTheOneFlight: two requests waiting for the same slow
// event share one lookup, and so one hedge.
func TestHedgeIsPartOfTheOneFlight(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		up := newSlowFirst(time.Minute, "e0")
		up.api.addUser("u", 1)
		g := newTestGateway(t, up, hedgeAfter(100*time.Millisecond))
		var wg sync.WaitGroup
		for range 2 {
			wg.Go(func() { eventIDs(t, g.get("/getEventsByUserId/u")) })
		}
		wg.Wait()
		if n := up.calls("e0"); n != 2 {
			t.Errorf("two requests for one slow event made %d calls; want 2, one call and its hedge", n)
		}
	})
}

// TestHedgeSharesTheCallsTimeout: with a hung upstream, the call and its
// hedge both end at UPSTREAM_TIMEOUT from the first call: 504 at 2s, not
// later.
func TestHedgeSharesTheCallsTimeout(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := newTestGateway(t, hangingUpstream(), hedgeAfter(100*time.Millisecond))
		start := time.Now()
		if rec := g.get("/getUsers"); rec.Code != 504 || time.Since(start) != g.cfg.UpstreamTimeout || g.transport.calls.Load() != 2 {
			t.Errorf("hung upstream = %d after %v and %d calls; want 504 after UPSTREAM_TIMEOUT (2s), 2 calls", rec.Code, time.Since(start), g.transport.calls.Load())
		}
	})
}

// TestAutoHedgeDelayFollowsThe95thPercentile: HEDGE_DELAY=auto waits half
// of UPSTREAM_TIMEOUT until 100 calls of a kind are seen, then the 95th
// percentile of the last 10 to 20 seconds (rounded up to its bucket), never
// under 10ms; each kind on its own.
func TestAutoHedgeDelayFollowsThe95thPercentile(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newHedgePolicy(0, 2*time.Second)
		observe := func(op string, n int, d time.Duration) {
			for range n {
				h.observe(op, d, time.Now())
			}
		}
		delay := func(op string) time.Duration {
			d, _ := h.delay(op, time.Now())
			return d
		}
		observe("getEventById", 99, 20*time.Millisecond)
		if d := delay("getEventById"); d != time.Second {
			t.Errorf("after 99 calls: %v; want the conservative 1s", d)
		}
		observe("getEventById", 1, 20*time.Millisecond)
		observe("getEventById", 5, time.Second) // 5 of 105 slow: p95 is still a fast one
		if d := delay("getEventById"); d < 20*time.Millisecond || d > 24*time.Millisecond {
			t.Errorf("p95 of 100 calls of 20ms and 5 of 1s: %v; want 20ms rounded up to its bucket (at most 24ms)", d)
		}
		observe("getUsers", 200, time.Millisecond)
		if d := delay("getUsers"); d != 10*time.Millisecond {
			t.Errorf("calls of 1ms: %v; want the 10ms floor", d)
		}
		observe("getEventById", 20, time.Second) // now 25 of 125 slow
		if d, want := delay("getEventById"), bucketBound(bucketOf(time.Second)); d != want {
			t.Errorf("with a fifth of the calls slow: %v; want %v, the slow ones' bucket", d, want)
		}
		time.Sleep(11 * time.Second) // into the next window: the last one still counts
		if d, want := delay("getEventById"), bucketBound(bucketOf(time.Second)); d != want {
			t.Errorf("11s later: %v; want %v, the last window's calls still counted", d, want)
		}
		time.Sleep(25 * time.Second) // both windows pass
		if d := delay("getEventById"); d != time.Second {
			t.Errorf("after 25s without calls: %v; want the conservative 1s again", d)
		}
		if d, ok := newHedgePolicy(-1, 2*time.Second).delay("getUsers", time.Now()); ok {
			t.Errorf("hedging turned off hedges after %v", d)
		}
	})
}

// TestHedgedFanoutUnderAHeavyTail is the issue of a fan-out meeting a slow
// lookup: 100 events of 20ms, 1% of them 1s. Unhedged, the answer waits for
// the slowest; with HEDGE_DELAY=auto (after a warm-up that teaches it the
// p95), it takes about the delay plus one fast lookup.
func TestHedgedFanoutUnderAHeavyTail(t *testing.T) {
	for _, hedge := range []bool{false, true} {
		synctest.Test(t, func(t *testing.T) {
			up := newSlowFirst(time.Second)
			up.api.delay = 20 * time.Millisecond
			g := newTestGateway(t, up, func(c *config) { c.HedgeDelay, c.EventCacheTTL = map[bool]time.Duration{true: 0, false: -1}[hedge], 0 })
			for r := range 3 { // warm-up: 300 fast lookups
				user := fmt.Sprint("warm", r)
				for i := range 100 {
					up.api.users[user] = append(up.api.users[user], fmt.Sprintf("w%d-%d", r, i))
				}
				eventIDs(t, g.get("/getEventsByUserId/"+user))
			}
			up.api.addUser("u", 100)
			up.slow["e42"] = true // one lookup in a hundred takes 1s
			start := time.Now()
			eventIDs(t, g.get("/getEventsByUserId/u"))
			took := time.Since(start)
			if hedge && took > 50*time.Millisecond || !hedge && took != time.Second+20*time.Millisecond {
				t.Errorf("hedging %v: 100 lookups with one slow took %v; want 1.02s unhedged (the slow one, then its 20ms), under 50ms hedged", hedge, took)
			}
		})
	}
}

// TestOneHedgePerRead: an upstream that answers every /getUsers 502 after
// 50 ms, with hedges after 10 ms. Each of the three attempts could be
// hedged; only one is, so the upstream sees at most 1 + 2 retries + 1 hedge
// = 4 calls for one client request.
func TestOneHedgePerRead(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var calls atomic.Int32
		g := newTestGateway(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			calls.Add(1)
			select {
			case <-time.After(50 * time.Millisecond):
				w.WriteHeader(502)
			case <-r.Context().Done():
			}
		}), hedgeAfter(10*time.Millisecond))
		if rec := g.get("/getUsers"); rec.Code != 502 {
			t.Errorf("= %d; want 502", rec.Code)
		}
		synctest.Wait()
		if n := calls.Load(); n != 4 {
			t.Errorf("upstream saw %d calls for one read; want 4: three attempts and one hedge", n)
		}
	})
}

// TestAHedgeThatFailsBadlyLeavesTheFirstCall: whether the hedge's own
// call panics or the timer's check before sending it does, runHedged
// returns the first call's result (its failure included, without hanging
// on a hedge that never answers), and every goroutine it started ends.
func TestAHedgeThatFailsBadlyLeavesTheFirstCall(t *testing.T) {
	errFirst := errors.New("the first call failed")
	for _, tt := range []struct {
		name       string
		secondCall bool // the hedge's call panics; else its start check does
		firstErr   error
	}{
		{"hedge panics, first succeeds", true, nil},
		{"hedge panics, first fails", true, errFirst},
		{"start check panics, first fails", false, errFirst},
	} {
		synctest.Test(t, func(t *testing.T) {
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			var calls atomic.Int32
			call := func() (string, error) {
				if calls.Add(1) == 2 {
					panic("the hedge, on purpose")
				}
				time.Sleep(100 * time.Millisecond)
				return "first", tt.firstErr
			}
			start := func() (func(), bool) {
				if !tt.secondCall {
					panic("the start check, on purpose")
				}
				return func() {}, true
			}
			var running sync.WaitGroup
			v, won, err := runHedged(ctx, cancel, 10*time.Millisecond, call, start, &running)
			running.Wait()
			if won || err != tt.firstErr || (err == nil && v != "first") {
				t.Errorf("%s: runHedged = %q, won %v, %v; want the first call's result", tt.name, v, won, err)
			}
		})
	}
}
