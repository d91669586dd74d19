package main

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"
)

// TestMemoryPoolServesInOrder: a pool of 100 bytes grants what fits at
// once; a waiter that does not fit waits, and so does every waiter behind
// it, however small, until the bytes come back; then they are served in the
// order they came.
func TestMemoryPoolServesInOrder(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := newMemoryPool(100)
		if got, waited, err := p.acquire(t.Context(), 70); got != 70 || waited || err != nil {
			t.Fatalf("acquire 70 of 100 = %d, %v", got, err)
		}
		var order []int64
		done := make(chan struct{})
		for _, n := range []int64{50, 10} {
			go func() {
				if _, waited, _ := p.acquire(t.Context(), n); !waited {
					t.Errorf("acquire(%d) behind a full pool says it did not wait", n)
				}
				order = append(order, n)
				done <- struct{}{}
			}()
			synctest.Wait()
		}
		if len(order) != 0 {
			t.Fatalf("granted %v with 30 bytes free and 50 waiting first; want nothing: first come, first served", order)
		}
		p.release(20) // 50 free: the first waiter fits, and then the second does not
		<-done
		synctest.Wait()
		if len(order) != 1 || order[0] != 50 || p.inUse() != 100 {
			t.Errorf("after 20 came back: granted %v, %d in use; want only 50, 100 in use", order, p.inUse())
		}
		p.release(50)
		<-done
		if len(order) != 2 || order[1] != 10 || p.inUse() != 60 {
			t.Errorf("after 50 more came back: granted %v, %d in use; want 50 then 10, 60 in use", order, p.inUse())
		}
	})
}

// TestMemoryPoolRefusesWhenTimeRunsOut: a wait for memory that outlasts its
// deadline is errMemoryBusy, one whose caller left is the caller's cause;
// neither takes anything, and a refused waiter no longer blocks those
// behind it.
func TestMemoryPoolRefusesWhenTimeRunsOut(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := newMemoryPool(100)
		p.acquire(t.Context(), 100)
		ctx, cancel := context.WithTimeout(t.Context(), time.Second)
		defer cancel()
		small := make(chan error)
		go func() {
			_, _, err := p.acquire(ctx, 80) // at the head, until its deadline
			small <- err
		}()
		synctest.Wait()
		behind := make(chan int64)
		go func() {
			got, _, _ := p.acquire(t.Context(), 0)
			behind <- got
		}()
		synctest.Wait()
		if err := <-small; !errors.Is(err, errMemoryBusy) {
			t.Errorf("a wait past its deadline = %v; want errMemoryBusy", err)
		}
		<-behind // no longer behind a refused waiter
		left, leave := context.WithCancel(t.Context())
		go leave()
		if got, _, err := p.acquire(left, 10); got != 0 || !errors.Is(err, context.Canceled) {
			t.Errorf("a wait whose caller left = %d, %v; want 0, context.Canceled", got, err)
		}
		if p.inUse() != 100 || p.refused.Load() != 2 {
			t.Errorf("in use %d, refused %d; want 100 (nothing taken by the refused) and 2", p.inUse(), p.refused.Load())
		}
	})
}

// TestMemoryAccountGivesBackWhatItHolds: a request's account reserves as it
// goes, keeps only what it needs, and gives everything back at close; a
// reservation larger than the pool takes the whole pool, not forever.
func TestMemoryAccountGivesBackWhatItHolds(t *testing.T) {
	p := newMemoryPool(100)
	a := p.account(0)
	a.reserve(t.Context(), 60)
	a.reserve(t.Context(), 30)
	a.keep(40)
	if p.inUse() != 40 {
		t.Errorf("after keep(40): %d in use; want 40", p.inUse())
	}
	a.close()
	if p.inUse() != 0 {
		t.Errorf("after close: %d in use; want 0", p.inUse())
	}
	huge := p.account(0)
	if err := huge.reserve(t.Context(), 1000); err != nil || p.inUse() != 100 {
		t.Errorf("reserve 1000 of 100 = %v, %d in use; want the whole pool", err, p.inUse())
	}
	huge.close()
}

// stallingUpstream answers a user listing 100 events, and each event with
// a declared length of 200 KiB of which it sends all but the last byte,
// then stalls until the call is cancelled. It counts the bodies being read.
type stallingUpstream struct {
	reading, peak atomic.Int32
}

func (s *stallingUpstream) RoundTrip(req *http.Request) (*http.Response, error) {
	if strings.HasPrefix(req.URL.Path, "/getUserById/") {
		ids := make([]string, 100)
		for i := range ids {
			ids[i] = fmt.Sprint("e", i)
		}
		body, _ := json.Marshal(map[string]any{"id": "u", "events": ids})
		return &http.Response{StatusCode: 200, ContentLength: int64(len(body)), Body: io.NopCloser(bytes.NewReader(body)), Header: http.Header{}}, nil
	}
	const size = 200 << 10
	return &http.Response{StatusCode: 200, ContentLength: size, Header: http.Header{},
		Body: &stallingBody{ctx: req.Context(), left: size - 1, up: s}}, nil
}

