package main

import (
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"
)

// breakerState is the state of a circuit breaker.
type breakerState int

const (
	stateClosed   breakerState = iota // calls pass; upstream faults are counted
	stateOpen                         // calls fail fast until the next trial
	stateHalfOpen                     // a few real calls are let through as trials
)

func (s breakerState) String() string {
	switch s {
	case stateClosed:
		return "closed"
	case stateOpen:
		return "open"
	case stateHalfOpen:
		return "half-open"
	}
	return fmt.Sprintf("breakerState(%d)", int(s))
}

// openError is what Allow returns when the breaker refuses a call.
type openError struct {
	RetryAfter time.Duration // until the next trial may be admitted
}

func (e *openError) Error() string {
	return fmt.Sprintf("circuit breaker open; retry after %v", e.RetryAfter)
}

// breakerSettings configures a breaker. Zero values of the optional fields
// mean the documented defaults.
type breakerSettings struct {
	Threshold  int           // upstream faults that open the breaker …
	Window     time.Duration // … within this sliding window
	BackoffMin time.Duration // wait before the first trial after opening
	BackoffMax time.Duration // the wait doubles after each failed trial, up to this

	// CloseAfter is how many consecutive successful trials close the
	// breaker; 0 means 3.
	CloseAfter int
	// Jitter returns a float in [0, 1); nil means math/rand/v2.Float64.
	// Each wait is the backoff less up to 20%, so that instances that
	// opened together do not probe together.
	Jitter func() float64
	// IsFault reports whether a call's error is a fault of what the breaker
	// guards; other errors (a refusal of a bad request, a caller that left)
	// neither open nor close it. nil means every error is a fault.
	IsFault func(error) bool
	// Logger receives one line per state change; nil means slog.Default().
	Logger *slog.Logger
	// OnChange, if not nil, is called on every state change, with the
	// breaker's lock held: it must be quick and must not call the breaker.
	OnChange func(from, to breakerState)
}

// breaker is a circuit breaker for the upstream's writes.
//
// Closed, it counts upstream faults (not 4xx, not cancellations) in a
// sliding window; Threshold of them open it. Open, every call fails at once
// with an *openError. A probe goroutine, started on opening, owns recovery:
// it waits the backoff, then moves the breaker to half-open, where real
// client calls are admitted as trials, one at first and twice as many after
// each success; CloseAfter consecutive successes close it, and any fault
// opens it again with twice the backoff. No synthetic call is ever made.
//
// Each state change bumps a generation, and a call's result counts only in
// the generation it started in, so a slow call from before a change cannot
// move the new state. The lock guards only this bookkeeping, never a call.
type breaker struct {
	s breakerSettings

	mu          sync.Mutex // protects everything below
	state       breakerState
	generation  uint64
	failures    []time.Time   // closed: fault times within the window, oldest first
	backoff     time.Duration // open: the current backoff, before jitter
	nextTrial   time.Time     // open: when the probe goroutine turns half-open
	trialLimit  int           // half-open: trials admitted at once
	trialsOut   int           // half-open: trials in flight
	successes   int           // half-open: consecutive successful trials
	timesOpened int
	since       time.Time // when the current state began
	probing     bool      // a probe goroutine is running
	shut        bool      // Close was called: start no more probes

	wake chan struct{} // half-open resolved; buffered so a send never blocks
	quit chan struct{} // closed by Close
	done chan struct{} // closed when the current probe goroutine returns
}

// newBreaker returns a closed breaker. Call Close to stop its probe goroutine.
func newBreaker(s breakerSettings) *breaker {
	if s.CloseAfter <= 0 {
		s.CloseAfter = 3
	}
	if s.Jitter == nil {
		s.Jitter = rand.Float64
	}
	if s.Logger == nil {
		s.Logger = slog.Default()
	}
	if s.IsFault == nil {
		s.IsFault = func(err error) bool { return err != nil }
	}
	return &breaker{s: s, wake: make(chan struct{}, 1), quit: make(chan struct{})}
}

// ticket is a call the breaker admitted; hand it back to record.
type ticket struct {
	generation uint64
	trial      bool
}

// outcome is what a call tells the breaker.
type callOutcome int

const (
	outcomeSuccess callOutcome = iota
	outcomeFault               // counts against what the breaker guards
	outcomeNeutral             // says nothing about it (IsFault was false)
)

// Execute runs call if the breaker admits it, and records how it went;
// refused, it returns an *openError that says when to come back. Whatever
// call does, its outcome is recorded: an error as IsFault judges it, and a
// panic as a fault, after which the panic goes on to the caller. So no call
// can leave a trial slot taken.
func (b *breaker) Execute(call func() error) error {
	t, err := b.allow()
	if err != nil {
		return err
	}
	panicking := true
	defer func() {
		if panicking {
			b.record(t, outcomeFault)
		}
	}()
	err = call()
	panicking = false
	switch {
	case err == nil:
		b.record(t, outcomeSuccess)
	case b.s.IsFault(err):
		b.record(t, outcomeFault)
	default:
		b.record(t, outcomeNeutral)
	}
	return err
}

// allow admits a call or refuses it with an *openError that says when to
// come back. Every admitted call must be reported with record.
func (b *breaker) allow() (ticket, error) {
	now := time.Now()
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
		return ticket{generation: b.generation, trial: true}, nil
	}
	return ticket{generation: b.generation}, nil
}

