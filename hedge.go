package main

import (
	"context"
	"math"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// Hedged reads, as in "The Tail at Scale" (Dean and Barroso, 2013): a fan-out
// is as slow as its slowest lookup, so an idempotent read that has not
// answered after the hedge delay is sent once more, and the first good
// answer wins while the other call is cancelled. With the delay at the 95th
// percentile of recent calls of the same kind, about one call in twenty is
// hedged; hedges draw on the retry budget, so that in an outage or a general
// slowdown they add at most a tenth to the upstream's load, and then stop.

// hedgePolicy says when to hedge each kind of call (getEventById, …).
type hedgePolicy struct {
	fixed   time.Duration // HEDGE_DELAY as a duration; with auto false, 0 is off
	auto    bool          // HEDGE_DELAY=auto: the recent p95 of the call's kind
	floor   time.Duration // auto never hedges sooner
	initial time.Duration // auto, until minSamples calls of the kind are seen

	mu    sync.Mutex // protects kinds
	kinds map[string]*latencies
}

// minSamples is how many calls of a kind auto waits for before trusting
// their percentile.
const minSamples = 100

// newHedgePolicy returns the policy for HEDGE_DELAY: auto, or a fixed
// delay, 0 for none. Until auto has seen enough calls of a kind, it hedges
// after half of timeout (UPSTREAM_TIMEOUT): rarely, and never a call that
// answers in a typical time.
func newHedgePolicy(fixed time.Duration, auto bool, timeout time.Duration) *hedgePolicy {
	return &hedgePolicy{fixed: fixed, auto: auto, floor: 10 * time.Millisecond, initial: timeout / 2,
		kinds: map[string]*latencies{}}
}

// delay returns how long a call of kind op may run before it is hedged, and
// false if it is never hedged.
func (h *hedgePolicy) delay(op string, now time.Time) (time.Duration, bool) {
	switch {
	case h == nil || !h.auto && h.fixed <= 0:
		return 0, false
	case !h.auto:
		return h.fixed, true
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	l := h.kinds[op]
	if l == nil {
		return h.initial, true
	}
	p95, n := l.percentile(0.95, now)
	if n < minSamples {
		return h.initial, true
	}
	return max(h.floor, p95), true
}

// observe records that a call of kind op answered after d.
func (h *hedgePolicy) observe(op string, d time.Duration, now time.Time) {
	if h == nil || !h.auto {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	l := h.kinds[op]
	if l == nil {
		l = &latencies{}
		h.kinds[op] = l
	}
	l.add(d, now)
}

// delays returns the current delay of every kind seen, for /metrics.
func (h *hedgePolicy) delays(now time.Time) map[string]time.Duration {
	out := map[string]time.Duration{}
	if h == nil {
		return out
	}
	h.mu.Lock()
	ops := make([]string, 0, len(h.kinds))
	for op := range h.kinds {
		ops = append(ops, op)
	}
	h.mu.Unlock()
	for _, op := range ops {
		if d, ok := h.delay(op, now); ok {
			out[op] = d
		}
	}
	return out
}

// Latency buckets: bucketBase × bucketGrowth^i, from 1 ms past a minute.
const (
	bucketBase   = time.Millisecond
	bucketGrowth = 1.2
	bucketCount  = 62
	windowSpan   = 10 * time.Second // each of the two windows
)

// latencies counts recent call durations in log-spaced buckets over two
// windows, the current and the one before, so that the percentile follows
// the last 10 to 20 seconds.
type latencies struct {
	epoch       int64 // which windowSpan since 1970 cur counts
	cur, prev   [bucketCount]uint32
	curN, prevN int
}

func bucketOf(d time.Duration) int {
	if d <= bucketBase {
		return 0
	}
	i := int(math.Ceil(math.Log(float64(d)/float64(bucketBase)) / math.Log(bucketGrowth)))
	return min(i, bucketCount-1)
}

// bucketBound is the upper bound of bucket i.
func bucketBound(i int) time.Duration {
	return time.Duration(float64(bucketBase) * math.Pow(bucketGrowth, float64(i)))
}

// roll moves the windows forward to now.
func (l *latencies) roll(now time.Time) {
	e := now.UnixNano() / int64(windowSpan)
	switch {
	case e == l.epoch:
		return
	case e == l.epoch+1:
		l.prev, l.prevN = l.cur, l.curN
	default:
		l.prev, l.prevN = [bucketCount]uint32{}, 0
	}
	l.cur, l.curN, l.epoch = [bucketCount]uint32{}, 0, e
}

func (l *latencies) add(d time.Duration, now time.Time) {
	l.roll(now)
	l.cur[bucketOf(d)]++
	l.curN++
}

// percentile returns the upper bound of the bucket holding quantile q of
// the recent calls (rounding up: a hedge is never sooner than the
// percentile), and how many calls that is of.
func (l *latencies) percentile(q float64, now time.Time) (time.Duration, int) {
	l.roll(now)
	n := l.curN + l.prevN
	target := int(math.Ceil(q * float64(n)))
	seen := 0
	for i := range bucketCount {
		seen += int(l.cur[i] + l.prev[i])
		if seen >= target && seen > 0 {
			return bucketBound(i), n
		}
	}
	return bucketBound(bucketCount - 1), n
}

// hedgeOutcome is what the hedge of a call came to.
type hedgeOutcome struct {
	body    []byte
	err     error
	skipped bool // no hedge was sent: no slot, no budget, or nobody waiting
}

// hedged GETs path (a read of kind op, at most limit bytes), and, if it has
// not answered after the hedge delay of op, no hedge of this read was sent
// yet (hedgeSent), a slot is free and the retry budget allows, GETs it once
// more; the first good answer is returned, and the other call is cancelled
// at once. Both share the first call's UPSTREAM_TIMEOUT, which starts when
// it is sent. The first call runs on the caller's goroutine; a hedge runs on
// one that u owns, so that Close waits for it.
func (u *upstream) hedged(ctx context.Context, op, path string, limit int64, hedgeSent *atomic.Bool) ([]byte, error) {
	delay, ok := u.hedge.delay(op, time.Now())
	if !ok || hedgeSent.Load() {
		return u.call(ctx, op, http.MethodGet, path, nil, limit)
	}
	release, err := u.acquire(ctx, op)
	if err != nil {
		return nil, err
	}
	defer release()
	ctx, cancel := context.WithTimeoutCause(ctx, u.timeout, errCallTimeout)
	defer cancel() // whichever call is still running ends now
	send := func() ([]byte, error) { return u.send(ctx, op, http.MethodGet, path, nil, limit) }
	hedge := make(chan hedgeOutcome, 1)
	timer := time.AfterFunc(delay, func() {
		started := false
		guard(ctx, "hedge timer", func() {
			release := u.tryAcquire()
			if release == nil || ctx.Err() != nil || hedgeSent.Swap(true) || !u.retry.Budget.withdraw(time.Now()) {
				if release != nil {
					release()
				}
				return
			}
			u.metrics.hedgeSent(op)
			started = true
			u.running.Go(func() {
				defer release()
				var h hedgeOutcome
				guard(ctx, "hedge", func() {
					h.body, h.err = send()
					if h.err == nil {
						cancel() // the first call is beaten: end it at once
					}
				}, func(err error) { h.err = err })
				hedge <- h
			})
		}, nil)
		if !started {
			hedge <- hedgeOutcome{skipped: true}
		}
	})
	body, err := send()
	if timer.Stop() || err == nil {
		return body, err // no hedge was started, or the first call won
	}
	h := <-hedge
	if h.skipped || h.err != nil {
		return body, err
	}
	u.metrics.hedgeWon(op)
	return h.body, nil
}
