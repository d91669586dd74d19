package main

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"
)

// breakerState is the state of a circuit breaker.
type breakerState int

const (
	stateClosed   breakerState = iota // calls pass; faults are counted
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

// openError is what Execute returns when the breaker refuses a call.
type openError struct {
	RetryAfter time.Duration // until the next trial may be admitted
}

func (e *openError) Error() string {
	return fmt.Sprintf("circuit breaker open; retry after %v", e.RetryAfter)
}

// breakerSettings configures a breaker. Zero values of the optional fields
// mean the documented defaults.
type breakerSettings struct {
	Threshold  int           // faults that open the breaker …
	Window     time.Duration // … within this sliding window
	BackoffMin time.Duration // wait before the first trial after opening
	BackoffMax time.Duration // the wait doubles after each failed trial, up to this

	// CloseAfter is how many consecutive successful trials close the
	// breaker; 0 means 3.
	CloseAfter int
	// IsFault reports whether a call's error is a fault of what the breaker
	// guards; other errors (a refusal of a bad request, a caller that left)
	// neither open nor close it. nil means every error is a fault.
	IsFault func(error) bool
	// WaitAtLeast returns how long a fault asks the breaker to wait before
	// its next trial (an upstream's Retry-After); the wait after opening is
	// never shorter, up to BackoffMax. nil means no fault asks.
	WaitAtLeast func(error) time.Duration
	// Jitter returns a float in [0, 1); nil means math/rand/v2.Float64.
	// Each wait is the backoff less up to 20%, so that instances that
	// opened together do not probe together.
	Jitter func() float64
	// Logger receives one line per state change; nil means slog.Default().
	Logger *slog.Logger
	// OnChange, if not nil, is called on every state change, with the
	// breaker's lock held: it must be quick and must not call the breaker.
	OnChange func(from, to string)
}

// breaker is a circuit breaker. Execute is its only way in.
//
// Closed, it counts faults in a sliding window; Threshold of them open it.
// Open, every call fails at once with an *openError. Each open period has
// one goroutine that waits for the backoff (or for Close), turns the
// breaker half-open if nothing else has changed it meanwhile, and ends.
// Half-open, real calls are admitted as trials, one at first and twice as
// many after each success; CloseAfter consecutive successes close it, and
// any fault opens it again with twice the backoff. No synthetic call is
// ever made.
//
// Each state change starts a generation, and a call's outcome counts only
// in the generation it started in, so a slow call from before a change
// cannot move the new state. The lock guards only this bookkeeping, never a
// call.
type breaker struct {
	s     breakerSettings
	quit  chan struct{}  // closed by Close
	probe sync.WaitGroup // the open period's goroutine, if any

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
func newBreaker(s breakerSettings) *breaker {
	if s.CloseAfter <= 0 {
		s.CloseAfter = 3
	}
	if s.IsFault == nil {
		s.IsFault = func(err error) bool { return err != nil }
	}
	if s.Jitter == nil {
		s.Jitter = rand.Float64
	}
	if s.Logger == nil {
		s.Logger = slog.Default()
	}
	return &breaker{s: s, quit: make(chan struct{})}
}

// Execute runs call if the breaker admits it, and records how it went;
// refused, it returns an *openError that says when to come back. Whatever
// call does, its outcome is recorded: an error as IsFault judges it, and a
// panic as a fault, after which the panic goes on to the caller. So no call
// can leave a trial slot taken.
func (b *breaker) Execute(call func() error) error {
	t, err := b.admit(time.Now())
	if err != nil {
		return err
	}
	panicking := true
	defer func() {
		if panicking {
			b.record(t, outcomeFault, time.Now(), 0)
		}
	}()
	err = call()
	panicking = false
	switch {
	case err == nil:
		b.record(t, outcomeSuccess, time.Now(), 0)
	case b.s.IsFault(err):
		var wait time.Duration
		if b.s.WaitAtLeast != nil {
			wait = b.s.WaitAtLeast(err)
		}
		b.record(t, outcomeFault, time.Now(), wait)
	default:
		b.record(t, outcomeNeutral, time.Now(), 0)
	}
	return err
}

// breakerSnapshot is the breaker's state for monitoring.
type breakerSnapshot struct {
	State            string
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
		State:            b.state.String(),
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
	b.probe.Wait()
}

// ticket is a call the breaker admitted, in the generation it started in.
type ticket struct{ generation uint64 }

// callOutcome is what a call tells the breaker.
type callOutcome int

const (
	outcomeSuccess callOutcome = iota
	outcomeFault               // counts against what the breaker guards
	outcomeNeutral             // says nothing about it (IsFault was false)
)

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

// record applies the outcome of a call admit let through; a fault that
// opens the breaker keeps it open at least minWait (within BackoffMax).
func (b *breaker) record(t ticket, o callOutcome, now time.Time, minWait time.Duration) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if t.generation != b.generation {
		return // started before a state change: it says nothing about now
	}
	switch b.state {
	case stateClosed:
		if o != outcomeFault {
			return // a success does not erase recent faults
		}
		b.faults = append(b.pruned(now), now)
		if len(b.faults) >= b.s.Threshold {
			b.open(now, fmt.Sprintf("%d faults within %v", len(b.faults), b.s.Window), minWait)
		}
	case stateHalfOpen:
		b.trialsOut--
		switch o {
		case outcomeFault:
			b.open(now, "a trial failed", minWait)
		case outcomeSuccess:
			b.successes++
			if b.successes >= b.s.CloseAfter {
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
	b.probe.Go(func() {
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
	attrs := []any{"from", from.String(), "to", to.String(), "reason", reason}
	if to == stateOpen {
		attrs = append(attrs, "next_trial_in", b.nextTrial.Sub(now).Round(time.Millisecond))
	}
	b.s.Logger.Info("breaker state changed", attrs...)
	if b.s.OnChange != nil {
		b.s.OnChange(from.String(), to.String())
	}
}
