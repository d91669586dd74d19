package main

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"eventgate/mock"
)

var (
	errFault   = &upstreamError{Op: "addEvent", Kind: failStatus, Status: 500}
	errClient  = &upstreamError{Op: "addEvent", Kind: failNotFound, Status: 404}
	errGone    = &upstreamError{Op: "addEvent", Kind: failCanceled, Err: context.Canceled}
	errTimeout = &upstreamError{Op: "addEvent", Kind: failTimeout}
)

// newTestBreaker returns a breaker with the default settings (3 faults in
// 30s, backoff 5s to 60s) and a fixed jitter draw.
func newTestBreaker(t *testing.T, jitter float64) *breaker {
	b := newBreaker(breakerOptions{
		Threshold: 3, Window: 30 * time.Second, BackoffMin: 5 * time.Second, BackoffMax: 60 * time.Second,
		Jitter:      func() float64 { return jitter },
		IsFault:     upstreamFault,
		WaitAtLeast: func(error) time.Duration { return 0 },
		Logger:      slog.New(slog.DiscardHandler),
		OnChange:    func(from, to breakerState) {},
	})
	t.Cleanup(b.Close)
	return b
}

// call passes one call through b with the given result, failing the test
// if b refuses it.
func call(t *testing.T, b *breaker, result error) {
	t.Helper()
	if err := b.Execute(func() error { return result }); err != result {
		t.Fatalf("Execute refused a call in state %s: %v", b.Snapshot().State, err)
	}
}

// begin starts a call through b that runs until finish is called, then
// ends with result. It reports whether b admitted the call; inside a
// synctest bubble only.
func begin(b *breaker, result error) (admitted bool, finish func()) {
	ran, release, done := make(chan struct{}, 1), make(chan struct{}), make(chan error, 1)
	go func() {
		done <- b.Execute(func() error {
			ran <- struct{}{}
			<-release
			return result
		})
	}()
	synctest.Wait()
	select {
	case <-ran:
		return true, func() { close(release); <-done; synctest.Wait() }
	default:
		<-done
		return false, func() {}
	}
}

// trip opens a closed breaker with its threshold of three upstream faults.
func trip(t *testing.T, b *breaker) {
	t.Helper()
	for range 3 {
		call(t, b, errFault)
	}
}

func wantState(t *testing.T, b *breaker, want breakerState) {
	t.Helper()
	synctest.Wait() // let the open period's goroutine act on what just happened
	if got := b.Snapshot().State; got != want {
		t.Fatalf("state %s; want %s", got, want)
	}
}

func TestBreakerWindowSlides(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := newTestBreaker(t, 0)
		call(t, b, errFault) // t=0
		time.Sleep(10 * time.Second)
		call(t, b, errFault) // t=10s
		call(t, b, nil)      // a success erases nothing
		time.Sleep(20 * time.Second)
		call(t, b, errFault) // t=30s: the first fault, exactly a window old, has left it
		wantState(t, b, stateClosed)
		if n := b.Snapshot().FailuresInWindow; n != 2 {
			t.Errorf("failures in window = %d; want 2", n)
		}
		call(t, b, errTimeout) // the third within 30s
		wantState(t, b, stateOpen)
	})
}

func TestBreakerIgnoresClientErrorsAndCancellations(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := newTestBreaker(t, 0)
		for range 10 {
			call(t, b, errClient)
			call(t, b, errGone)
			call(t, b, &upstreamError{Op: "addEvent", Kind: failRejected, Status: 400})
			call(t, b, &upstreamError{Op: "addEvent", Kind: failDeadline, Err: context.DeadlineExceeded})
		}
		wantState(t, b, stateClosed)
	})
}

func TestBreakerOpenRefusesWithRetryAfter(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := newTestBreaker(t, 0)
		trip(t, b)
		wantState(t, b, stateOpen)
		time.Sleep(1500 * time.Millisecond)
		err := b.Execute(func() error {
			t.Error("a call ran while the breaker was open")
			return nil
		})
		var oe *openError
		if !errors.As(err, &oe) || oe.RetryAfter != 3500*time.Millisecond {
			t.Fatalf("Execute while open = %v; want an openError with 3.5s to wait", err)
		}
		if ae := toAPIError(err); ae.Status != 503 || retrySeconds(ae.RetryAfter) != 4 {
			t.Errorf("client sees %d, Retry-After %d; want 503, 4", ae.Status, retrySeconds(ae.RetryAfter))
		}
	})
}

