package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"eventgate/mock"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"
)

// errTestOverload is what windowUpstream refuses with.
var errTestOverload = errors.New("overloaded")

// windowUpstream accepts at most n calls in any sliding window of w, like
// the mock, and counts what it was sent.
type windowUpstream struct {
	mu       sync.Mutex
	n        int
	w        time.Duration
	accepted []time.Time
	sent     int
	refused  int
}

func (u *windowUpstream) setCapacity(n int) {
	u.mu.Lock()
	u.n = n
	u.mu.Unlock()
}

func (u *windowUpstream) call() error {
	u.mu.Lock()
	defer u.mu.Unlock()
	now := time.Now()
	u.sent++
	for len(u.accepted) > 0 && !u.accepted[0].After(now.Add(-u.w)) {
		u.accepted = u.accepted[1:]
	}
	if len(u.accepted) >= u.n {
		u.refused++
		return errTestOverload
	}
	u.accepted = append(u.accepted, now)
	return nil
}

func newTestAdmission() *admission {
	return newAdmission(admissionOptions{
		MaxWait:    admissionMaxWait,
		MaxQueue:   admissionMaxQueue,
		Overloaded: func(err error) bool { return errors.Is(err, errTestOverload) },
		RetryAfter: func(error) time.Duration { return 0 },
		Uncounted:  func(error) bool { return false },
		Jitter:     func() float64 { return 0 },
		Logger:     slog.New(slog.DiscardHandler),
		Metrics:    newMetrics(),
	})
}

// offer sends writes through a to up at rate per second for d, each its own
// caller, and waits for them all.
func offer(a *admission, up *windowUpstream, rate float64, d time.Duration) {
	var wg sync.WaitGroup
	for start := time.Now(); time.Since(start) < d; time.Sleep(time.Duration(float64(time.Second) / rate)) {
		wg.Go(func() {
			t, err := a.Admit(context.Background(), 0)
			if err == nil {
				a.Done(t, up.call())
			}
		})
	}
	wg.Wait()
}

// TestPacingFollowsTheCapacity: the estimate is learnt from the first
// overload, rises when the upstream takes more and falls when it takes
// less, each within a bounded time.
func TestPacingFollowsTheCapacity(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		a := newTestAdmission()
		var log bytes.Buffer
		a.o.Logger = slog.New(slog.NewJSONHandler(&log, nil))
		up := &windowUpstream{n: 5, w: 10 * time.Second}
		if r := a.Snapshot().WritesPerSecond; r != 0 {
			t.Errorf("paced at %v/s before any overload; want not paced", r)
		}
		offer(a, up, 2, 50*time.Second)
		if r := a.Snapshot().WritesPerSecond; r < 0.45 || r > 0.5 {
			t.Errorf("after 50 s at 5 per 10 s, paced at %.3f/s; want 0.45 to 0.5", r)
		}
		up.setCapacity(20)
		// A probe is due within probeEvery, and each accepted probe adds
		// one write per window: 15 at 3 writes/s take 5 s.
		offer(a, up, 3, probeEvery+10*time.Second)
		if r := a.Snapshot().WritesPerSecond; r < 1.8 || r > 2.1 {
			t.Errorf("25 s after the capacity rose to 20 per 10 s, paced at %.3f/s (%+v); want 1.8 to 2.1 (the window known within 5%%)", r, a.Snapshot())
		}
		up.setCapacity(5)
		offer(a, up, 3, 30*time.Second)
		if r := a.Snapshot().WritesPerSecond; r > 0.5 {
			t.Errorf("30 s after the capacity fell back, paced at %.3f/s; want at most 0.5", r)
		}
		// One line each time the estimate moved by more than 2×: from not
		// paced, up to 5 per 10 s, to 20 per 10 s, and back.
		var logged []float64
		for line := range strings.Lines(log.String()) {
			var l struct {
				Msg       string  `json:"msg"`
				PerSecond float64 `json:"writes_per_second"`
			}
			if json.Unmarshal([]byte(line), &l) == nil && l.Msg == "write pacing changed" {
				logged = append(logged, l.PerSecond)
			}
		}
		for i := 1; i < len(logged); i++ {
			if ratio := logged[i] / logged[i-1]; ratio < 2 && ratio > 0.5 {
				t.Errorf("logged %.3f/s after %.3f/s: less than a factor of 2", logged[i], logged[i-1])
			}
		}
		if len(logged) < 3 || len(logged) > 8 || logged[len(logged)-1] > 1 {
			t.Errorf("logged estimates %v; want a line for each large change, ending below 1/s", logged)
		}
	})
}

