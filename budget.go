package main

import (
	"container/list"
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"
)

// The process's memory budget for requests in flight, MEMORY_BUDGET. Two
// pools share it, so that nothing can wait for memory while holding memory
// the other side waits for:
//
//   - answers (three quarters): what a request keeps until its answer is
//     written: a write's body, a list, the events of a user's answer,
//     reserved by the request's handler before it asks for them. A request
//     may wait for this pool; nothing holding it is waited for by a reader.
//   - reads (a quarter): an upstream body while it is being read, reserved
//     as soon as the answer's headers arrive (its declared length, or the
//     call's cap when none is declared) and given back once it is read,
//     when what is kept of it is counted elsewhere (the cache, an answer).
//     A reader waits for nothing else.
//
// A reservation larger than its whole pool is cut to the pool, so it can
// always be granted once the pool is empty. Waiters are served first come,
// first served, so that a large request is not starved by small ones.

// entryOverhead is what one entry of a bounded store (the event cache, the
// key memory) costs besides its bytes: the list element, the map slot and
// the entry itself, rounded up.
const entryOverhead = 256

// errMemoryBusy is the cause of a wait for memory that ran out of time.
var errMemoryBusy = errors.New("the memory budget for requests in flight is in use")

// memoryPool is one of the budget's pools: bytes granted at most total at
// once.
type memoryPool struct {
	total   int64
	refused atomic.Uint64 // waits that ran out of time or were left

	mu    sync.Mutex // protects used and queue
	used  int64
	queue list.List // of *poolWaiter, oldest first
}

type poolWaiter struct {
	n     int64
	ready chan struct{} // closed when granted
}

func newMemoryPool(total int64) *memoryPool { return &memoryPool{total: total} }

// acquire waits, under ctx, until n bytes (at most the whole pool) are
// granted, and returns how many were, and whether it had to wait. When ctx
// ends first it returns 0 and errMemoryBusy if ctx's deadline passed, else
// ctx's cause.
func (p *memoryPool) acquire(ctx context.Context, n int64) (got int64, waited bool, err error) {
	if got, ok := p.tryAcquire(n); ok {
		return got, false, nil
	}
	n = min(n, p.total)
	p.mu.Lock()
	if p.queue.Len() == 0 && p.used+n <= p.total { // freed meanwhile
		p.used += n
		p.mu.Unlock()
		return n, false, nil
	}
	w := &poolWaiter{n: n, ready: make(chan struct{})}
	el := p.queue.PushBack(w)
	p.mu.Unlock()

	select {
	case <-w.ready:
		return n, true, nil
	case <-ctx.Done():
	}
	p.mu.Lock()
	select {
	case <-w.ready: // granted meanwhile: give it back
		p.used -= n
	default:
		p.queue.Remove(el)
	}
	p.grant() // the head of the queue may have changed
	p.mu.Unlock()
	p.refused.Add(1)
	if errors.Is(context.Cause(ctx), context.DeadlineExceeded) {
		return 0, true, errMemoryBusy
	}
	return 0, true, context.Cause(ctx)
}

// tryAcquire grants n bytes (at most the whole pool) if they are free now
// and nobody waits before it; it never waits, and a refusal is no one's
// timeout (it is not counted as refused).
func (p *memoryPool) tryAcquire(n int64) (int64, bool) {
	n = min(n, p.total)
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.queue.Len() == 0 && p.used+n <= p.total {
		p.used += n
		return n, true
	}
	return 0, false
}

// release gives back n bytes acquire granted.
func (p *memoryPool) release(n int64) {
	if n == 0 {
		return
	}
	p.mu.Lock()
	p.used -= n
	p.grant()
	p.mu.Unlock()
}

// grant serves the waiters at the head of the queue while they fit. p.mu
// must be held.
func (p *memoryPool) grant() {
	for el := p.queue.Front(); el != nil; el = p.queue.Front() {
		w := el.Value.(*poolWaiter)
		if p.used+w.n > p.total {
			return
		}
		p.used += w.n
		close(w.ready)
		p.queue.Remove(el)
	}
}

// inUse returns the bytes granted now.
func (p *memoryPool) inUse() int64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.used
}

// memoryAccount is what one request holds of a pool: reserved as it goes,
// given back all at once by close, when its answer has been written. It is
// safe for concurrent use.
type memoryAccount struct {
	pool  *memoryPool
	leave time.Duration // waits end this long before the request's deadline
	mu    sync.Mutex
	held  int64
}

// account returns a new account for one request, whose waits for memory end
// leave before the request's deadline: memory granted later would leave too
// little time to use it (leave is UPSTREAM_TIMEOUT: the time one call may
// take), and the request is better answered at once as the gateway's own
// overload than late as a timeout.
func (p *memoryPool) account(leave time.Duration) *memoryAccount {
	return &memoryAccount{pool: p, leave: leave}
}

// reserve adds n bytes to the account, waiting under ctx for them.
func (a *memoryAccount) reserve(ctx context.Context, n int64) error {
	if dl, ok := ctx.Deadline(); ok && a.leave > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, dl.Add(-a.leave))
		defer cancel()
	}
	got, _, err := a.pool.acquire(ctx, n)
	a.add(got)
	return err
}

// tryReserve adds n bytes to the account if they are free now, without
// waiting, and reports whether it did.
func (a *memoryAccount) tryReserve(n int64) bool {
	got, ok := a.pool.tryAcquire(n)
	a.add(got)
	return ok
}

func (a *memoryAccount) add(n int64) {
	a.mu.Lock()
	a.held += n
	a.mu.Unlock()
}

// keep gives back all but n of the bytes held: the request found that it
// needs only n.
func (a *memoryAccount) keep(n int64) {
	a.mu.Lock()
	back := max(0, a.held-n)
	a.held -= back
	a.mu.Unlock()
	a.pool.release(back)
}

// close gives back everything the account holds.
func (a *memoryAccount) close() { a.keep(0) }