// TestBreakerBackoffDoublesToTheCap fails every trial and checks that each
// wait before half-open is twice the last, up to BREAKER_BACKOFF_MAX.
func TestBreakerBackoffDoublesToTheCap(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := newTestBreaker(t, 0)
		trip(t, b)
		for _, wait := range []time.Duration{5, 10, 20, 40, 60, 60} {
			wait *= time.Second
			time.Sleep(wait - time.Millisecond)
			wantState(t, b, stateOpen)
			time.Sleep(time.Millisecond)
			wantState(t, b, stateHalfOpen)
			call(t, b, errFault) // the trial fails
			wantState(t, b, stateOpen)
		}
		if n := b.Snapshot().TimesOpened; n != 7 {
			t.Errorf("times opened = %d; want 7", n)
		}
	})
}

func TestBreakerJitterStaysWithinBounds(t *testing.T) {
	for _, draw := range []float64{0, 0.5, 0.999999} {
		b := newBreaker(breakerOptions{Jitter: func() float64 { return draw }})
		got := b.jittered(10 * time.Second)
		if got > 10*time.Second || got < 8*time.Second {
			t.Errorf("jittered(10s) with draw %v = %v; want within [8s, 10s]", draw, got)
		}
	}
	b := newBreaker(breakerOptions{Jitter: func() float64 { return 0.5 }})
	if got := b.jittered(10 * time.Second); got != 9*time.Second {
		t.Errorf("jittered(10s) with draw 0.5 = %v; want 9s", got)
	}
}

// TestBreakerHalfOpenRampsUpThenCloses checks that half-open admits one
// trial, then two, and closes after the third success, not before.
func TestBreakerHalfOpenRampsUpThenCloses(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := newTestBreaker(t, 0)
		trip(t, b)
		time.Sleep(5 * time.Second)
		wantState(t, b, stateHalfOpen)

		ok, finish := begin(b, errClient)
		if !ok {
			t.Fatal("the first trial was refused")
		}
		if ok, _ := begin(b, nil); ok {
			t.Fatal("a second concurrent trial was admitted; want one at a time")
		}
		finish() // a 4xx frees the slot, decides nothing
		wantState(t, b, stateHalfOpen)
		call(t, b, nil) // success 1

		ok1, finish1 := begin(b, nil)
		ok2, finish2 := begin(b, nil)
		ok3, _ := begin(b, nil)
		if !ok1 || !ok2 || ok3 {
			t.Fatalf("after one success: trials admitted %v %v %v; want two of three", ok1, ok2, ok3)
		}
		finish1() // success 2
		wantState(t, b, stateHalfOpen)
		finish2() // success 3
		wantState(t, b, stateClosed)
	})
}

// TestBreakerIgnoresResultsFromAnEarlierGeneration checks that calls that
// began before the breaker opened count for nothing when they end.
func TestBreakerIgnoresResultsFromAnEarlierGeneration(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := newTestBreaker(t, 0)
		_, slowSuccess := begin(b, nil)
		_, slowFault := begin(b, errFault)
		trip(t, b)
		time.Sleep(5 * time.Second)
		wantState(t, b, stateHalfOpen)
		slowSuccess()
		slowFault()
		wantState(t, b, stateHalfOpen)
		if ok, finish := begin(b, nil); !ok {
			t.Error("the trial slot was taken by an old result")
		} else {
			finish()
		}
	})
}

// TestBreakerCloseEndsItsGoroutineAtOnce: Close, while an open period's
// goroutine waits for the next trial, returns at once (it does not wait
// for the backoff), and nothing turns the breaker half-open afterwards.
func TestBreakerCloseEndsItsGoroutineAtOnce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := newTestBreaker(t, 0)
		trip(t, b)
		wantState(t, b, stateOpen)
		start := time.Now()
		b.Close()
		if waited := time.Since(start); waited != 0 {
			t.Errorf("Close took %v; want it to end the waiting goroutine at once", waited)
		}
		time.Sleep(time.Minute)
		wantState(t, b, stateOpen)
		b.Close() // a second Close is harmless
	})
}

