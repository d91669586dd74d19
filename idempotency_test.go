package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"eventgate/mock"
)

// addedID returns the id of a successful POST /addEvent answer, or "".
func addedID(body string) string {
	var out struct{ ID string }
	json.Unmarshal([]byte(body), &out)
	return out.ID
}

func TestIdempotencyKeyMakesRetriesSafe(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m := quietMock()
		g := newTestGateway(t, m, nil)
		body := `{"name": "Launch", "userId": "2"}`
		first := g.post("/addEvent", body, "Idempotency-Key", "k-1")
		second := g.post("/addEvent", `{"userId": "2", "name": " Launch "}`, "Idempotency-Key", "k-1")
		if first.Code != 200 || second.Code != 200 || addedID(first.Body.String()) != addedID(second.Body.String()) {
			t.Fatalf("same key twice = %d %q, %d %q; want 200 and the same id", first.Code, first.Body, second.Code, second.Body)
		}
		if second.Header().Get("Idempotent-Replayed") != "true" {
			t.Error("the replayed answer is not marked Idempotent-Replayed")
		}
		if n := g.transport.calls.Load(); n != 1 {
			t.Errorf("upstream called %d times; want 1", n)
		}
		if u, _ := m.User("2"); len(u.Events) != 2 {
			t.Errorf("user 2 has events %v; want event-2 and one new", u.Events)
		}

		rec := g.post("/addEvent", `{"name": "Other", "userId": "2"}`, "Idempotency-Key", "k-1")
		if rec.Code != 422 {
			t.Errorf("same key, other body = %d; want 422", rec.Code)
		}
		errorBody(t, rec)
		if rec := g.post("/addEvent", body, "Idempotency-Key", "k-2"); rec.Code != 200 || addedID(rec.Body.String()) == addedID(first.Body.String()) {
			t.Errorf("another key = %d %q; want a new event", rec.Code, rec.Body)
		}

		// Past IDEMPOTENCY_TTL this process has forgotten k-1: the write goes
		// to the upstream again, but under the id derived from the key, which
		// the upstream holds already: still one event.
		time.Sleep(g.cfg.IdempotencyTTL + time.Second)
		calls := g.transport.calls.Load()
		rec = g.post("/addEvent", body, "Idempotency-Key", "k-1")
		if rec.Code != 200 || addedID(rec.Body.String()) != addedID(first.Body.String()) || rec.Header().Get("Idempotent-Replayed") != "" || g.transport.calls.Load() != calls+1 {
			t.Errorf("k-1 after IDEMPOTENCY_TTL = %d %q, replayed %q; want 200 with the same id, sent upstream again, not replayed", rec.Code, rec.Body, rec.Header().Get("Idempotent-Replayed"))
		}
		if u, _ := m.User("2"); len(u.Events) != 3 {
			t.Errorf("user 2 has events %v; want event-2 and the two keys' events, once each", u.Events)
		}
	})
}

// TestIdempotentRetryAfterFailureReusesTheID: the first try reaches the
// upstream, which stores the event but times out; the retry with the same
// key sends the same id, so the upstream still holds one event.
func TestIdempotentRetryAfterFailureReusesTheID(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m := quietMock()
		slowOnce := sync.Once{}
		g := newTestGateway(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			m.ServeHTTP(w, r) // stored
			slowOnce.Do(func() { <-r.Context().Done() })
		}), nil)
		body := `{"name": "Once", "userId": "1"}`
		if rec := g.post("/addEvent", body, "Idempotency-Key", "retry-me"); rec.Code != 504 {
			t.Fatalf("first try = %d; want 504", rec.Code)
		}
		rec := g.post("/addEvent", body, "Idempotency-Key", "retry-me")
		if rec.Code != 200 {
			t.Fatalf("retry = %d %q; want 200", rec.Code, rec.Body)
		}
		if u, _ := m.User("1"); len(u.Events) != 3 || u.Events[2] != addedID(rec.Body.String()) {
			t.Errorf("user 1's events = %v; want one new event, %s", u.Events, addedID(rec.Body.String()))
		}
	})
}

func TestIdempotencyKeyInUseIsRefused(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		release := make(chan struct{})
		m := quietMock()
		g := newTestGateway(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			<-release
			m.ServeHTTP(w, r)
		}), nil)
		body := `{"name": "Twice", "userId": "1"}`
		done := make(chan int)
		go func() { done <- g.post("/addEvent", body, "Idempotency-Key", "busy").Code }()
		synctest.Wait()
		if rec := g.post("/addEvent", body, "Idempotency-Key", "busy"); rec.Code != 409 {
			t.Errorf("same key while the first runs = %d; want 409", rec.Code)
		}
		close(release)
		if code := <-done; code != 200 {
			t.Errorf("first = %d; want 200", code)
		}
	})
}

