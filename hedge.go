package main

import (
	"context"
	"math"
	"sync"
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
	fixed   time.Duration // > 0: always this delay; < 0: never hedge; 0: auto
	auto    bool          // the recent p95 of the call's kind (as in production)
	floor   time.Duration // auto never hedges sooner
	initial time.Duration // auto, until minSamples calls of the kind are seen

	mu    sync.Mutex // protects kinds
	kinds map[string]*latencies
}

// minSamples is how many calls of a kind auto waits for before trusting
// their percentile.
const minSamples = 100

// newHedgePolicy returns the policy for delay: 0 is auto, the production
// one; tests fix a delay (> 0) or turn hedging off (< 0). Until auto has
// seen enough calls of a kind, it hedges after half of timeout
// (UPSTREAM_TIMEOUT): rarely, and never a call that answers in a typical
// time.
func newHedgePolicy(delay, timeout time.Duration) *hedgePolicy {
	return &hedgePolicy{fixed: delay, auto: delay == 0, floor: 10 * time.Millisecond, initial: timeout / 2,
		kinds: map[string]*latencies{}}
}

// delay returns how long a call of kind op may run before it is hedged, and
// false if it is never hedged.
func (h *hedgePolicy) delay(op string, now time.Time) (time.Duration, bool) {
	switch {
	case !h.auto && h.fixed <= 0:
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
	if !h.auto {
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

// secondCall is what the second call of runHedged came to.
type secondCall[T any] struct {
	v       T
	err     error
	skipped bool // no second call was made
}

// runHedged runs call under ctx and, if it has not returned after delay and
// start grants a second call (start returns what gives back what it took),
// runs call once more on a goroutine that running counts; the first good
// answer is returned and cancel ends the other call at once. won reports
// that the second call answered first. Both calls share ctx, and so its
// deadline. The second call and the timer run in guard: a panic in either
// is the second call's error, never the process's end.
func runHedged[T any](ctx context.Context, cancel context.CancelFunc, delay time.Duration,
	call func() (T, error), start func() (release func(), ok bool), running *sync.WaitGroup) (v T, won bool, err error) {
	second := make(chan secondCall[T], 1)
	timer := time.AfterFunc(delay, func() {
		started := false
		defer func() {
			if !started {
				second <- secondCall[T]{skipped: true}
			}
		}()
		guard(ctx, "hedge timer", func() {
			if ctx.Err() != nil {
				return
			}
			release, ok := start()
			if !ok {
				return
			}
			started = true
			running.Go(func() {
				defer release()
				var h secondCall[T]
				defer func() { second <- h }()
				guard(ctx, "hedge", func() {
					h.v, h.err = call()
					if h.err == nil {
						cancel() // the first call is beaten: end it at once
					}
				}, func(err error) { h.err = err })
			})
		}, nil)
	})
	v, err = call()
	if timer.Stop() || err == nil {
		return v, false, err // no second call was started, or the first won
	}
	h := <-second
	if h.skipped || h.err != nil {
		return v, false, err
	}
	return h.v, true, nil
}