// TestBreakerUnderConcurrentCallers hammers the breaker from hundreds of
// goroutines (run it with -race) while it opens and recovers; afterwards
// its bookkeeping must let it recover as a fresh one would: no trial slot
// left taken.
func TestBreakerUnderConcurrentCallers(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := newTestBreaker(t, 0.5)
		var wg sync.WaitGroup
		var admitted, refused atomic.Int64
		for i := range 300 {
			wg.Go(func() {
				r := rand.New(rand.NewPCG(uint64(i), 1))
				for range 50 {
					err := b.Execute(func() error {
						admitted.Add(1)
						time.Sleep(time.Duration(r.IntN(100)) * time.Millisecond)
						if r.IntN(10) == 0 {
							return errFault
						}
						return nil
					})
					if _, open := err.(*openError); open {
						refused.Add(1)
						time.Sleep(time.Second)
					}
				}
			})
		}
		wg.Wait()
		if admitted.Load() == 0 || refused.Load() == 0 || b.Snapshot().TimesOpened == 0 {
			t.Fatalf("admitted %d, refused %d, opened %d times: the breaker was not exercised", admitted.Load(), refused.Load(), b.Snapshot().TimesOpened)
		}
		time.Sleep(2 * time.Minute) // past the longest backoff: closed or half-open now …
		for range 3 {               // … and a healthy upstream closes it, as the ramp says
			call(t, b, nil)
		}
		wantState(t, b, stateClosed)
	})
}

// TestBreakerEndToEnd sends one POST /addEvent every 100ms to an upstream
// that fails (500) from 5 s to 25 s of the run: the breaker opens, the
// upstream sees no call while it is open and one trial at a time while
// half-open, and the breaker closes by itself once the upstream is back.
func TestBreakerEndToEnd(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m := mock.New(mock.Options{})
		start := time.Now()
		outage := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if d := time.Since(start); d >= 5*time.Second && d < 25*time.Second {
				http.Error(w, "down", http.StatusInternalServerError)
				return
			}
			m.ServeHTTP(w, r)
		})
		var g *testGateway
		watch := &breakerWatch{breaker: func() *breaker { return g.breaker }, next: outage}
		upstream := watch
		g = newTestGateway(t, upstream, func(c *config) { c.BreakerBackoffMin = time.Second })

		var wg sync.WaitGroup
		codes := make([]int, 600)
		for i := range codes {
			wg.Go(func() {
				codes[i] = g.post("/addEvent", `{"name": "tick `+strconv.Itoa(i)+`", "userId": "1"}`).Code
			})
			time.Sleep(100 * time.Millisecond)
		}
		wg.Wait()

		s := g.breaker.Snapshot()
		if s.TimesOpened == 0 {
			t.Fatal("the breaker never opened during the outage")
		}
		if n := watch.inOpen.Load(); n != 0 {
			t.Errorf("the upstream received %d calls while the breaker was open; want 0", n)
		}
		if n := watch.maxTrials.Load(); n > 4 {
			t.Errorf("up to %d trials in flight while half-open; want the ramp's 1, 2, 4", n)
		}
		if strings.Contains(g.get("/metrics").Body.String(), `eventgate_breaker_transitions_total{from="half-open",to="closed"}`) == false {
			t.Error("the breaker never closed by itself")
		}
		if countOK(codes[300:]) == 0 {
			t.Error("no event was accepted in the second half of the run")
		}
		if stored := m.EventCount() - 4; stored != countOK(codes) {
			t.Errorf("upstream stored %d events; clients were told %d succeeded", stored, countOK(codes))
		}
	})
}

// breakerWatch is an upstream that sees what the breaker in front of it
// lets through: calls while it is open, and trials at once while half-open.
type breakerWatch struct {
	breaker          func() *breaker
	next             http.Handler
	inOpen           atomic.Int64
	concurrentTrials atomic.Int64
	maxTrials        atomic.Int64
}

func (bw *breakerWatch) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch s := bw.breaker().Snapshot(); s.State {
	case "open":
		// A call admitted while closed may arrive in the very instant the
		// breaker opens; one arriving later is a leak.
		if time.Now().After(s.Since) {
			bw.inOpen.Add(1)
		}
	case "half-open":
		n := bw.concurrentTrials.Add(1)
		defer bw.concurrentTrials.Add(-1)
		if n > bw.maxTrials.Load() {
			bw.maxTrials.Store(n)
		}
	}
	bw.next.ServeHTTP(w, r)
}