// keyCost is what a one-letter key bound to a four-letter id costs.
const keyCost = 1 + 4 + entryOverhead

func TestIdempotencyStoreIsBounded(t *testing.T) {
	s := newIdempotencyStore(storeOptions{TTL: time.Hour, MaxBytes: 2 * keyCost})
	for _, k := range []string{"a", "b", "c"} {
		c, _ := s.Begin(k, "id-"+k)
		s.Finish(c, writeStored)
	}
	if c, _ := s.Begin("a", "new"); c.Done || c.ID != "new" {
		t.Errorf("oldest key a still remembered past the bound: %+v", c)
	}
	if c, _ := s.Begin("c", "id-c"); !c.Done || c.ID != "id-c" {
		t.Errorf("newest key c forgotten: %+v", c)
	}
}

// TestIdempotencyStoreNeverForgetsAWriteInFlight: with as many writes in
// flight as keys may be, a new key is refused with 503 and Retry-After
// instead of one of them being forgotten; once one finishes, there is room.
func TestIdempotencyStoreNeverForgetsAWriteInFlight(t *testing.T) {
	s := newIdempotencyStore(storeOptions{TTL: time.Hour, MaxBytes: 2 * keyCost})
	a, _ := s.Begin("a", "id-a")
	s.Begin("b", "id-b")
	_, err := s.Begin("c", "id-c")
	if ae := toAPIError(err); ae.Status != 503 || ae.RetryAfter < time.Second {
		t.Fatalf("a third key with two in flight = %v; want 503 with Retry-After", err)
	}
	for _, k := range []string{"a", "b"} {
		if _, err := s.Begin(k, "id-"+k); toAPIError(err).Status != 409 {
			t.Errorf("key %s after the refusal = %v; want 409, still in flight", k, err)
		}
	}
	s.Finish(a, writeFailed)
	if c, err := s.Begin("c", "id-c"); err != nil || c.ID != "id-c" {
		t.Errorf("a third key once a is finished = %+v, %v; want it claimed", c, err)
	}
	if _, err := s.Begin("b", "id-b"); toAPIError(err).Status != 409 {
		t.Errorf("b after c was claimed = %v; want 409, still in flight", err)
	}
}

// TestIdempotencyStoreRefusesAnotherBody: a key bound to one id (one body)
// is 422 with another, in flight or settled, and never answered with its id.
func TestIdempotencyStoreRefusesAnotherBody(t *testing.T) {
	s := newIdempotencyStore(storeOptions{TTL: time.Hour, MaxBytes: 10 * keyCost})
	c, _ := s.Begin("k", "id-A")
	if got, err := s.Begin("k", "id-B"); toAPIError(err).Status != 422 || got.ID != "" {
		t.Errorf("k with another body while the first runs = %+v, %v; want 422", got, err)
	}
	s.Finish(c, writeStored)
	if got, err := s.Begin("k", "id-B"); toAPIError(err).Status != 422 || got.ID != "" {
		t.Errorf("k with another body once stored = %+v, %v; want 422, not id-A", got, err)
	}
}

// TestUnsentWritesLeaveNoTrace: a write refused before it left (breaker
// open, gateway busy) neither stays bound to its key nor makes any other key
// be forgotten, however many of them there are.
func TestUnsentWritesLeaveNoTrace(t *testing.T) {
	s := newIdempotencyStore(storeOptions{TTL: time.Hour, MaxBytes: 2 * keyCost})
	for _, k := range []string{"a", "b"} {
		c, _ := s.Begin(k, "id-"+k)
		s.Finish(c, writeStored)
	}
	for i := range 100 {
		c, err := s.Begin(fmt.Sprint("flood-", i), "id")
		if err != nil {
			t.Fatalf("flood key %d = %v; want claimed", i, err)
		}
		s.Finish(c, writeUnsent)
	}
	for _, k := range []string{"a", "b"} {
		if c, _ := s.Begin(k, "id-"+k); !c.Done {
			t.Errorf("key %s forgotten after a flood of unsent writes", k)
		}
	}
	c, err := s.Begin("flood-1", "other-id")
	if err != nil || c.Done || c.ID != "other-id" {
		t.Errorf("an unsent write's key = %+v, %v; want free for any body", c, err)
	}
	s.Finish(c, writeUnsent)
	// A retry of a write that was sent once, refused this time, keeps the
	// key bound: the upstream may hold it.
	c, _ = s.Begin("sent", "id-s")
	s.Finish(c, writeFailed)
	c, _ = s.Begin("sent", "id-s")
	s.Finish(c, writeUnsent)
	if _, err := s.Begin("sent", "id-other"); toAPIError(err).Status != 422 {
		t.Errorf("a sent write's key after an unsent retry = %v; want still bound (422 for another body)", err)
	}
}