// windowHandler serves the mock behind a windowUpstream: POST /addEvent
// past the window's capacity is a 503 (with retryAfter, if set).
func windowHandler(up *windowUpstream, retryAfter string) http.Handler {
	m := mock.New(mock.Options{})
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost && up.call() != nil {
			if retryAfter != "" {
				w.Header().Set("Retry-After", retryAfter)
			}
			http.Error(w, `{"error": "busy"}`, http.StatusServiceUnavailable)
			return
		}
		m.ServeHTTP(w, r)
	})
}

// sentSoFar returns how many writes up was sent.
func (u *windowUpstream) sentSoFar() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.sent
}

// TestAWriteThatCannotFitIsRefusedAtOnce: against an upstream that takes
// one write per hour, the admission soon has no turn for a write within
// its 2 s: that write is refused at once, without a call, with a
// Retry-After saying when its turn would come and a message saying writes
// are paced; and neither it nor the overloads are breaker faults.
func TestAWriteThatCannotFitIsRefusedAtOnce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		up := &windowUpstream{n: 1, w: time.Hour}
		g := newTestGateway(t, windowHandler(up, ""), nil)
		if c := g.post("/addEvent", `{"name": "a", "userId": "1"}`).Code; c != 200 {
			t.Fatalf("first write = %d; want 200", c)
		}
		for i := range 20 {
			sent, start := up.sentSoFar(), time.Now()
			rec := g.post("/addEvent", `{"name": "b", "userId": "1"}`)
			if !strings.Contains(rec.Body.String(), "pacing writes") {
				continue // sent, and refused by the upstream: the model learns
			}
			retry, _ := strconv.Atoi(rec.Header().Get("Retry-After"))
			turn := g.pacing.freeAtLocked(t)
			if rec.Code != 503 || time.Since(start) != 0 || up.sentSoFar() != sent {
				t.Errorf("write %d = %d %s after %v, %d calls; want a pacing 503 at once, with no call", i+2, rec.Code, rec.Body, time.Since(start), up.sentSoFar()-sent)
			}
			if want := retrySeconds(time.Until(turn)); retry != want || retry < 3 {
				t.Errorf("Retry-After = %d; want %d, when its turn would come", retry, want)
			}
			if s := g.breaker.Snapshot(); s.FailuresInWindow != 0 {
				t.Errorf("the breaker counted %d faults; want none for overloads and pacing refusals", s.FailuresInWindow)
			}
			var health struct{ WritePacing map[string]any }
			json.Unmarshal(g.get("/health").Body.Bytes(), &health)
			if p := health.WritePacing; p["paced"] != true || p["writesPerWindow"] != 1.0 || p["writesPerSecond"].(float64) > 1.0/55 {
				t.Errorf("/health writePacing = %v; want paced, 1 write per window of about a minute", p)
			}
			return
		}
		t.Error("20 writes in a row and none refused by the pacing")
	})
}

// learnOnePerSecond teaches g (or a) an upstream taking one write per
// second, by offering four a second for 30 s.
func learnOnePerSecond(t *testing.T, write func()) {
	t.Helper()
	var wg sync.WaitGroup
	for range 120 {
		wg.Go(write)
		time.Sleep(250 * time.Millisecond)
	}
	wg.Wait()
	time.Sleep(2 * time.Second) // the window empties
}

