package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"
)

// breakerState is the state of a circuit breaker, as /health and
// /metrics name it.
type breakerState string

const (
	stateClosed   breakerState = "closed"    // calls pass; faults are counted
	stateOpen     breakerState = "open"      // calls fail fast until the next trial
	stateHalfOpen breakerState = "half-open" // a few real calls are let through as trials
)

// openError is what Execute returns when the breaker refuses a call.
type openError struct {
	RetryAfter time.Duration // until the next trial may be admitted
}

func (e *openError) Error() string {
	return fmt.Sprintf("circuit breaker open; retry after %v", e.RetryAfter)
}

// breakerOptions configure a breaker; every field is required.
type breakerOptions struct {
	Threshold  int           // faults that open the breaker …
	Window     time.Duration // … within this sliding window
	BackoffMin time.Duration // wait before the first trial after opening
	BackoffMax time.Duration // the wait doubles after each failed trial, up to this

	// IsFault reports whether a call's error is a fault of what the breaker
	// guards; other errors (a refusal of a bad request, a caller that left)
	// neither open nor close it.
	IsFault func(error) bool
	// WaitAtLeast returns how long a fault asks the breaker to wait before
	// its next trial (an upstream's Retry-After); the wait after opening is
	// never shorter, up to BackoffMax.
	WaitAtLeast func(error) time.Duration
	// Jitter returns a float in [0, 1), as math/rand/v2.Float64. Each wait is the backoff less up to 20%, so that instances that
	// opened together do not probe together.
	Jitter func() float64
	// Logger receives one line per state change.
	Logger *slog.Logger
	// OnChange is called on every state change, with the breaker's lock
	// held: it must be quick and must not call the breaker.
	OnChange func(from, to breakerState)
}

// breaker is a circuit breaker. Execute is its only way in.
//
// Closed, it counts faults in a sliding window; Threshold of them open it.
// Open, every call fails at once with an *openError. Each open period has
// one goroutine that waits for the backoff (or for Close), turns the
// breaker half-open if nothing else has changed it meanwhile, and ends.
// Half-open, real calls are admitted as trials, one at first and twice as
// many after each success; closeAfter consecutive successes close it, and
// any fault opens it again with twice the backoff. No synthetic call is
// ever made.
//
// Each state change starts a generation, and a call's error counts only
// in the generation it started in, so a slow call from before a change
// cannot move the new state. The lock guards only this bookkeeping, never a
// call.
type breaker struct {
	s          breakerOptions
	closeAfter int            // consecutive successful trials that close it: 3
	quit       chan struct{}  // closed by Close
	openPeriod sync.WaitGroup // the goroutine that ends the open period, if any

	mu          sync.Mutex // protects the fields below
	state       breakerState
	generation  uint64
	since       time.Time     // when the current state began
	faults      []time.Time   // closed: fault times within the window, oldest first
	backoff     time.Duration // open: the current backoff, before jitter
	nextTrial   time.Time     // open: when it turns half-open
	trialLimit  int           // half-open: trials admitted at once
	trialsOut   int           // half-open: trials in flight
	successes   int           // half-open: consecutive successful trials
	timesOpened int
	shut        bool // Close was called: no more open periods are watched
}

// newBreaker returns a closed breaker. Call Close to end its goroutine.
func newBreaker(o breakerOptions) *breaker {
	return &breaker{s: o, closeAfter: 3, quit: make(chan struct{}), state: stateClosed}
}

// Execute runs call if the breaker admits it, and records how it went;
// refused, it returns an *openError that says when to come back. Whatever
// call does, its error is recorded (record says how it counts), and a
// panic as a fault, after which the panic goes on to the caller. So no call
// can leave a trial slot taken.
func (b *breaker) Execute(call func() error) error {
	t, err := b.admit(time.Now())
	if err != nil {
		return err
	}
	err = errCallPanicked // what is recorded if call panics
	defer func() { b.record(t, err, time.Now()) }()
	err = call()
	return err
}

// breakerSnapshot is the breaker's state for monitoring.
type breakerSnapshot struct {
	State            breakerState
	Since            time.Time // zero before the first change
	FailuresInWindow int
	NextTrial        time.Time // zero unless open
	TimesOpened      int
}

// Snapshot returns the breaker's state.
func (b *breaker) Snapshot() breakerSnapshot {
	now := time.Now()
	b.mu.Lock()
	defer b.mu.Unlock()
	s := breakerSnapshot{
		State:            b.state,
		Since:            b.since,
		FailuresInWindow: len(b.pruned(now)),
		TimesOpened:      b.timesOpened,
	}
	if b.state == stateOpen {
		s.NextTrial = b.nextTrial
	}
	return s
}

// Close ends the goroutine of the current open period, if any, and waits
// for it. The breaker keeps answering afterwards, but never recovers.
func (b *breaker) Close() {
	b.mu.Lock()
	if b.shut {
		b.mu.Unlock()
		return
	}
	b.shut = true
	b.mu.Unlock()
	close(b.quit)
	b.openPeriod.Wait()
}