// TestIdempotencyStoreEndsAClaimByItsIdentity: a claim whose key was
// forgotten and claimed again meanwhile ends only itself, not the new
// claim, which a later retry would otherwise find "done".
func TestIdempotencyStoreEndsAClaimByItsIdentity(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := newIdempotencyStore(storeOptions{TTL: time.Minute, MaxBytes: 10 * keyCost})
		c1, _ := s.Begin("k", "id-1")
		s.Finish(c1, writeFailed)
		time.Sleep(2 * time.Minute) // k is forgotten …
		c2, _ := s.Begin("k", "id-2")
		s.Finish(c1, writeStored) // … so the first claim's success, arriving late, is not k's
		if c, err := s.Begin("k", "id-2"); err == nil || c.Done {
			t.Errorf("k after an old claim ended = %+v, %v; want 409: the new claim still runs, and nothing is done", c, err)
		}
		s.Finish(c2, writeFailed)
		if c, err := s.Begin("k", "id-2"); err != nil || c.Done || c.ID != "id-2" {
			t.Errorf("k after its own claim failed = %+v, %v; want a retry with id-2", c, err)
		}
	})
}

func TestIdempotencyStoreIsBoundedInBytes(t *testing.T) {
	cost := int64(len("k0") + len("id") + entryOverhead)
	s := newIdempotencyStore(storeOptions{TTL: time.Hour, MaxBytes: 3 * cost})
	for i := range 4 {
		c, _ := s.Begin(fmt.Sprint("k", i), "id")
		s.Finish(c, writeStored)
	}
	if c, _ := s.Begin("k0", "new"); c.Done {
		t.Error("k0 still remembered with a fourth key past a bound of three keys' bytes")
	}
	if c, _ := s.Begin("k3", "id"); !c.Done {
		t.Error("k3, the newest, forgotten")
	}
}

// TestNothingAcknowledgedIsLost fires 500 concurrent POST /addEvent at an
// upstream that refuses one in ten with a 503: every event a client was
// told succeeded is stored exactly once, every refused one (by the upstream
// or by the admission's pacing) is absent, and nothing else is answered.
func TestNothingAcknowledgedIsLost(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m := mock.New(mock.Options{})
		var mu sync.Mutex
		n := 0
		g := newTestGateway(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			mu.Lock()
			n++
			refuse := n%10 == 0
			mu.Unlock()
			if refuse {
				http.Error(w, `{"error": "busy"}`, http.StatusServiceUnavailable)
				return
			}
			m.ServeHTTP(w, r)
		}), func(c *config) { c.BreakerThreshold = 1000 })

		const total = 500
		codes, ids := make([]int, total), make([]string, total)
		var wg sync.WaitGroup
		for i := range total {
			wg.Go(func() {
				rec := g.post("/addEvent", fmt.Sprintf(`{"name": "n-%d", "userId": "3"}`, i))
				codes[i], ids[i] = rec.Code, addedID(rec.Body.String())
			})
		}
		wg.Wait()

		u, _ := m.User("3")
		storedNames := map[string]int{}
		for _, id := range u.Events {
			e, _ := m.Event(id)
			storedNames[e.Name]++
		}
		acked, refused := 0, 0
		for i, code := range codes {
			name := fmt.Sprintf("n-%d", i)
			switch code {
			case 200:
				acked++
				if e, ok := m.Event(ids[i]); !ok || e.Name != name || storedNames[name] != 1 {
					t.Errorf("acknowledged %s (%s) stored %d times", name, ids[i], storedNames[name])
				}
			case 503:
				refused++
				if storedNames[name] != 0 {
					t.Errorf("refused %s is stored", name)
				}
			default:
				t.Errorf("%s = %d; want 200 or 503", name, code)
			}
		}
		// The admission paces the writes after the first refusal, so how
		// many are acknowledged depends on their order; each one is kept.
		if acked == 0 || len(u.Events) != 1+acked || u.Events[0] != "event-4" {
			t.Errorf("%d acknowledged, %d refused; user 3 holds %v", acked, refused, u.Events)
		}
	})
}