// TestAWriteWhoseClientLeftIsNeverSent: a write waiting for its turn whose
// caller leaves is not sent, and gives its turn back to the next.
func TestAWriteWhoseClientLeftIsNeverSent(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		a := newTestAdmission()
		up := &windowUpstream{n: 1, w: time.Second}
		learnOnePerSecond(t, func() {
			if turn, err := a.Admit(context.Background(), 0); err == nil {
				a.Done(turn, up.call())
			}
		})
		if s := a.Snapshot(); s.Writes != 1 || s.Window < time.Second || s.Window > 1100*time.Millisecond {
			t.Fatalf("learnt %+v; want 1 write per 1 s to 1.1 s", s)
		}
		first, _ := a.Admit(context.Background(), 0)
		a.Done(first, up.call())
		sent := up.sentSoFar()

		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error)
		go func() {
			_, err := a.Admit(ctx, 0)
			done <- err
		}()
		time.Sleep(500 * time.Millisecond)
		synctest.Wait()
		if n := a.Snapshot().Waiting; n != 1 {
			t.Fatalf("%d writes waiting; want the one whose turn is in 0.5 s", n)
		}
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Errorf("Admit after the caller left = %v; want context.Canceled", err)
		}
		next, err := a.Admit(context.Background(), 0)
		if err != nil || next.at.Sub(first.at) > 1100*time.Millisecond {
			t.Errorf("the next write's turn is %v after the last sent (%v); want the turn given back, about 1 s", next.at.Sub(first.at), err)
		}
		if n := up.sentSoFar(); n != sent {
			t.Errorf("the upstream was sent %d more writes; want none for the caller that left", n-sent)
		}
		a.Done(next, nil)
	})
}

// retryAfterError is an overload that says how long to wait.
type retryAfterError struct{ wait time.Duration }

func (e retryAfterError) Error() string { return "overloaded" }

// TestTheUpstreamsRetryAfterIsKept: after an overload answer with a
// Retry-After, no write goes before it, not even one already waiting for a
// turn it was given before.
func TestTheUpstreamsRetryAfterIsKept(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		a := newTestAdmission()
		a.o.Overloaded = func(err error) bool { return errors.As(err, new(retryAfterError)) || errors.Is(err, errTestOverload) }
		a.o.RetryAfter = func(err error) time.Duration {
			var ra retryAfterError
			errors.As(err, &ra)
			return ra.wait
		}
		up := &windowUpstream{n: 1, w: time.Second}
		learnOnePerSecond(t, func() {
			if turn, err := a.Admit(context.Background(), 0); err == nil {
				a.Done(turn, up.call())
			}
		})
		noProbes(a)
		asked := time.Now()
		accepted, err := a.Admit(context.Background(), 0)
		if err != nil || !accepted.at.Equal(asked) {
			t.Fatalf("a write to an idle upstream waits: %v, %v", accepted.at, err)
		}
		a.Done(accepted, nil)
		// A probe (one write more than the model allows) is refused with
		// a Retry-After while the next write waits for its turn.
		a.mu.Lock()
		a.probeAt = time.Now()
		a.mu.Unlock()
		first, err := a.Admit(context.Background(), 0)
		if err != nil || !first.probe {
			t.Fatalf("the write after the probe was allowed = %+v, %v; want a probe", first, err)
		}
		waited := make(chan error)
		go func() {
			turn, err := a.Admit(context.Background(), 0) // its turn is in about 1 s
			if err == nil && time.Since(first.at) < 3*time.Second {
				t.Errorf("a waiting write went %v after the overload; want none before its Retry-After of 3 s", time.Since(first.at))
			}
			if err == nil {
				a.Done(turn, nil)
			}
			waited <- err
		}()
		synctest.Wait()
		a.Done(first, retryAfterError{3 * time.Second}) // "come back in 3 s"
		if err := <-waited; err == nil {
			t.Log("the waiting write went after the Retry-After")
		} else if pe := new(pacingError); !errors.As(err, &pe) || time.Since(first.at)+pe.RetryAfter < 3*time.Second {
			t.Errorf("the waiting write = %v after %v; want a pacing refusal saying to come back after the 3 s", err, time.Since(first.at))
		}
		next, err := a.Admit(context.Background(), 0)
		if err == nil && next.at.Sub(first.at) < 3*time.Second {
			t.Errorf("a new write goes %v after the overload; want not before its Retry-After of 3 s", next.at.Sub(first.at))
		}
	})
}

// freeAtLocked returns when the model gives the next turn (no probe).
func (a *admission) freeAtLocked(t *testing.T) time.Time {
	t.Helper()
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.freeAt(time.Duration(float64(a.wHi) * paceMargin))
}

