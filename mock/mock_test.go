package mock

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

func serve(h http.Handler, method, path, body string) *httptest.ResponseRecorder {
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(method, path, strings.NewReader(body)))
	return rec
}

func TestSeedDataIsConsistent(t *testing.T) {
	h := New(Options{})
	var users []User
	json.Unmarshal(serve(h, "GET", "/getUsers", "").Body.Bytes(), &users)
	var events []Event
	json.Unmarshal(serve(h, "GET", "/getEvents", "").Body.Bytes(), &events)
	if len(users) != 3 || len(events) != 4 {
		t.Fatalf("%d users, %d events; want 3 and 4", len(users), len(events))
	}
	owner := map[string]string{}
	for _, e := range events {
		owner[e.ID] = e.UserID
	}
	for _, u := range users {
		for _, id := range u.Events {
			if owner[id] != u.ID {
				t.Errorf("user %s lists %s, owned by %q", u.ID, id, owner[id])
			}
		}
	}
	if u, _ := h.User("1"); strings.Join(u.Events, ",") != "event-1,event-3" {
		t.Errorf("user 1's events = %v; want event-1, event-3", u.Events)
	}
}

func TestLookups(t *testing.T) {
	h := New(Options{})
	tests := []struct {
		path   string
		status int
		want   string
	}{
		{"/getUserById/2", 200, `"userName":"bob"`},
		{"/getUserById/9", 404, "User not found"},
		{"/getEventById/event-4", 200, `"name":"Hackathon"`},
		{"/getEventById/event-9", 404, "Event not found"},
	}
	for _, tt := range tests {
		rec := serve(h, "GET", tt.path, "")
		if rec.Code != tt.status || !strings.Contains(rec.Body.String(), tt.want) {
			t.Errorf("GET %s = %d %q; want %d containing %q", tt.path, rec.Code, rec.Body, tt.status, tt.want)
		}
	}
}

func TestEventLookupWaitsTheDelay(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := New(Options{EventDelay: 500 * time.Millisecond})
		start := time.Now()
		serve(h, "GET", "/getEventById/event-1", "")
		if took := time.Since(start); took != 500*time.Millisecond {
			t.Errorf("event lookup took %v; want 500ms", took)
		}
	})
}

// TestEventLookupHasATail: TailRate of event lookups take TailDelay.
func TestEventLookupHasATail(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		draws := []float64{0.5, 0.005, 0.02}
		var i int
		h := New(Options{EventDelay: 20 * time.Millisecond, TailRate: 0.01, TailDelay: time.Second, Rand: func() float64 { i++; return draws[i-1] }})
		for n, want := range []time.Duration{20 * time.Millisecond, time.Second, 20 * time.Millisecond} {
			start := time.Now()
			serve(h, "GET", "/getEventById/event-1", "")
			if took := time.Since(start); took != want {
				t.Errorf("lookup %d (draw %v) took %v; want %v", n, draws[n], took, want)
			}
		}
	})
}

func TestListEndpointsDropConnectionsAtTheFailRate(t *testing.T) {
	draws := []float64{0.01, 0.5, 0.04, 0.9}
	var i int
	h := New(Options{FailRate: 0.05, Rand: func() float64 { i++; return draws[i-1] }})
	for n, want := range []bool{true, false, true, false} {
		dropped := func() (dropped bool) {
			defer func() { dropped = recover() == http.ErrAbortHandler }()
			serve(h, "GET", "/getEvents", "")
			return false
		}()
		if dropped != want {
			t.Errorf("request %d (draw %v): dropped %v; want %v", n, draws[n], dropped, want)
		}
	}
}

func TestAddEventCapacityWindowSlides(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := New(Options{AddCapacity: 2, AddWindow: 10 * time.Second, RejectDelay: 100 * time.Millisecond})
		add := func(id string) int {
			return serve(h, "POST", "/addEvent", fmt.Sprintf(`{"id": %q, "name": "n", "userId": "1"}`, id)).Code
		}
		if a, b := add("a"), add("b"); a != 200 || b != 200 {
			t.Fatalf("first two adds = %d, %d; want 200", a, b)
		}
		time.Sleep(6 * time.Second)
		start := time.Now()
		rec := serve(h, "POST", "/addEvent", `{"id": "c", "name": "n", "userId": "1"}`)
		if rec.Code != 503 || !strings.Contains(rec.Body.String(), "Event API is experiencing high load") {
			t.Errorf("third add within the window = %d %q; want the 503 body", rec.Code, rec.Body)
		}
		if took := time.Since(start); took != 100*time.Millisecond {
			t.Errorf("refusal took %v; want 100ms", took)
		}
		if _, ok := h.Event("c"); ok {
			t.Error("a refused event was stored")
		}
		time.Sleep(4 * time.Second) // the first two slide out at 10s
		if code := add("c"); code != 200 {
			t.Errorf("add after the window slid = %d; want 200", code)
		}
	})
}