// TestIdempotencyKeyRetriedAfterAFailureIsInFlightAgain: after a failed
// attempt, a retry takes the key again, so one more request with the same
// key while the retry runs is 409, not a third write.
func TestIdempotencyKeyRetriedAfterAFailureIsInFlightAgain(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m := quietMock()
		var mode atomic.Value
		mode.Store("fail")
		release := make(chan struct{})
		g := newTestGateway(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if mode.Load() == "fail" {
				http.Error(w, "", 500)
				return
			}
			<-release
			m.ServeHTTP(w, r)
		}), nil)
		body := `{"name": "Retry", "userId": "1"}`
		if code := g.post("/addEvent", body, "Idempotency-Key", "r").Code; code != 502 {
			t.Fatalf("first attempt = %d; want 502", code)
		}
		mode.Store("slow")
		done := make(chan int)
		go func() { done <- g.post("/addEvent", body, "Idempotency-Key", "r").Code }()
		synctest.Wait()
		if code := g.post("/addEvent", body, "Idempotency-Key", "r").Code; code != 409 {
			t.Errorf("the same key while its retry runs = %d; want 409", code)
		}
		close(release)
		if code := <-done; code != 200 {
			t.Errorf("the retry = %d; want 200", code)
		}
	})
}

func TestIdempotencyKeyLength(t *testing.T) {
	g := newTestGateway(t, quietMock(), nil)
	body := `{"name": "x", "userId": "1"}`
	if code := g.post("/addEvent", body, "Idempotency-Key", strings.Repeat("k", 255)).Code; code != 200 {
		t.Errorf("a key of 255 characters = %d; want 200", code)
	}
	if code := g.post("/addEvent", body, "Idempotency-Key", strings.Repeat("k", 256)).Code; code != 400 {
		t.Errorf("a key of 256 characters = %d; want 400", code)
	}
}

// TestKeyedWriteAcrossTwoInstances runs two gateways in front of one
// upstream, as behind a load balancer: the same key sent to each (and
// again to a third that just started, as after a restart) makes one event,
// and every answer carries its id. Without the shared secret, it would make
// one event per instance.
func TestKeyedWriteAcrossTwoInstances(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m := quietMock()
		shared := func(c *config) { c.IdempotencySecret = []byte(strings.Repeat("x", 32)) }
		a, b := newTestGateway(t, m, shared), newTestGateway(t, m, shared)
		body := `{"name": "Once", "userId": "3"}`
		var ids []string
		for _, g := range []*testGateway{a, b, a, newTestGateway(t, m, shared)} {
			rec := g.post("/addEvent", body, "Idempotency-Key", `"order-77"`)
			if rec.Code != 200 {
				t.Fatalf("POST = %d %q", rec.Code, rec.Body)
			}
			ids = append(ids, addedID(rec.Body.String()))
		}
		if ids[0] == "" || ids[1] != ids[0] || ids[2] != ids[0] || ids[3] != ids[0] {
			t.Errorf("ids answered %v; want one id for the key on every instance", ids)
		}
		if u, _ := m.User("3"); len(u.Events) != 2 || u.Events[1] != ids[0] {
			t.Errorf("user 3's events %v; want event-4 and %s, once", u.Events, ids[0])
		}

		alone := newTestGateway(t, m, nil) // its own random secret
		if rec := alone.post("/addEvent", body, "Idempotency-Key", `"order-77"`); addedID(rec.Body.String()) == ids[0] {
			t.Error("an instance without the shared secret derived the same id")
		}
	})
}

// TestIdempotencyKeyInFlightOutlivesItsTTL: a key whose write is still
// running when IDEMPOTENCY_TTL passes is kept (a retry is 409) until the
// write ends; then it expires.
func TestIdempotencyKeyInFlightOutlivesItsTTL(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := newIdempotencyStore(storeOptions{TTL: time.Minute, MaxBytes: 10 * keyCost})
		c, _ := s.Begin("slow", "id-1")
		time.Sleep(2 * time.Minute)
		if _, err := s.Begin("slow", "id-1"); toAPIError(err).Status != 409 {
			t.Errorf("the key of a write still running past the TTL = %v; want 409", err)
		}
		s.Finish(c, writeFailed)
		if c, err := s.Begin("slow", "id-2"); err != nil || c.ID != "id-2" {
			t.Errorf("once finished and past the TTL = %+v, %v; want a fresh claim", c, err)
		}
	})
}

