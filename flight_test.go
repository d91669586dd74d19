package main

import (
	"context"
	"errors"
	"runtime"
	"sync/atomic"
	"testing"
	"testing/synctest"
)

var errLeft = errors.New("left")

// newTestFlights returns a group whose leaving waiters are told errLeft,
// or errLeftSent once the call was sent.
func newTestFlights() *flightGroup[string, string] {
	return newFlightGroup[string, string](func(_ context.Context, sent bool) error {
		if sent {
			return errLeftSent
		}
		return errLeft
	})
}

var errLeftSent = errors.New("left after it was sent")

// TestFlightSharesOneCall: three waiters, the last arriving while the call
// runs, share one call and its result; only the first did not join.
func TestFlightSharesOneCall(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := newTestFlights()
		defer g.Close()
		var calls atomic.Int32
		release := make(chan struct{})
		fn := func(ctx context.Context, key string) (string, error) {
			calls.Add(1)
			<-release
			return "v-" + key, nil
		}
		type result struct {
			v      string
			err    error
			joined bool
		}
		results := make(chan result, 3)
		for range 3 {
			go func() {
				v, err, joined := g.Do(t.Context(), "k", fn)
				results <- result{v, err, joined}
			}()
			synctest.Wait()
		}
		close(release)
		joined := 0
		for range 3 {
			r := <-results
			if r.v != "v-k" || r.err != nil {
				t.Errorf("a waiter got %q, %v; want v-k", r.v, r.err)
			}
			if r.joined {
				joined++
			}
		}
		if calls.Load() != 1 || joined != 2 {
			t.Errorf("%d calls, %d joined; want 1 call, 2 joined", calls.Load(), joined)
		}
	})
}

// TestFlightWaiterLeavingAfterTheSend: once the call has been sent, a
// waiter that leaves gets an error (never a zero value and nil), the call
// is not cancelled, and the waiter that stays gets its result.
func TestFlightWaiterLeavingAfterTheSend(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := newTestFlights()
		defer g.Close()
		release := make(chan struct{})
		var cancelled atomic.Bool
		fn := func(ctx context.Context, _ string) (string, error) {
			if !maySend(ctx) {
				return "", errors.New("not sent")
			}
			select {
			case <-release:
				return "v", nil
			case <-ctx.Done():
				cancelled.Store(true)
				return "", ctx.Err()
			}
		}
		stay := make(chan string)
		go func() {
			v, _, _ := g.Do(t.Context(), "k", fn)
			stay <- v
		}()
		ctx, leave := context.WithCancel(t.Context())
		left := make(chan error)
		go func() {
			v, err, _ := g.Do(ctx, "k", fn)
			if v != "" {
				err = errors.New("a value for a waiter that left")
			}
			left <- err
		}()
		synctest.Wait()
		leave()
		if err := <-left; !errors.Is(err, errLeftSent) {
			t.Errorf("the waiter that left got %v; want errLeftSent", err)
		}
		close(release)
		if v := <-stay; v != "v" || cancelled.Load() {
			t.Errorf("the waiter that stayed got %q, call cancelled %v; want v, not cancelled", v, cancelled.Load())
		}
	})
}

// TestFlightNotYetSentEndsWithItsLastWaiter: a call still waiting to send
// when its last waiter leaves is cancelled and refused its send; a
// newcomer starts a call of its own instead of joining it, and the old
// call, ending late, does not remove the newcomer's from the group.
func TestFlightNotYetSentEndsWithItsLastWaiter(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := newTestFlights()
		defer g.Close()
		gate := make(chan struct{})
		var sends, refused atomic.Int32
		fn := func(ctx context.Context, _ string) (string, error) {
			<-gate // waiting for a slot, say
			if !maySend(ctx) {
				refused.Add(1)
				return "", errors.New("not sent")
			}
			sends.Add(1)
			<-ctx.Done()
			return "", ctx.Err()
		}
		ctx, leave := context.WithCancel(t.Context())
		first := make(chan error)
		go func() {
			_, err, _ := g.Do(ctx, "k", fn)
			first <- err
		}()
		synctest.Wait()
		leave()
		if err := <-first; !errors.Is(err, errLeft) {
			t.Errorf("the last waiter, leaving before the send, got %v; want errLeft", err)
		}
		ctx2, leave2 := context.WithCancel(t.Context())
		defer leave2()
		second := make(chan bool)
		go func() {
			_, _, joined := g.Do(ctx2, "k", fn)
			second <- joined
		}()
		synctest.Wait()
		gate <- struct{}{} // the first call goes on: refused
		synctest.Wait()
		third := make(chan bool, 1)
		go func() {
			_, _, joined := g.Do(ctx2, "k", fn)
			third <- joined
		}()
		synctest.Wait()
		if refused.Load() != 1 || sends.Load() != 0 {
			t.Errorf("%d sends refused, %d made; want the abandoned call refused, nothing sent", refused.Load(), sends.Load())
		}
		leave2()
		if joined := <-second; joined {
			t.Error("a newcomer joined an abandoned call")
		}
		if joined := <-third; !joined {
			t.Error("a later waiter did not join the newcomer's call: the abandoned one removed it")
		}
		close(gate)
	})
}

// TestFlightThatFailsBadly: a call that panics, or calls runtime.Goexit,
// is an error for every waiter; none is left waiting.
func TestFlightThatFailsBadly(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := newTestFlights()
		defer g.Close()
		for _, fn := range []func(context.Context, string) (string, error){
			func(context.Context, string) (string, error) { panic("on purpose") },
			func(context.Context, string) (string, error) { runtime.Goexit(); return "", nil },
		} {
			errs := make(chan error, 2)
			for range 2 {
				go func() {
					_, err, _ := g.Do(t.Context(), "k", fn)
					errs <- err
				}()
			}
			for range 2 {
				if err := <-errs; err == nil {
					t.Error("a waiter of a call that failed badly got no error")
				}
			}
		}
	})
}
