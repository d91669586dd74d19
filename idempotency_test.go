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

		time.Sleep(g.cfg.IdempotencyTTL + time.Second)
		if rec := g.post("/addEvent", body, "Idempotency-Key", "k-1"); addedID(rec.Body.String()) == addedID(first.Body.String()) {
			t.Error("a key was still remembered after IDEMPOTENCY_TTL")
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

func TestIdempotencyStoreIsBounded(t *testing.T) {
	s := newIdempotencyStore(2, time.Hour)
	for _, k := range []string{"a", "b", "c"} {
		s.Begin(k, "fp", "id-"+k)
		s.Finish(k, true)
	}
	if c, _ := s.Begin("a", "fp", "new"); c.Done || c.ID != "new" {
		t.Errorf("oldest key a still remembered past the bound: %+v", c)
	}
	if c, _ := s.Begin("c", "fp", "new"); !c.Done || c.ID != "id-c" {
		t.Errorf("newest key c forgotten: %+v", c)
	}
}

// TestNothingAcknowledgedIsLost fires 500 concurrent POST /addEvent at an
// upstream that refuses one in ten with a 503: every event a client was
// told succeeded is stored exactly once, and every refused one is absent.
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
		if acked != 450 || refused != 50 || !strings.HasPrefix(u.Events[0], "event-4") {
			t.Errorf("%d acknowledged, %d refused; want 450 and 50", acked, refused)
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