// TestAKeyedWriteHoldsItsKeyWhileItWaits: a duplicate of a keyed write
// waiting for its turn is 409 at once (never queued twice); a keyed write
// refused by the pacing leaves its key free.
func TestAKeyedWriteHoldsItsKeyWhileItWaits(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		up := &windowUpstream{n: 1, w: time.Second}
		g := newTestGateway(t, windowHandler(up, ""), nil)
		learnOnePerSecond(t, func() { g.post("/addEvent", `{"name": "learn", "userId": "1"}`) })
		if s := g.pacing.Snapshot(); s.Writes != 1 || s.Window < time.Second || s.Window > 1100*time.Millisecond {
			t.Fatalf("learnt %+v; want 1 write per 1 s to 1.1 s", s)
		}
		noProbes(g.pacing) // their timing is the jitter's
		if c := g.post("/addEvent", `{"name": "now", "userId": "1"}`).Code; c != 200 {
			t.Fatalf("a write to an idle upstream = %d; want 200", c)
		}
		keyed := make(chan int)
		go func() { keyed <- g.post("/addEvent", `{"name": "k", "userId": "1"}`, "Idempotency-Key", "k-1").Code }()
		synctest.Wait()
		start := time.Now()
		if c := g.post("/addEvent", `{"name": "k", "userId": "1"}`, "Idempotency-Key", "k-1").Code; c != 409 || time.Since(start) != 0 {
			t.Errorf("the same key while the first waits = %d after %v; want 409 at once", c, time.Since(start))
		}
		if c := <-keyed; c != 200 {
			t.Errorf("the keyed write that waited = %d; want 200", c)
		}

		plain := make(chan int)
		go func() { plain <- g.post("/addEvent", `{"name": "p", "userId": "1"}`).Code }() // takes the next turn, in 1 s
		synctest.Wait()
		for i := range 2 {
			rec := g.post("/addEvent", `{"name": "k2", "userId": "1"}`, "Idempotency-Key", "k-2")
			if rec.Code != 503 || !strings.Contains(rec.Body.String(), "pacing") {
				t.Errorf("keyed write %d with no turn in time = %d %s; want a pacing 503 (the key free again)", i+1, rec.Code, rec.Body)
			}
		}
		if c := <-plain; c != 200 {
			t.Errorf("the write that took the next turn = %d; want 200", c)
		}
	})
}

// TestAnUpstreamThatNeverAcceptsOpensTheBreaker: 503s from an upstream
// that has taken no write for a minute are an outage, and open the breaker
// as the seed rule says; the admission has nothing to learn from them.
func TestAnUpstreamThatNeverAcceptsOpensTheBreaker(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := newTestGateway(t, statusUpstream(503, "application/json", `{"error": "down"}`), nil)
		for range 3 {
			g.post("/addEvent", `{"name": "x", "userId": "1"}`)
		}
		if s := g.breaker.Snapshot(); s.State != stateOpen {
			t.Errorf("after 3 refusals from an upstream that never accepted, the breaker is %s; want open", s.State)
		}
		if r := g.pacing.Snapshot().WritesPerSecond; r != 0 {
			t.Errorf("paced at %v/s; want not paced: nothing was accepted", r)
		}
	})
}

// noProbes keeps a from probing for the rest of a test, so that which
// write goes when does not depend on the probes' jitter.
func noProbes(a *admission) {
	a.mu.Lock()
	a.probeAt = time.Now().Add(time.Hour)
	a.mu.Unlock()
}

// TestTheWaitingRoomIsBounded: a write waits only while its request's
// deadline leaves its whole reserve (UPSTREAM_TIMEOUT) after its turn, and
// only while fewer than MaxQueue wait; otherwise it is refused at once.
func TestTheWaitingRoomIsBounded(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		a := newTestAdmission()
		a.o.MaxQueue = 2
		up := &windowUpstream{n: 1, w: time.Second}
		learnOnePerSecond(t, func() {
			if turn, err := a.Admit(context.Background(), 0); err == nil {
				a.Done(turn, up.call())
			}
		})
		noProbes(a)
		first, _ := a.Admit(context.Background(), 0)
		a.Done(first, nil)

		// Its turn comes in about 1 s, but its deadline is in 1.5 s and
		// the write needs 1 s after its turn.
		ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
		defer cancel()
		start := time.Now()
		if _, err := a.Admit(ctx, time.Second); !errors.As(err, new(*pacingError)) || time.Since(start) != 0 {
			t.Errorf("a write whose deadline leaves 0.5 s after its turn = %v after %v; want a pacing refusal at once", err, time.Since(start))
		}

		// MaxQueue 2: two wait (turns in about 1 and 2 s) ...
		ctx, cancel = context.WithCancel(context.Background())
		var wg sync.WaitGroup
		a.o.MaxWait = 10 * time.Second
		for range 2 {
			wg.Go(func() { a.Admit(ctx, 0) })
		}
		synctest.Wait()
		// ... and the third is refused, though its turn is within MaxWait.
		if _, err := a.Admit(context.Background(), 0); !errors.As(err, new(*pacingError)) {
			t.Errorf("a third write with two waiting = %v; want a pacing refusal", err)
		}
		cancel()
		wg.Wait()
	})
}