// countOK counts the 200s among codes.
func countOK(codes []int) int {
	n := 0
	for _, c := range codes {
		if c == 200 {
			n++
		}
	}
	return n
}

func TestOpenBreakerAnswers503WithoutCallingTheUpstream(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := newTestGateway(t, statusUpstream(500, "text/plain", "boom"), nil)
		for range 3 {
			if rec := g.post("/addEvent", `{"name": "x", "userId": "1"}`); rec.Code != 502 {
				t.Fatalf("POST with the upstream failing = %d; want 502", rec.Code)
			}
		}
		time.Sleep(time.Second)
		rec := g.post("/addEvent", `{"name": "x", "userId": "1"}`)
		if rec.Code != 503 || rec.Header().Get("Retry-After") != "4" {
			t.Errorf("POST while open = %d, Retry-After %q; want 503, 4", rec.Code, rec.Header().Get("Retry-After"))
		}
		if msg := errorBody(t, rec); msg != "the event service is unavailable; retry after 4 seconds" {
			t.Errorf("error = %q", msg)
		}
		if n := g.transport.calls.Load(); n != 3 {
			t.Errorf("upstream called %d times; want 3 (none while open)", n)
		}
		if rec := g.get("/getUsers"); rec.Code != 502 {
			t.Errorf("GET /getUsers = %d; reads do not pass the write breaker, want the upstream's 502", rec.Code)
		}
		var health struct {
			Breaker struct {
				State       string     `json:"state"`
				TimesOpened int        `json:"timesOpened"`
				RetryAfter  int        `json:"retryAfterSeconds"`
				NextTrialAt *time.Time `json:"nextTrialAt"`
			} `json:"breaker"`
		}
		json.Unmarshal(g.get("/health").Body.Bytes(), &health)
		if b := health.Breaker; b.State != "open" || b.TimesOpened != 1 || b.RetryAfter != 4 || b.NextTrialAt == nil || b.NextTrialAt.Before(time.Now().Add(3*time.Second)) || b.NextTrialAt.After(time.Now().Add(4*time.Second)) {
			t.Errorf("/health breaker = %+v; want open once, next trial in 4s", b)
		}
	})
}

// TestBreakerExecuteRecordsAPanicAsAFault: a call that panics is a fault,
// and the panic still reaches Execute's caller.
func TestBreakerExecuteRecordsAPanicAsAFault(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := newTestBreaker(t, 0)
		for i := range 3 {
			func() {
				defer func() {
					if v := recover(); v != "bug" {
						t.Errorf("call %d: recovered %v; want the call's own panic", i, v)
					}
				}()
				b.Execute(func() error { panic("bug") })
			}()
		}
		wantState(t, b, stateOpen)
	})
}

// TestPanicInATrialLeavesNothingTaken: a write that panics while the
// breaker is half-open is answered 500, re-opens the breaker like any
// failed trial, and frees its Idempotency-Key; after the next backoff the
// same key is written, and the breaker closes.
func TestPanicInATrialLeavesNothingTaken(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m := quietMock()
		var mode atomic.Value
		mode.Store("fail")
		g := newTestGateway(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			switch mode.Load() {
			case "fail":
				http.Error(w, "", 500)
			case "panic":
				panic("bug in the upstream client")
			default:
				m.ServeHTTP(w, r)
			}
		}), nil)
		post := func(key string) int {
			if key == "" {
				return g.post("/addEvent", `{"name": "x", "userId": "1"}`).Code
			}
			return g.post("/addEvent", `{"name": "x", "userId": "1"}`, "Idempotency-Key", key).Code
		}
		for range 3 {
			post("")
		}
		time.Sleep(5 * time.Second)
		wantState(t, g.breaker, stateHalfOpen)

		mode.Store("panic")
		if code := post("k"); code != 500 {
			t.Fatalf("a write that panicked = %d; want 500", code)
		}
		wantState(t, g.breaker, stateOpen)

		mode.Store("ok")
		time.Sleep(10 * time.Second) // the second backoff, twice the first
		wantState(t, g.breaker, stateHalfOpen)
		if code := post("k"); code != 200 {
			t.Errorf("the same key after the panic = %d; want 200, the key free again", code)
		}
		post("")
		post("")
		wantState(t, g.breaker, stateClosed)
	})
}

