package main

import (
	"context"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"
)

// gatedList is a list fetch whose calls each return the next version
// ("[1]", "[2]", …) once the test lets them (release), counting calls and
// the most in flight at once.
type gatedList struct {
	release             chan struct{}
	calls, now, highest atomic.Int32
	fail                error
}

func newGatedList() *gatedList { return &gatedList{release: make(chan struct{})} }

func (g *gatedList) fetch(ctx context.Context) ([]byte, error) {
	n := g.calls.Add(1)
	if in := g.now.Add(1); in > g.highest.Load() {
		g.highest.Store(in)
	}
	defer g.now.Add(-1)
	select {
	case <-g.release:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	if g.fail != nil {
		return nil, g.fail
	}
	return fmt.Appendf(make([]byte, 0, 1<<20), "[%d]", n), nil
}

// readAsync starts a Read of l and returns where its answer arrives; done is
// called once the answer is in.
func readAsync(ctx context.Context, l *listReader) <-chan string {
	out := make(chan string, 1)
	go func() {
		answer, done, err := l.Read(ctx)
		defer done()
		if err != nil {
			out <- "error: " + err.Error()
			return
		}
		out <- string(answer.list)
	}()
	return out
}

// TestListReadsNeverJoinACallAlreadySent: reads that arrive while a call
// is in flight share the next call, sent once that one has answered; a
// read that arrives once the next call is sent waits for the one after. So
// no read is answered by a call sent before it arrived, and one call is in
// flight at a time.
func TestListReadsNeverJoinACallAlreadySent(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := newGatedList()
		l := newListReader("getEvents", g.fetch, newMemoryPool(64<<20))
		defer l.Close()
		first := readAsync(t.Context(), l)
		synctest.Wait() // the first call is sent, and blocked
		together := []<-chan string{readAsync(t.Context(), l), readAsync(t.Context(), l), readAsync(t.Context(), l)}
		synctest.Wait()
		if n := g.calls.Load(); n != 1 {
			t.Fatalf("%d calls while the first is in flight; want 1 (the next waits for it)", n)
		}
		g.release <- struct{}{}
		if got := <-first; got != "[1]" {
			t.Errorf("the first read got %q; want [1]", got)
		}
		synctest.Wait() // the second call is sent, and blocked
		last := readAsync(t.Context(), l)
		synctest.Wait()
		g.release <- struct{}{}
		for _, c := range together {
			if got := <-c; got != "[2]" {
				t.Errorf("a read that arrived while the first call was in flight got %q; want [2], from the call sent after it", got)
			}
		}
		g.release <- struct{}{}
		if got := <-last; got != "[3]" {
			t.Errorf("a read that arrived after the second call was sent got %q; want [3]", got)
		}
		if n, most := g.calls.Load(), g.highest.Load(); n != 3 || most != 1 {
			t.Errorf("%d calls, %d at once at most; want 3 calls, one at a time", n, most)
		}
	})
}

// TestListReadsShareOneFailure: a shared call that fails fails each of its
// readers with its error; the next read makes a new call.
func TestListReadsShareOneFailure(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := newGatedList()
		g.fail = &upstreamError{Op: "getEvents", Kind: failStatus, Status: 500}
		l := newListReader("getEvents", g.fetch, newMemoryPool(64<<20))
		defer l.Close()
		g.fail = nil
		blocker := readAsync(t.Context(), l) // in flight, so the next three arrive together
		synctest.Wait()
		g.fail = &upstreamError{Op: "getEvents", Kind: failStatus, Status: 500}
		reads := []<-chan string{readAsync(t.Context(), l), readAsync(t.Context(), l), readAsync(t.Context(), l)}
		synctest.Wait()
		g.release <- struct{}{}
		<-blocker
		synctest.Wait()
		g.release <- struct{}{}
		for _, c := range reads {
			if got := <-c; got != "error: "+g.fail.Error() {
				t.Errorf("a reader of a failed call got %q; want its error", got)
			}
		}
		g.fail = nil
		next := readAsync(t.Context(), l)
		synctest.Wait()
		g.release <- struct{}{}
		if got := <-next; got != "[3]" {
			t.Errorf("the read after a failure got %q; want [3], from a call of its own", got)
		}
	})
}