// ticket is a call the breaker admitted, in the generation it started in.
type ticket struct{ generation uint64 }

// errCallPanicked is recorded, as a fault, for a call that panicked.
var errCallPanicked = errors.New("the call panicked")

// Refusing returns the *openError an open breaker would refuse a call
// with now, or nil. A caller that waits before it calls Execute (a write
// waiting for its pacing turn) asks first, so that it is told at once.
func (b *breaker) Refusing() error {
	now := time.Now()
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.state == stateOpen {
		return &openError{RetryAfter: max(b.nextTrial.Sub(now), 0)}
	}
	return nil
}

// admit lets a call through or refuses it with an *openError.
func (b *breaker) admit(now time.Time) (ticket, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch b.state {
	case stateOpen:
		return ticket{}, &openError{RetryAfter: max(b.nextTrial.Sub(now), 0)}
	case stateHalfOpen:
		if b.trialsOut >= b.trialLimit {
			return ticket{}, &openError{RetryAfter: time.Second}
		}
		b.trialsOut++
	}
	return ticket{b.generation}, nil
}

// record applies the error of a call admit let through: nil is a
// success, one IsFault judges a fault (as is a panic) counts against what
// the breaker guards, any other says nothing about it. A fault that opens
// the breaker keeps it open at least as long as WaitAtLeast asks (within
// BackoffMax).
func (b *breaker) record(t ticket, err error, now time.Time) {
	fault := err == errCallPanicked || err != nil && b.s.IsFault(err)
	var minWait time.Duration
	if fault {
		minWait = b.s.WaitAtLeast(err)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if t.generation != b.generation {
		return // started before a state change: it says nothing about now
	}
	switch b.state {
	case stateClosed:
		if !fault {
			return // a success does not erase recent faults
		}
		b.faults = append(b.pruned(now), now)
		if len(b.faults) >= b.s.Threshold {
			b.open(now, fmt.Sprintf("%d faults within %v", len(b.faults), b.s.Window), minWait)
		}
	case stateHalfOpen:
		b.trialsOut--
		switch {
		case fault:
			b.open(now, "a trial failed", minWait)
		case err == nil:
			b.successes++
			if b.successes >= b.closeAfter {
				b.transition(stateClosed, now, fmt.Sprintf("%d trials succeeded", b.successes))
				return
			}
			b.trialLimit *= 2
		}
	}
}

// pruned drops the faults that have left the window at now (one exactly a
// window old included) and returns the rest. b.mu must be held.
func (b *breaker) pruned(now time.Time) []time.Time {
	cutoff := now.Add(-b.s.Window)
	i := 0
	for i < len(b.faults) && !b.faults[i].After(cutoff) {
		i++
	}
	b.faults = b.faults[i:]
	return b.faults
}

// open moves to open, from closed with the first backoff, from half-open
// with twice the last, but for no less than minWait (within BackoffMax),
// and starts the goroutine that ends this open period. b.mu must be held.
func (b *breaker) open(now time.Time, reason string, minWait time.Duration) {
	if b.state == stateClosed {
		b.backoff = b.s.BackoffMin
	} else {
		b.backoff = min(2*b.backoff, b.s.BackoffMax)
	}
	wait := max(b.jittered(b.backoff), min(minWait, b.s.BackoffMax))
	b.nextTrial = now.Add(wait)
	b.timesOpened++
	b.transition(stateOpen, now, reason)
	if b.shut {
		return
	}
	generation := b.generation
	b.openPeriod.Go(func() {
		guard(context.Background(), "breaker open period", func() { b.endOpenPeriod(wait, generation) }, nil)
	})
}

// endOpenPeriod waits for wait (or Close), then turns the breaker half-open
// if generation is still the current one.
func (b *breaker) endOpenPeriod(wait time.Duration, generation uint64) {
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-t.C:
	case <-b.quit:
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.generation == generation {
		b.transition(stateHalfOpen, time.Now(), "backoff elapsed")
	}
}

// jittered returns d less up to 20%: never above the cap, never far below.
func (b *breaker) jittered(d time.Duration) time.Duration {
	return d - time.Duration(0.2*b.s.Jitter()*float64(d))
}

// transition changes the state, starts a new generation and reports it.
// b.mu must be held.
func (b *breaker) transition(to breakerState, now time.Time, reason string) {
	from := b.state
	b.state, b.since = to, now
	b.generation++
	b.faults = nil
	b.trialsOut, b.successes, b.trialLimit = 0, 0, 1
	attrs := []any{"from", from, "to", to, "reason", reason}
	if to == stateOpen {
		attrs = append(attrs, "next_trial_in", b.nextTrial.Sub(now).Round(time.Millisecond))
	}
	b.s.Logger.Info("breaker state changed", attrs...)
	b.s.OnChange(from, to)
}
