package main

import (
	"context"
	"sync"
)

// flightGroup coalesces calls by key: many waiters, one call. It is the one
// coalescing mechanism of eventgate.
//
// A call runs on a goroutine the group owns, so that each waiter can leave
// when its own context ends. Its context is detached from the waiters'
// cancellation but keeps the first waiter's values (the request id), and
// carries a send check (withSendCheck): an attempt under it is made only
// while a waiter remains, or the call was started to run on its own
// (Start). Once an attempt has been made, the call is never cancelled by
// waiters leaving: it finishes, so that its answer can be kept. A call not
// yet sent when its last waiter leaves is cancelled, and a newcomer starts
// a new one instead of joining it.
//
// A call that panics or calls runtime.Goexit is an error for its waiters
// (guard); it never ends the process nor leaves a waiter waiting.
type flightGroup[K comparable, V any] struct {
	// left is what a waiter whose ctx ended is told: sent reports whether
	// the call it waited for had been sent.
	left func(ctx context.Context, sent bool) error

	mu      sync.Mutex // protects flights, closed and every flight's fields
	flights map[K]*flight[V]
	closed  bool
	running sync.WaitGroup // the calls' goroutines, waited for by Close
}

// flight is one call and what its waiters need.
type flight[V any] struct {
	done    chan struct{} // closed once v and err are set
	v       V
	err     error
	waiters int
	alone   bool // started by Start: runs whether anyone waits or not
	sent    bool // an attempt has been made
	cancel  context.CancelFunc
}

func newFlightGroup[K comparable, V any](left func(context.Context, bool) error) *flightGroup[K, V] {
	return &flightGroup[K, V]{left: left, flights: map[K]*flight[V]{}}
}

// Do returns the result of fn for key: that of the call in flight for key,
// or of a new one. joined reports that a call was in flight. When ctx ends
// first, Do returns at once with left's error; the call goes on as the
// group's doc says. After Close, fn runs on the caller's goroutine.
func (g *flightGroup[K, V]) Do(ctx context.Context, key K, fn func(context.Context, K) (V, error)) (v V, err error, joined bool) {
	g.mu.Lock()
	if g.closed {
		g.mu.Unlock()
		v, err = fn(ctx, key)
		return v, err, false
	}
	f, joined := g.flights[key]
	if !joined {
		f = g.start(ctx, key, fn, false)
	}
	f.waiters++
	g.mu.Unlock()

	select {
	case <-f.done:
		return f.v, f.err, joined
	case <-ctx.Done():
	}
	g.mu.Lock()
	f.waiters--
	sent := f.sent
	if f.waiters == 0 && !sent && !f.alone {
		f.cancel()
		if g.flights[key] == f {
			delete(g.flights, key) // a newcomer must not join a cancelled call
		}
	}
	g.mu.Unlock()
	var zero V
	return zero, g.left(ctx, sent), joined
}

// Start starts a call of fn for key that runs whether anyone waits for it
// or not (a refresh), unless one is in flight or the group is closed; it
// reports whether it started one.
func (g *flightGroup[K, V]) Start(ctx context.Context, key K, fn func(context.Context, K) (V, error)) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if _, inFlight := g.flights[key]; inFlight || g.closed {
		return false
	}
	g.start(ctx, key, fn, true)
	return true
}

// start starts the call of fn for key. g.mu must be held.
func (g *flightGroup[K, V]) start(ctx context.Context, key K, fn func(context.Context, K) (V, error), alone bool) *flight[V] {
	fctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	f := &flight[V]{done: make(chan struct{}), alone: alone, cancel: cancel}
	fctx = withSendCheck(fctx, func() bool {
		g.mu.Lock()
		defer g.mu.Unlock()
		if f.waiters == 0 && !f.alone {
			return false
		}
		f.sent = true
		return true
	})
	g.flights[key] = f
	g.running.Go(func() { g.run(fctx, key, f, fn) })
	return f
}

// run makes the call and publishes its result, whatever the call does.
func (g *flightGroup[K, V]) run(ctx context.Context, key K, f *flight[V], fn func(context.Context, K) (V, error)) {
	var v V
	err := errGoexit
	defer func() {
		f.cancel()
		g.mu.Lock()
		if g.flights[key] == f {
			delete(g.flights, key) // and never a newer flight for key
		}
		f.v, f.err = v, err
		g.mu.Unlock()
		close(f.done)
	}()
	guard(ctx, "coalesced call", func() { v, err = fn(ctx, key) }, func(e error) { err = e })
}

// Close cancels the calls in flight and returns when their goroutines have
// ended. Afterwards the group starts none.
func (g *flightGroup[K, V]) Close() {
	g.mu.Lock()
	g.closed = true
	for _, f := range g.flights {
		f.cancel()
	}
	g.mu.Unlock()
	g.running.Wait()
}