// TestNoWriteIsAcknowledgedUnderAnotherBodysID replays the attack on the
// key memory: key K with body A is stored as X; while the breaker is open, a
// flood of keyed writes (all refused before the upstream) tries to push K
// out of a memory of two keys' bytes; afterwards K with body B is 422, never X. On
// an instance that never saw K, and across a token rotation, K with B is
// another id under which B is stored, and K with A is X again: one key,
// one event per body, whatever each instance remembers.
func TestNoWriteIsAcknowledgedUnderAnotherBodysID(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m := quietMock()
		var failing atomic.Bool
		upstream := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if failing.Load() {
				w.WriteHeader(500)
				return
			}
			m.ServeHTTP(w, r)
		})
		secret := []byte(strings.Repeat("x", 32))
		g := newTestGateway(t, upstream, func(c *config) { c.IdempotencySecret, c.IdempotencyBytes = secret, 2*(1+32+entryOverhead) })
		bodyA, bodyB := `{"name": "A", "userId": "3"}`, `{"name": "B", "userId": "3"}`
		rec := g.post("/addEvent", bodyA, "Idempotency-Key", "K")
		x := addedID(rec.Body.String())
		if rec.Code != 200 || x == "" {
			t.Fatalf("K with A = %d %q; want 200", rec.Code, rec.Body)
		}

		failing.Store(true)
		for range 3 {
			g.post("/addEvent", bodyA) // unkeyed: nothing to remember
		}
		failing.Store(false)
		for i := range 100 {
			if rec := g.post("/addEvent", bodyA, "Idempotency-Key", fmt.Sprint("flood-", i)); rec.Code != 503 {
				t.Fatalf("flood write %d = %d; want 503 from the open breaker", i, rec.Code)
			}
		}
		time.Sleep(time.Minute) // past the backoff: half-open
		if rec := g.post("/addEvent", bodyB, "Idempotency-Key", "K"); rec.Code != 422 {
			t.Errorf("K with B after the flood = %d %q; want 422: K is remembered", rec.Code, rec.Body)
		}

		other := newTestGateway(t, m, func(c *config) { c.IdempotencySecret, c.APIToken = secret, "rotated-token" })
		bearer := []string{"Idempotency-Key", "K", "Authorization", "Bearer rotated-token"}
		recB := other.post("/addEvent", bodyB, bearer...)
		y := addedID(recB.Body.String())
		if recB.Code != 200 || y == "" || y == x {
			t.Errorf("K with B on another instance = %d %q; want 200 with an id other than %s", recB.Code, recB.Body, x)
		}
		if ev, ok := m.Event(y); !ok || ev.Name != "B" {
			t.Errorf("upstream holds %+v under %s; want body B", ev, y)
		}
		if ev, _ := m.Event(x); ev.Name != "A" {
			t.Errorf("upstream holds %+v under %s; want body A still", ev, x)
		}
		if rec := other.post("/addEvent", bodyA, bearer...); rec.Code != 422 {
			t.Errorf("K with A where K is remembered with B = %d; want 422", rec.Code)
		}
		third := newTestGateway(t, m, func(c *config) { c.IdempotencySecret, c.APIToken = secret, "rotated-token" })
		if rec := third.post("/addEvent", bodyA, bearer...); addedID(rec.Body.String()) != x {
			t.Errorf("K with A after a token rotation = %d %q; want 200 with %s: one key, one event", rec.Code, rec.Body, x)
		}
		if u, _ := m.User("3"); len(u.Events) != 3 {
			t.Errorf("user 3 holds %v; want event-4, A and B, once each", u.Events)
		}
	})
}

// TestAStoredWriteIsNotRememberedAsMissing: a user lists an id the upstream
// does not have yet, which the gateway then remembers as missing; a keyed
// write stored under that very id through this instance makes it appear
// at once, not after the 10 s a missing event is remembered.
func TestAStoredWriteIsNotRememberedAsMissing(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		secret := []byte(strings.Repeat("s", 32))
		future := newIDDeriver(secret).forWrite("k", addEventRequest{Name: "Soon", UserID: "2"})
		m := quietMock()
		g := newTestGateway(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/getUserById/2" {
				fmt.Fprintf(w, `{"id": "2", "events": ["event-2", %q]}`, future)
				return
			}
			m.ServeHTTP(w, r)
		}), func(c *config) { c.IdempotencySecret = secret })
		if ids := eventIDs(t, g.get("/getEventsByUserId/2")); len(ids) != 1 {
			t.Fatalf("before the write: %v; want event-2 alone", ids)
		}
		if rec := g.post("/addEvent", `{"name": "Soon", "userId": "2"}`, "Idempotency-Key", "k"); addedID(rec.Body.String()) != future {
			t.Fatalf("write = %d %q; want 200 with %s", rec.Code, rec.Body, future)
		}
		if ids := eventIDs(t, g.get("/getEventsByUserId/2")); len(ids) != 2 {
			t.Errorf("right after the write: %v; want event-2 and %s", ids, future)
		}
	})
}
