package main

import (
	"context"
	"math/rand/v2"
	"sync"
	"time"
)

// retryPolicy retries a call while the predicate it is given says its
// failure is one a second try may fix, the budget allows, and a wait still
// fits the deadline. It knows nothing of what it calls.
type retryPolicy struct {
	Attempts  int            // tries in all, the first included; below 2, no retry
	BaseDelay time.Duration  // before the first retry; doubles after each, jittered
	Budget    *retryBudget   // bounds retries across all requests
	Jitter    func() float64 // in [0, 1), as math/rand/v2.Float64
}

// defaultRetryPolicy tries three times, 10-20 ms then 20-40 ms apart, with
// retries at most 10% of requests (plus 10 per window for quiet times).
func defaultRetryPolicy() retryPolicy {
	return retryPolicy{Attempts: 3, BaseDelay: 20 * time.Millisecond, Budget: newRetryBudget(0.1, 10, 10*time.Second), Jitter: rand.Float64}
}

// do calls call, and again while retryable says its failure may pass, the
// budget allows, and a wait still fits the ctx deadline. It returns the
// last result.
func (p retryPolicy) do(ctx context.Context, call func() ([]byte, error), retryable func(error) bool) ([]byte, error) {
	p.Budget.deposit(time.Now())
	delay := p.BaseDelay
	for attempt := 1; ; attempt++ {
		body, err := call()
		if err == nil || attempt >= p.Attempts || !retryable(err) {
			return body, err
		}
		wait := delay/2 + time.Duration(p.Jitter()*float64(delay/2))
		if dl, ok := ctx.Deadline(); ok && time.Until(dl) <= wait {
			return body, err
		}
		if !p.Budget.withdraw(time.Now()) {
			return body, err
		}
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return body, err
		}
		delay *= 2
	}
}

// budgetSlots is how many parts the budget's sliding window has.
const budgetSlots = 10

// retryBudget bounds retries to a fraction of requests over a sliding
// window, so that during an outage retries add at most that fraction to
// the upstream's load instead of multiplying it. A floor of retries per
// window keeps retries possible when traffic is light.
type retryBudget struct {
	ratio float64       // retries allowed per request
	floor int           // retries allowed per window whatever the traffic
	slot  time.Duration // window / budgetSlots

	mu    sync.Mutex // protects slots
	slots [budgetSlots]budgetSlot
}

type budgetSlot struct {
	epoch    int64 // which slot-length interval since 1970 this counts
	requests int
	retries  int
}

func newRetryBudget(ratio float64, floor int, window time.Duration) *retryBudget {
	return &retryBudget{ratio: ratio, floor: floor, slot: window / budgetSlots}
}

// current returns the slot for now, emptied if it held an older interval.
func (b *retryBudget) current(now time.Time) *budgetSlot {
	e := now.UnixNano() / int64(b.slot)
	s := &b.slots[e%budgetSlots]
	if s.epoch != e {
		*s = budgetSlot{epoch: e}
	}
	return s
}

// deposit counts one request.
func (b *retryBudget) deposit(now time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.current(now).requests++
}

// withdraw takes one retry from the budget, if the window has one left.
func (b *retryBudget) withdraw(now time.Time) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	cur := b.current(now)
	requests, retries := 0, 0
	for _, s := range b.slots {
		if s.epoch > cur.epoch-budgetSlots {
			requests += s.requests
			retries += s.retries
		}
	}
	if float64(retries+1) > b.ratio*float64(requests)+float64(b.floor) {
		return false
	}
	cur.retries++
	return true
}