// TestACapacityOneSmallerCostsOneStep: a model one write too generous (the
// upstream took 6 per window, then 5 again) loses that one write at the
// first refusal it cannot explain, not half of them.
func TestACapacityOneSmallerCostsOneStep(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		a := newTestAdmission()
		up := &windowUpstream{n: 5, w: 10 * time.Second}
		offer(a, up, 2, 50*time.Second)
		up.setCapacity(6)
		offer(a, up, 2, 30*time.Second)
		if n := a.Snapshot().Writes; n != 6 {
			t.Fatalf("the model has %d writes per window after 30 s at 6; want 6", n)
		}
		up.setCapacity(5)
		lowest := make(chan int)
		stop := make(chan struct{})
		go func() { // samples the model every 100 ms
			low := a.Snapshot().Writes
			for {
				select {
				case <-stop:
					lowest <- low
					return
				case <-time.After(100 * time.Millisecond):
					low = min(low, a.Snapshot().Writes)
				}
			}
		}()
		offer(a, up, 2, 30*time.Second)
		close(stop)
		if n, low := a.Snapshot().Writes, <-lowest; n != 5 || low != 5 {
			t.Errorf("the model has %d writes per window 30 s after the capacity fell to 5, and %d at the lowest; want 5 and 5", n, low)
		}
	})
}

// TestRefusalsOfWritesSentTogetherCountOnce: writes that went together
// under one model and are refused together are one piece of news: the
// model shrinks once, not once per write.
func TestRefusalsOfWritesSentTogetherCountOnce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		a := newTestAdmission()
		up := &windowUpstream{n: 20, w: 10 * time.Second}
		offer(a, up, 3, 60*time.Second)
		if n := a.Snapshot().Writes; n != 20 {
			t.Fatalf("the model has %d writes per window after 60 s at 20; want 20", n)
		}
		noProbes(a)
		time.Sleep(20 * time.Second) // the window empties
		var turns []turn
		for range 3 {
			asked := time.Now()
			turn, err := a.Admit(context.Background(), 0)
			if err != nil || !turn.at.Equal(asked) {
				t.Fatalf("a write to an empty window = %+v, %v; want it sent at once", turn, err)
			}
			turns = append(turns, turn)
		}
		for _, turn := range turns { // someone else took the capacity
			a.Done(turn, errTestOverload)
		}
		if n := a.Snapshot().Writes; n != 19 {
			t.Errorf("after 3 writes sent together were refused, the model has %d writes per window; want 19 (one step)", n)
		}
	})
}

// TestALargerCapacityIsFoundWhenTheWindowIsKnown: a model of 100 writes
// per 10 s follows the upstream to 400 within 30 s: once the window is
// known, every accepted probe says one more fits.
func TestALargerCapacityIsFoundWhenTheWindowIsKnown(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		a := newTestAdmission()
		up := &windowUpstream{n: 100, w: 10 * time.Second}
		offer(a, up, 12, 60*time.Second)
		up.setCapacity(400)
		offer(a, up, 50, 30*time.Second)
		if r := a.Snapshot().WritesPerSecond; r < 30 {
			t.Errorf("30 s after the capacity rose from 10/s to 40/s, paced at %.1f/s (%+v); want at least 30", r, a.Snapshot())
		}
	})
}

// errTestMistake is a write the upstream refused as the client's mistake
// (a 404 for an unknown user), before counting it.
var errTestMistake = errors.New("user not found")

// TestWritesTheUpstreamDidNotCountTakeNoRoom: a write refused as the
// client's mistake gives its turn back, so writes for unknown users take
// no one's room.
func TestWritesTheUpstreamDidNotCountTakeNoRoom(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		a := newTestAdmission()
		a.o.Uncounted = func(err error) bool { return errors.Is(err, errTestMistake) }
		up := &windowUpstream{n: 1, w: time.Second}
		learnOnePerSecond(t, func() {
			if turn, err := a.Admit(context.Background(), 0); err == nil {
				a.Done(turn, up.call())
			}
		})
		noProbes(a)
		for range 5 {
			asked := time.Now()
			turn, err := a.Admit(context.Background(), 0)
			if err != nil || !turn.at.Equal(asked) {
				t.Fatalf("a write after writes for unknown users waits (%v, %v); want it sent at once", turn.at.Sub(asked), err)
			}
			a.Done(turn, errTestMistake)
		}
	})
}

