package main

import (
	"container/list"
	"net/http"
	"sync"
	"time"
)

// idempotencyStore remembers Idempotency-Key headers of POST /addEvent, so
// that a client can retry a write safely: each key is bound, on first use,
// to the request's content and to the event id the gateway chose. A retry
// with the same key resends the same id (the upstream stores an id once),
// or, once the write succeeded, answers from memory without calling the
// upstream at all.
//
// Keys are remembered for ttl and at most max at once; past that, the oldest
// is forgotten first. Both bounds are documented in the README.
type idempotencyStore struct {
	ttl time.Duration
	max int

	mu    sync.Mutex               // protects keys and order
	keys  map[string]*list.Element // key → element of order holding an *idemEntry
	order *list.List               // oldest first; with one ttl, also soonest to expire
}

type idemEntry struct {
	key         string
	fingerprint string // of the request's content
	id          string // the event id bound to the key
	inFlight    bool   // a request with this key is running
	done        bool   // the write succeeded
	expires     time.Time
}

// claim is what Begin grants: the event id to use, and whether the write
// is already done (answer at once) or must be sent.
type claim struct {
	ID   string
	Done bool
}

func newIdempotencyStore(max int, ttl time.Duration) *idempotencyStore {
	return &idempotencyStore{ttl: ttl, max: max, keys: map[string]*list.Element{}, order: list.New()}
}

// Begin claims key for a request with the given content fingerprint. A new
// key is bound to newID. It refuses a key in use by a request still running
// (409), and a key seen with other content (422).
// Every claim that is not Done must be ended with Finish.
func (s *idempotencyStore) Begin(key, fingerprint, newID string) (claim, error) {
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.expire(now)

	el, ok := s.keys[key]
	if !ok {
		if s.order.Len() >= s.max {
			s.remove(s.order.Front())
		}
		e := &idemEntry{key: key, fingerprint: fingerprint, id: newID, inFlight: true, expires: now.Add(s.ttl)}
		s.keys[key] = s.order.PushBack(e)
		return claim{ID: newID}, nil
	}
	e := el.Value.(*idemEntry)
	switch {
	case e.fingerprint != fingerprint:
		return claim{}, errorf(http.StatusUnprocessableEntity,
			"Idempotency-Key was already used with a different request body")
	case e.done:
		return claim{ID: e.id, Done: true}, nil
	case e.inFlight:
		return claim{}, errorf(http.StatusConflict,
			"a request with this Idempotency-Key is still in progress; retry when it has finished")
	}
	e.inFlight = true
	return claim{ID: e.id}, nil
}

// Finish ends a claim; ok reports whether the write succeeded.
func (s *idempotencyStore) Finish(key string, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if el, found := s.keys[key]; found {
		e := el.Value.(*idemEntry)
		e.inFlight = false
		e.done = e.done || ok
	}
}

// expire forgets the keys whose time is up. s.mu must be held.
func (s *idempotencyStore) expire(now time.Time) {
	for el := s.order.Front(); el != nil && now.After(el.Value.(*idemEntry).expires); el = s.order.Front() {
		s.remove(el)
	}
}

func (s *idempotencyStore) remove(el *list.Element) {
	s.order.Remove(el)
	delete(s.keys, el.Value.(*idemEntry).key)
}