// TestAListReaderLeavingLeavesTheOthers: a reader whose request ends stops
// waiting at once, and the others still get the call's answer; a call not
// yet sent whose every reader leaves is never sent.
func TestAListReaderLeavingLeavesTheOthers(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := newGatedList()
		l := newListReader("getEvents", g.fetch, newMemoryPool(64<<20))
		defer l.Close()
		blocker := readAsync(t.Context(), l) // in flight, so the next two arrive together
		synctest.Wait()
		leaving, leave := context.WithCancel(t.Context())
		gone, stays := readAsync(leaving, l), readAsync(t.Context(), l)
		synctest.Wait()
		g.release <- struct{}{}
		<-blocker
		synctest.Wait() // the call of the two is sent
		waiting, leaveToo := context.WithCancel(t.Context())
		unsent := readAsync(waiting, l) // waits for the next call
		synctest.Wait()
		leave()
		leaveToo()
		if got := <-gone; got == "[2]" {
			t.Errorf("a reader that left got the answer %q; want an error at once", got)
		}
		if got := <-unsent; got == "[3]" {
			t.Errorf("the only reader of an unsent call left, yet got %q", got)
		}
		g.release <- struct{}{}
		if got := <-stays; got != "[2]" {
			t.Errorf("the reader that stayed got %q; want [2]", got)
		}
		synctest.Wait()
		if n := g.calls.Load(); n != 2 {
			t.Errorf("%d calls; want 2: the call whose readers all left before it was sent is never sent", n)
		}
	})
}

// TestAListAnswerIsCountedOnce: readers sharing one answer count its bytes
// once in the answers pool, until the last of them is done with it.
func TestAListAnswerIsCountedOnce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := newGatedList()
		pool := newMemoryPool(64 << 20)
		l := newListReader("getEvents", g.fetch, pool)
		defer l.Close()
		type read struct {
			done func()
			err  error
		}
		blocker := readAsync(t.Context(), l) // in flight, so the next three arrive together
		synctest.Wait()
		reads := make(chan read, 3)
		for range 3 {
			go func() {
				_, done, err := l.Read(t.Context())
				reads <- read{done, err}
			}()
		}
		synctest.Wait()
		g.release <- struct{}{}
		<-blocker
		synctest.Wait()
		if got := pool.inUse(); got != maxListBody {
			t.Errorf("before the call answered, %d bytes reserved; want the largest list, %d, once", got, maxListBody)
		}
		g.release <- struct{}{}
		var dones []func()
		for range 3 {
			r := <-reads
			if r.err != nil {
				t.Fatal(r.err)
			}
			dones = append(dones, r.done)
		}
		if got := pool.inUse(); got != 1<<20 {
			t.Errorf("three readers of one 1 MiB answer hold %d bytes; want 1 MiB, counted once", got)
		}
		dones[0]()
		dones[1]()
		if got := pool.inUse(); got != 1<<20 {
			t.Errorf("with one reader still writing, %d bytes held; want 1 MiB", got)
		}
		dones[2]()
		if got := pool.inUse(); got != 0 {
			t.Errorf("after the last reader, %d bytes held; want 0", got)
		}
	})
}

// TestConcurrentListReadsCollapse: 200 concurrent GET /getEvents through
// the gateway, against an upstream answering in 50 ms, make at most 20
// upstream calls (in fact two: the first, and one for every read that
// arrived after it was sent), and every read is answered 200.
func TestConcurrentListReadsCollapse(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var calls atomic.Int32
		g := newTestGateway(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			calls.Add(1)
			time.Sleep(50 * time.Millisecond)
			w.Write([]byte(`[{"id":"e1"}]`))
		}), nil)
		var wg sync.WaitGroup
		var failed atomic.Int32
		for range 200 {
			wg.Go(func() {
				if g.get("/getEvents").Code != 200 {
					failed.Add(1)
				}
			})
		}
		wg.Wait()
		if n := calls.Load(); n > 20 || failed.Load() > 0 {
			t.Errorf("200 concurrent reads: %d upstream calls, %d failed; want at most 20 calls, none failed", n, failed.Load())
		}
	})
}

// TestASlowListReaderHoldsNoMemoryForever: a reader that took its
// generation but joined only after that generation's call had finished
// makes a call of its own; once it is done, no memory of either answer is
// left counted.
func TestASlowListReaderHoldsNoMemoryForever(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := newGatedList()
		pool := newMemoryPool(64 << 20)
		l := newListReader("getEvents", g.fetch, pool)
		defer l.Close()
		l.mu.Lock() // what Read does before it joins: the slow reader arrives …
		slow := l.joining
		l.readers[slow]++
		l.mu.Unlock()
		quick := readAsync(t.Context(), l) // … another reader's call of the same generation runs
		synctest.Wait()
		g.release <- struct{}{}
		<-quick
		done := make(chan struct{})
		go func() { // … and only now does the slow one join
			defer close(done)
			if _, err, _ := l.calls.Do(t.Context(), slow, l.call); err != nil {
				t.Error(err)
			}
		}()
		synctest.Wait()
		g.release <- struct{}{}
		<-done
		l.readerDone(slow)
		if got := pool.inUse(); got != 0 {
			t.Errorf("after every reader is done, %d bytes are still counted; want 0", got)
		}
	})
}