// TestBreakerWaitsAsLongAsTheUpstreamAsked: the upstream answered writes 503
// with Retry-After: 60; the breaker's next trial comes no earlier than 60 s,
// not at BACKOFF_MIN, and an absurd Retry-After is held to BACKOFF_MAX.
func TestBreakerWaitsAsLongAsTheUpstreamAsked(t *testing.T) {
	for _, c := range []struct {
		retryAfter, want time.Duration
	}{{60 * time.Second, 60 * time.Second}, {2 * time.Second, 5 * time.Second}, {time.Hour, 60 * time.Second}} {
		synctest.Test(t, func(t *testing.T) {
			b := newTestBreaker(t, 0)
			b.s.WaitAtLeast = retryAfter
			overloaded := &upstreamError{Op: "addEvent", Kind: failUnavailable, Status: 503, RetryAfter: c.retryAfter}
			start := time.Now()
			for range 3 {
				call(t, b, overloaded)
			}
			if got := b.Snapshot().NextTrial.Sub(start); got != c.want {
				t.Errorf("Retry-After %v: next trial after %v; want %v", c.retryAfter, got, c.want)
			}
			time.Sleep(c.want - time.Millisecond)
			wantState(t, b, stateOpen)
			time.Sleep(time.Millisecond)
			synctest.Wait()
			wantState(t, b, stateHalfOpen)
		})
	}
}

// TestBreakerHalfOpenAdmitsOneTwoFour: trials at once are 1, then 2 after
// one success, then 4 after two (with one still out, three more).
func TestBreakerHalfOpenAdmitsOneTwoFour(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := newTestBreaker(t, 0)
		b.closeAfter = 10 // so that the ramp, not closing, is seen
		trip(t, b)
		time.Sleep(5 * time.Second)
		admitted := func(n int) (int, []func()) {
			var finishes []func()
			got := 0
			for range n {
				ok, finish := begin(b, nil)
				if ok {
					got++
					finishes = append(finishes, finish)
				}
			}
			return got, finishes
		}
		got, fs := admitted(2)
		if got != 1 {
			t.Fatalf("half-open: %d of 2 trials admitted; want 1", got)
		}
		fs[0]()
		got, fs = admitted(3)
		if got != 2 {
			t.Fatalf("after one success: %d of 3 admitted; want 2", got)
		}
		fs[0]() // a second success; one trial still out
		got, more := admitted(4)
		if got != 3 {
			t.Errorf("after two successes, one out: %d of 4 admitted; want 3 (4 at once)", got)
		}
		for _, finish := range append(fs[1:], more...) {
			finish()
		}
	})
}

// TestBreakerForgetsOldFaultsWhenItCloses: a breaker that opened on three
// faults and recovered starts closed with no fault counted: one more fault
// within the same window does not open it again.
func TestBreakerForgetsOldFaultsWhenItCloses(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := newTestBreaker(t, 0)
		trip(t, b)
		time.Sleep(5 * time.Second)
		synctest.Wait() // the open period's goroutine turns it half-open
		for range 3 {
			call(t, b, nil)
		}
		wantState(t, b, stateClosed)
		call(t, b, errFault)
		wantState(t, b, stateClosed)
		if n := b.Snapshot().FailuresInWindow; n != 1 {
			t.Errorf("faults in the window after recovering and one more: %d; want 1", n)
		}
	})
}

// TestAPanicInTheOpenPeriodsGoroutine: when the goroutine that ends an open
// period panics (here in the OnChange hook, as it turns the breaker
// half-open), the panic is logged and that goroutine ends; the breaker
// keeps admitting trials, and Close still returns.
func TestAPanicInTheOpenPeriodsGoroutine(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := newTestBreaker(t, 0)
		b.s.OnChange = func(from, to breakerState) {
			if to == stateHalfOpen {
				panic("on purpose")
			}
		}
		trip(t, b)
		time.Sleep(5 * time.Second)
		wantState(t, b, stateHalfOpen)
		call(t, b, nil) // a trial is admitted, and recorded
		b.Close()
	})
}