type stallingBody struct {
	ctx     context.Context
	left    int
	started bool
	up      *stallingUpstream
}

func (b *stallingBody) Read(p []byte) (int, error) {
	if !b.started {
		b.started = true
		b.up.peak.Store(max(b.up.peak.Load(), b.up.reading.Add(1)))
	}
	if b.left == 0 {
		<-b.ctx.Done()
		return 0, b.ctx.Err()
	}
	n := min(len(p), b.left)
	clear(p[:n])
	b.left -= n
	return n, nil
}

func (b *stallingBody) Close() error {
	if b.started {
		b.up.reading.Add(-1)
	}
	return nil
}

// TestBodiesBeingReadAreCounted: 100 event bodies that each declare 200 KiB
// and stall one byte short. Each is reserved in the reads pool before it is
// read, so with MEMORY_BUDGET=4MiB (1 MiB for reads) at most five are read
// at once, whatever the upstream does; the others wait, and when time runs
// out the request is a 5xx. Afterwards nothing is held.
func TestBodiesBeingReadAreCounted(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		up := &stallingUpstream{}
		g := newGatewayAt(t, "http://upstream.test", up, func(c *config) { c.MemoryBudget = 4 << 20 })
		done := make(chan int)
		go func() { done <- g.get("/getEventsByUserId/u").Code }()
		synctest.Wait()
		if n := up.reading.Load(); n == 0 || n > 5 {
			t.Errorf("%d bodies being read at once; want 1 to 5: 1 MiB of reads pool / 200 KiB", n)
		}
		if code := <-done; code != 503 && code != 504 {
			t.Errorf("= %d; want 503 (no memory in time) or 504 (the stalled bodies)", code)
		}
		synctest.Wait()
		if n := up.peak.Load(); n > 5 {
			t.Errorf("at most %d bodies were read at once; want at most 5", n)
		}
		if m := g.get("/metrics").Body.String(); !strings.Contains(m, `eventgate_memory_in_use_bytes{pool="reads"} 0`) ||
			!strings.Contains(m, `eventgate_memory_in_use_bytes{pool="answers"} 0`) {
			t.Errorf("memory held after the request ended:\n%s", grepLines(m, "eventgate_memory"))
		}
	})
}

// grepLines returns the lines of s that contain sub.
func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// largeEvents is an upstream of 10 users of 10 events of 90 KB each (an
// answer of 900 KB), whose event lookups take a second. It records how many
// users' lookups it serves at once.
type largeEvents struct {
	delay        time.Duration // of each lookup; 0: a second
	mu           sync.Mutex
	active       map[string]int // user → lookups in progress
	peakUsers    int
	eventsServed int
}

func (l *largeEvents) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if user, ok := strings.CutPrefix(r.URL.Path, "/getUserById/"); ok {
		ids := make([]string, 10)
		for i := range ids {
			ids[i] = fmt.Sprintf("%s-e%d", user, i)
		}
		json.NewEncoder(w).Encode(map[string]any{"id": user, "events": ids})
		return
	}
	id := strings.TrimPrefix(r.URL.Path, "/getEventById/")
	user, _, _ := strings.Cut(id, "-")
	l.mu.Lock()
	l.active[user]++
	l.peakUsers = max(l.peakUsers, len(l.active))
	l.mu.Unlock()
	time.Sleep(cmp.Or(l.delay, time.Second))
	l.mu.Lock()
	if l.active[user]--; l.active[user] == 0 {
		delete(l.active, user)
	}
	l.eventsServed++
	l.mu.Unlock()
	json.NewEncoder(w).Encode(map[string]string{"id": id, "userId": user, "details": strings.Repeat("x", 90_000)})
}

// TestLargeAnswersShareTheMemoryBudget: ten clients at once, each asking for
// a different user whose answer is 900 KB, with MAX_RESPONSE_BYTES=1MiB and
// MEMORY_BUDGET=4MiB (3 MiB for answers): each reserves its largest answer
// before its lookups, so at most two users are fetched at once, the others
// wait their turn, and every client gets its whole answer.
func TestLargeAnswersShareTheMemoryBudget(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		up := &largeEvents{active: map[string]int{}}
		g := newTestGateway(t, up, func(c *config) { c.MemoryBudget, c.MaxResponseBytes = 4<<20, 1<<20 })
		var wg sync.WaitGroup
		codes := make([]int, 10)
		for i := range codes {
			wg.Go(func() { codes[i] = g.get(fmt.Sprint("/getEventsByUserId/u", i)).Code })
		}
		wg.Wait()
		for i, code := range codes {
			if code != 200 {
				t.Errorf("client %d = %d; want 200: waiting its turn fits in REQUEST_TIMEOUT", i, code)
			}
		}
		if up.peakUsers > 2 {
			t.Errorf("the upstream served %d users' lookups at once; want at most 2, as 3 MiB holds two 1 MiB answers", up.peakUsers)
		}
	})
}