// TestAnIdleMinuteIsNoOutage: after a minute with no writes at all, the
// first refusals are overload (the pacing's), not breaker faults; refusals
// that go on for floorAfter are.
func TestAnIdleMinuteIsNoOutage(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		a := newTestAdmission()
		turn, _ := a.Admit(context.Background(), 0)
		a.Done(turn, nil)
		time.Sleep(2 * maxWindow)
		for range 3 {
			turn, err := a.Admit(context.Background(), 0)
			if err == nil {
				a.Done(turn, errTestOverload)
			}
		}
		if a.AtFloor() {
			t.Error("refusals right after an idle minute are at the floor; want overload, not an outage")
		}
		time.Sleep(floorAfter)
		if !a.AtFloor() {
			t.Errorf("no write accepted for %v and refusals for %v: not at the floor; want an outage", 2*maxWindow+floorAfter, floorAfter)
		}
	})
}

// TestWritesForUnknownUsersTakeNoRoom: through the gateway, 404s for an
// unknown user (which the upstream refuses before counting) leave the
// pacing's room to everyone else.
func TestWritesForUnknownUsersTakeNoRoom(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m := mock.New(mock.Options{AddCapacity: 1, AddWindow: time.Second, RejectDelay: 100 * time.Millisecond})
		g := newTestGateway(t, m, nil)
		learnOnePerSecond(t, func() { g.post("/addEvent", `{"name": "learn", "userId": "1"}`) })
		noProbes(g.pacing)
		for i := range 5 {
			start := time.Now()
			if c := g.post("/addEvent", `{"name": "x", "userId": "99"}`).Code; c != 404 || time.Since(start) != 0 {
				t.Errorf("write %d for an unknown user = %d after %v; want 404 at once", i+1, c, time.Since(start))
			}
		}
		start := time.Now()
		if c := g.post("/addEvent", `{"name": "y", "userId": "1"}`).Code; c != 200 || time.Since(start) != 0 {
			t.Errorf("an honest write after them = %d after %v; want 200 at once", c, time.Since(start))
		}
	})
}

// TestAnOpenBreakerIsToldAtOnceWhilePaced: with the breaker open, a write
// is answered 503 at once, not after waiting for a pacing turn.
func TestAnOpenBreakerIsToldAtOnceWhilePaced(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		up := &windowUpstream{n: 1, w: time.Second}
		var down atomic.Bool
		paced := windowHandler(up, "")
		g := newTestGateway(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if down.Load() && r.Method == http.MethodPost {
				http.Error(w, "down", http.StatusInternalServerError)
				return
			}
			paced.ServeHTTP(w, r)
		}), nil)
		learnOnePerSecond(t, func() { g.post("/addEvent", `{"name": "learn", "userId": "1"}`) })
		noProbes(g.pacing)
		down.Store(true)
		for g.breaker.Snapshot().State != stateOpen {
			g.post("/addEvent", `{"name": "fails", "userId": "1"}`) // paced, one a second
		}
		start := time.Now()
		rec := g.post("/addEvent", `{"name": "while open", "userId": "1"}`)
		if rec.Code != 503 || !strings.Contains(rec.Body.String(), "unavailable") || time.Since(start) != 0 {
			t.Errorf("a write while the breaker is open = %d %s after %v; want the breaker's 503 at once", rec.Code, rec.Body, time.Since(start))
		}
	})
}