// TestAddEventHiccups: AddHiccups of the writes are refused whatever the
// capacity (here unlimited), with the overload answer, and not stored.
func TestAddEventHiccups(t *testing.T) {
	draws := []float64{0.5, 0.01, 0.9, 0.019}
	var i int
	h := New(Options{AddHiccups: 0.02, Rand: func() float64 { i++; return draws[i-1] }})
	for n, want := range []int{200, 503, 200, 503} {
		id := fmt.Sprint("h-", n)
		if code := serve(h, "POST", "/addEvent", fmt.Sprintf(`{"id": %q, "name": "n", "userId": "1"}`, id)).Code; code != want {
			t.Errorf("write %d (draw %v) = %d; want %d", n, draws[n], code, want)
		}
		if _, stored := h.Event(id); stored != (want == 200) {
			t.Errorf("write %d answered %d: stored %v", n, want, stored)
		}
	}
}

func TestAddEventCapacityChangesLater(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := New(Options{AddCapacity: 1, AddWindow: time.Minute, AddCapacityLater: 3, AddCapacityAt: 10 * time.Second})
		codes := func() (c []int) {
			for i := range 3 {
				c = append(c, serve(h, "POST", "/addEvent", fmt.Sprintf(`{"id": "%v-%d", "name": "n", "userId": "1"}`, time.Now().Unix(), i)).Code)
			}
			return c
		}
		if c := codes(); !slices.Equal(c, []int{200, 503, 503}) {
			t.Errorf("before AddCapacityAt: %v; want one accepted", c)
		}
		time.Sleep(10 * time.Second)
		if c := codes(); !slices.Equal(c, []int{200, 200, 503}) { // the first is still in the window
			t.Errorf("from AddCapacityAt: %v; want three in the window", c)
		}
	})
}

// TestUnknownUsersDoNotUseTheCapacity: writes for a user that does not
// exist are 404 and leave the capacity to the writes that do.
func TestUnknownUsersDoNotUseTheCapacity(t *testing.T) {
	h := New(Options{AddCapacity: 2, AddWindow: 10 * time.Second})
	for i := range 5 {
		if rec := serve(h, "POST", "/addEvent", fmt.Sprintf(`{"id": "x%d", "name": "n", "userId": "9"}`, i)); rec.Code != 404 {
			t.Fatalf("write %d for an unknown user = %d; want 404", i, rec.Code)
		}
	}
	for _, id := range []string{"a", "b"} {
		if rec := serve(h, "POST", "/addEvent", fmt.Sprintf(`{"id": %q, "name": "n", "userId": "1"}`, id)); rec.Code != 200 {
			t.Errorf("write %s after five for an unknown user = %d; want 200, the capacity untouched", id, rec.Code)
		}
	}
}

func TestAddEventStoresAnIDOnce(t *testing.T) {
	h := New(Options{})
	body := `{"id": "e1", "name": "n", "userId": "2", "details": "d"}`
	for range 2 {
		if rec := serve(h, "POST", "/addEvent", body); rec.Code != 200 {
			t.Fatalf("add = %d %q", rec.Code, rec.Body)
		}
	}
	if u, _ := h.User("2"); strings.Join(u.Events, ",") != "event-2,e1" {
		t.Errorf("user 2's events = %v; want event-2, e1 once", u.Events)
	}
	if n := h.EventCount(); n != 5 {
		t.Errorf("%d events stored; want 5", n)
	}
}

func TestAddEventRefusesUnknownUserAndBadBody(t *testing.T) {
	h := New(Options{})
	tests := []struct {
		body   string
		status int
	}{
		{`{"id": "e1", "name": "n", "userId": "9"}`, 404},
		{`{"id": "e1", "name": "n"}`, 400},
		{`{"name": "n", "userId": "1"}`, 400},
		{`not json`, 400},
	}
	for _, tt := range tests {
		if rec := serve(h, "POST", "/addEvent", tt.body); rec.Code != tt.status {
			t.Errorf("POST %s = %d; want %d", tt.body, rec.Code, tt.status)
		}
	}
	if n := h.EventCount(); n != 4 {
		t.Errorf("%d events after refused adds; want 4", n)
	}
}

func TestConcurrentAddsAreAllStored(t *testing.T) {
	h := New(Options{})
	var wg sync.WaitGroup
	for i := range 50 {
		wg.Go(func() { serve(h, "POST", "/addEvent", fmt.Sprintf(`{"id": "c%d", "name": "n", "userId": "3"}`, i)) })
	}
	wg.Wait()
	if u, _ := h.User("3"); len(u.Events) != 51 {
		t.Errorf("user 3 has %d events; want 51", len(u.Events))
	}
}