// record records the outcome of a call allow admitted.
func (b *breaker) record(t ticket, o callOutcome) {
	now := time.Now()
	b.mu.Lock()
	defer b.mu.Unlock()
	if t.generation != b.generation {
		return // started before a state change: it says nothing about now
	}
	fault := o == outcomeFault
	switch b.state {
	case stateClosed:
		if !fault {
			return // a success does not erase recent failures
		}
		b.failures = append(b.pruned(now), now)
		if len(b.failures) >= b.s.Threshold {
			b.open(now, fmt.Sprintf("%d upstream failures within %v", len(b.failures), b.s.Window))
		}
	case stateHalfOpen:
		b.trialsOut--
		switch {
		case fault:
			b.open(now, "trial failed")
		case o == outcomeSuccess:
			b.successes++
			if b.successes >= b.s.CloseAfter {
				b.transition(stateClosed, fmt.Sprintf("%d trials succeeded", b.successes))
				b.failures = nil
				b.wakeProbe()
				return
			}
			b.trialLimit *= 2
		}
	}
}

// pruned returns the failures still inside the window at now.
func (b *breaker) pruned(now time.Time) []time.Time {
	cutoff := now.Add(-b.s.Window)
	i := 0
	for i < len(b.failures) && !b.failures[i].After(cutoff) {
		i++
	}
	b.failures = b.failures[i:]
	return b.failures
}

// open moves to open, from closed with the first backoff, from half-open
// with twice the last. b.mu must be held.
func (b *breaker) open(now time.Time, reason string) {
	if b.state == stateClosed {
		b.backoff = b.s.BackoffMin
	} else {
		b.backoff = min(2*b.backoff, b.s.BackoffMax)
	}
	b.nextTrial = now.Add(b.jittered(b.backoff))
	b.failures = nil
	b.timesOpened++
	b.transition(stateOpen, reason)
	if b.probing {
		b.wakeProbe() // it waits for half-open to end: it has
		return
	}
	if !b.shut {
		b.probing = true
		b.done = make(chan struct{})
		go b.probe(b.done)
	}
}

// jittered returns d less up to 20%: never above the cap, never far below.
func (b *breaker) jittered(d time.Duration) time.Duration {
	return d - time.Duration(0.2*b.s.Jitter()*float64(d))
}

// transition changes the state, starts a new generation and reports it.
// b.mu must be held.
func (b *breaker) transition(to breakerState, reason string) {
	from := b.state
	b.state = to
	b.since = time.Now()
	b.generation++
	b.trialsOut, b.successes, b.trialLimit = 0, 0, 1
	attrs := []any{"from", from.String(), "to", to.String(), "reason", reason}
	if to == stateOpen {
		attrs = append(attrs, "next_trial_in", b.nextTrial.Sub(time.Now()).Round(time.Millisecond))
	}
	b.s.Logger.Info("breaker state changed", attrs...)
	if b.s.OnChange != nil {
		b.s.OnChange(from, to)
	}
}

func (b *breaker) wakeProbe() {
	select {
	case b.wake <- struct{}{}:
	default: // a wake-up is pending already
	}
}

// probe owns recovery: it waits until the next trial is due, turns the
// breaker half-open, and waits for the trials to close it (then it returns)
// or open it again (then it waits again). It returns at once on Close.
func (b *breaker) probe(done chan struct{}) {
	defer close(done)
	for {
		b.mu.Lock()
		wait := time.Until(b.nextTrial)
		b.mu.Unlock()
		select {
		case <-b.wake: // stale: sent for a half-open that is over
		default:
		}

		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-b.quit:
			t.Stop()
			return
		}

		b.mu.Lock()
		b.transition(stateHalfOpen, "backoff elapsed")
		b.mu.Unlock()

		if !b.awaitTrials() {
			return
		}
	}
}

// awaitTrials waits until half-open ends. It reports true if the breaker
// opened again (the probe goes on) and false if it closed or was shut down
// (the probe ends).
func (b *breaker) awaitTrials() bool {
	for {
		select {
		case <-b.wake:
		case <-b.quit:
			return false
		}
		b.mu.Lock()
		state := b.state
		if state == stateClosed {
			b.probing = false
		}
		b.mu.Unlock()
		if state != stateHalfOpen {
			return state == stateOpen
		}
	}
}

// Close stops the probe goroutine, if any, and waits for it to return. The
// breaker keeps answering Allow afterwards, but never recovers.
func (b *breaker) Close() {
	b.mu.Lock()
	if b.shut {
		b.mu.Unlock()
		return
	}
	b.shut = true
	done := b.done
	b.mu.Unlock()
	close(b.quit)
	if done != nil {
		<-done
	}
}

// breakerSnapshot is the breaker as GET /health shows it.
type breakerSnapshot struct {
	State            string     `json:"state"`
	Since            *time.Time `json:"since,omitempty"`
	FailuresInWindow int        `json:"failuresInWindow"`
	NextTrialAt      *time.Time `json:"nextTrialAt,omitempty"`
	RetryAfterSecs   int        `json:"retryAfterSeconds,omitempty"`
	TimesOpened      int        `json:"timesOpened"`
}

// Snapshot returns the breaker's state for monitoring.
func (b *breaker) Snapshot() breakerSnapshot {
	now := time.Now()
	b.mu.Lock()
	defer b.mu.Unlock()
	s := breakerSnapshot{
		State:            b.state.String(),
		FailuresInWindow: len(b.pruned(now)),
		TimesOpened:      b.timesOpened,
	}
	if !b.since.IsZero() {
		since := b.since.UTC()
		s.Since = &since
	}
	if b.state == stateOpen {
		next := b.nextTrial.UTC()
		s.NextTrialAt = &next
		s.RetryAfterSecs = retrySeconds(next.Sub(now))
	}
	return s
}