// TestAHiccupIsNotOverload: an upstream that refuses a write now and then
// and takes the next (a 503 in a deploy, or at random) is not paced: a
// burst of 50 writes after two such refusals all go at once. Two refusals
// in a row (no write sent after the first accepted; one sent before it may
// be) are overload: the writes accepted before the first filled the
// window, and writes are paced to them.
func TestAHiccupIsNotOverload(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		a := newTestAdmission()
		write := func(err error) {
			turn, admitErr := a.Admit(context.Background(), 0)
			if admitErr != nil {
				t.Fatalf("a write before any pacing: %v", admitErr)
			}
			a.Done(turn, err)
		}
		burst := func() (atOnce int) {
			for range 50 {
				asked := time.Now()
				turn, err := a.Admit(context.Background(), 0)
				if err == nil && turn.at.Equal(asked) {
					atOnce++
				}
				if err == nil {
					a.Done(turn, nil)
				}
			}
			return atOnce
		}
		for i := range 20 {
			time.Sleep(100 * time.Millisecond)
			if i == 5 || i == 15 {
				write(errTestOverload)
			} else {
				write(nil)
			}
		}
		if s := a.Snapshot(); s.Writes != 0 {
			t.Errorf("after two refusals among 20 writes, each followed by a write accepted, paced at %d writes per %v; want unpaced", s.Writes, s.Window)
		}
		if n := burst(); n != 50 {
			t.Errorf("after a hiccup, %d of 50 writes went at once; want all", n)
		}

		time.Sleep(maxWindow)
		for range 5 {
			time.Sleep(100 * time.Millisecond)
			write(nil)
		}
		// A write sent before the first refusal, answered after it, says
		// nothing of the refusal.
		before, _ := a.Admit(context.Background(), 0)
		first, _ := a.Admit(context.Background(), 0)
		a.Done(first, errTestOverload)
		a.Done(before, nil)
		write(errTestOverload)
		if s := a.Snapshot(); s.Writes != 6 || s.Window != maxWindow {
			t.Errorf("after 6 writes accepted and 2 refused in a row, paced at %d writes per %v; want 6 per %v (at most)", s.Writes, s.Window, maxWindow)
		}
	})
}

// TestRefusalsOfEveryOtherWriteAreOverload: a token bucket offered twice
// its rate at a steady pace refuses every other write, never two in a row;
// the fourth refusal before twenty writes are accepted begins pacing, at
// the writes accepted before the first.
func TestRefusalsOfEveryOtherWriteAreOverload(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		a := newTestAdmission()
		for i := range 10 + 7 {
			time.Sleep(100 * time.Millisecond)
			turn, err := a.Admit(context.Background(), 0)
			if err != nil {
				t.Fatalf("write %d, before pacing: %v", i, err)
			}
			refused := i >= 10 && (i-10)%2 == 0 // from the 11th: refused, accepted, refused, …
			if refused {
				a.Done(turn, errTestOverload)
			} else {
				a.Done(turn, nil)
			}
			if paced := a.Snapshot().Writes > 0; paced != (i >= 16) { // the 4th refusal is write 16
				t.Fatalf("after write %d, paced %v; want pacing from the 4th refusal on", i, paced)
			}
		}
		if s := a.Snapshot(); s.Writes != 10 || s.Window != maxWindow {
			t.Errorf("paced at %d writes per %v; want 10 per %v (at most)", s.Writes, s.Window, maxWindow)
		}
	})
}

// TestARefusalAmongAcceptancesCostsOneStep: while paced, a refused write
// costs one write of the model; a second refusal within the window costs
// half the model, but only if no write was accepted between (a refusal among
// acceptances may be a hiccup, and halving on each would pace an upstream
// that refuses a few percent at random down to a trickle).
func TestARefusalAmongAcceptancesCostsOneStep(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		a := newTestAdmission()
		up := &windowUpstream{n: 10, w: time.Second}
		offer(a, up, 20, 30*time.Second)
		noProbes(a)
		if n := a.Snapshot().Writes; n != 10 {
			t.Fatalf("learnt %d writes per window; want 10", n)
		}
		write := func(err error) {
			time.Sleep(time.Millisecond)
			turn, admitErr := a.Admit(context.Background(), 0)
			if admitErr != nil {
				t.Fatal(admitErr)
			}
			a.Done(turn, err)
		}
		write(errTestOverload)
		write(nil)
		write(errTestOverload)
		if n := a.Snapshot().Writes; n != 8 {
			t.Errorf("after refused, accepted, refused: %d writes per window; want 8 (one step each)", n)
		}
		write(errTestOverload)
		if n := a.Snapshot().Writes; n != 4 {
			t.Errorf("after a second refusal in a row: %d writes per window; want half of 8", n)
		}
		time.Sleep(2 * time.Second) // more than the window: the next is no second time
		write(errTestOverload)
		if n := a.Snapshot().Writes; n != 3 {
			t.Errorf("after a refusal a window after the last: %d writes per window; want one fewer than 4", n)
		}
	})
}