// TestMemoryComesInTimeOrNotAtAll: as above, but each lookup takes 3 s,
// with UPSTREAM_TIMEOUT 5 s of REQUEST_TIMEOUT 10 s. Two answers fit at
// once; the first four clients are served by 6 s; the others would get
// their memory with less than UPSTREAM_TIMEOUT left, so they are answered
// 503 with Retry-After as soon as that is so, never a late 504.
func TestMemoryComesInTimeOrNotAtAll(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		up := &largeEvents{active: map[string]int{}, delay: 3 * time.Second}
		g := newTestGateway(t, up, func(c *config) {
			c.MemoryBudget, c.MaxResponseBytes = 4<<20, 1<<20
			c.UpstreamTimeout, c.RequestTimeout = 5*time.Second, 10*time.Second
		})
		var wg sync.WaitGroup
		codes := make([]int, 10)
		retry := make([]string, 10)
		for i := range codes {
			wg.Go(func() {
				rec := g.get(fmt.Sprint("/getEventsByUserId/u", i))
				codes[i], retry[i] = rec.Code, rec.Header().Get("Retry-After")
			})
			synctest.Wait() // in order
		}
		wg.Wait()
		answered, busy := 0, 0
		for i, code := range codes {
			switch {
			case code == 200:
				answered++
			case code == 503 && retry[i] != "":
				busy++
			default:
				t.Errorf("client %d = %d (Retry-After %q); want 200, or 503 with Retry-After", i, code, retry[i])
			}
		}
		if answered != 4 || busy != 6 {
			t.Errorf("%d answered, %d busy; want 4 and 6", answered, busy)
		}
	})
}

// roundTripFunc is an http.RoundTripper made of a function.
type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// slowBody yields body after delay, or the request's end, whichever first.
type slowBody struct {
	ctx   context.Context
	delay time.Duration
	body  []byte
	done  bool
}

func (b *slowBody) Read(p []byte) (int, error) {
	if b.done {
		return 0, io.EOF
	}
	select {
	case <-time.After(b.delay):
	case <-b.ctx.Done():
		return 0, b.ctx.Err()
	}
	b.done = true
	return copy(p, b.body), nil
}

func (b *slowBody) Close() error { return nil }

// TestWaitingForMemoryIsNotTheUpstreamsTimeout: a list that stalls holds
// the whole reads pool until its UPSTREAM_TIMEOUT; a write sent meanwhile
// has its confirmation's headers at once, waits for memory to read its
// body, and then runs out of its own UPSTREAM_TIMEOUT while the body comes.
// Part of that time was eventgate's wait, so the breaker counts no fault;
// but the write was sent and may be stored, so it is a 504 (retry with the
// same key), never a 503 "busy" that would say it was not sent.
func TestWaitingForMemoryIsNotTheUpstreamsTimeout(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		up := roundTripFunc(func(r *http.Request) (*http.Response, error) {
			if r.URL.Path == "/getEvents" {
				return &http.Response{StatusCode: 200, ContentLength: 8 << 20, Header: http.Header{},
					Body: &stallingBody{ctx: r.Context(), left: 8<<20 - 1, up: &stallingUpstream{}}}, nil
			}
			confirm := []byte(`{"success": true}`)
			return &http.Response{StatusCode: 200, ContentLength: int64(len(confirm)), Header: http.Header{},
				Body: &slowBody{ctx: r.Context(), delay: time.Second, body: confirm}}, nil
		})
		// 32 MiB: 8 MiB for reads, which the list's 8 MiB takes whole.
		g := newGatewayAt(t, "http://upstream.test", up, func(c *config) { c.MemoryBudget = 32 << 20 })
		go g.get("/getEvents")
		time.Sleep(500 * time.Millisecond)
		rec := g.post("/addEvent", `{"name": "n", "userId": "1"}`)
		if rec.Code != 504 || strings.Contains(rec.Body.String(), "busy") {
			t.Errorf("a write whose body read waited for memory, then ran out = %d %q; want 504, outcome unknown", rec.Code, rec.Body)
		}
		if s := g.breaker.Snapshot(); s.FailuresInWindow != 0 {
			t.Errorf("breaker counts %d faults; want none", s.FailuresInWindow)
		}
	})
}
