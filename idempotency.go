package main

import (
	"container/list"
	"net/http"
	"sync"
	"time"
)

// idempotencyStore remembers the Idempotency-Keys of POST /addEvent in this
// process: the fast path in front of the derived ids of eventid.go. Each
// key is bound, on first use, to the request's content and its event id. A
// retry with the same key and content resends the same id, or, once the
// write succeeded, is answered from memory without calling the upstream; a
// key still in use is refused (409), and so is one seen with other content
// (422).
//
// Keys are remembered for TTL, and at most MaxKeys and MaxBytes of them;
// past either bound the oldest key not in flight is forgotten. A write in
// flight is never forgotten: were it, its retry could not be refused while
// it runs. When every key held is in flight, a new key is refused with a
// 503 that says to come back in a second.
type idempotencyStore struct {
	storeOptions

	mu    sync.Mutex               // protects the fields below
	keys  map[string]*list.Element // key → element of order holding an *idemEntry
	order *list.List               // oldest first; with one TTL, also soonest to expire
	bytes int64                    // the cost of the entries held
}

// storeOptions configure an idempotencyStore.
type storeOptions struct {
	TTL      time.Duration // how long a key is remembered
	MaxKeys  int           // keys remembered at most
	MaxBytes int64         // bytes remembered at most (keys, fingerprints, ids, plus entryOverhead each)
}

type idemEntry struct {
	key         string
	fingerprint string // of the request's content
	id          string // the event id bound to the key
	inFlight    bool   // a request with this key is running
	done        bool   // the write succeeded
	expires     time.Time
}

func (e *idemEntry) cost() int64 {
	return int64(len(e.key) + len(e.fingerprint) + len(e.id) + entryOverhead)
}

// claim is what Begin grants: the event id to use, and whether the write is
// already done (answer at once) or must be sent. It holds its entry, so
// that Finish ends this claim and no later one for the same key.
type claim struct {
	ID    string
	Done  bool
	entry *idemEntry
}

// errStoreFull refuses a new key while every key held is in flight.
var errStoreFull = &apiError{Status: http.StatusServiceUnavailable, RetryAfter: time.Second,
	Message: "too many writes with an Idempotency-Key are in progress; retry in a second"}

func newIdempotencyStore(o storeOptions) *idempotencyStore {
	return &idempotencyStore{storeOptions: o, keys: map[string]*list.Element{}, order: list.New()}
}

// Begin claims key for a request with the given content fingerprint; a new
// key is bound to id. It refuses a key in use by a request still running
// (409), a key seen with other content (422), and a new key when the store
// is full of writes in flight (503). Every claim that is not Done must be
// ended with Finish.
func (s *idempotencyStore) Begin(key, fingerprint, id string) (claim, error) {
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.expire(now)

	if el, ok := s.keys[key]; ok {
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
		return claim{ID: e.id, entry: e}, nil
	}

	e := &idemEntry{key: key, fingerprint: fingerprint, id: id, inFlight: true, expires: now.Add(s.TTL)}
	for s.order.Len() >= s.MaxKeys || s.MaxBytes > 0 && s.bytes+e.cost() > s.MaxBytes {
		if !s.evictOldestSettled() {
			return claim{}, errStoreFull
		}
	}
	s.keys[key] = s.order.PushBack(e)
	s.bytes += e.cost()
	return claim{ID: id, entry: e}, nil
}

// Finish ends claim c; ok reports whether its write succeeded. It touches
// only c's own entry: if the key was forgotten and claimed anew since, the
// new claim is not ended by the old one.
func (s *idempotencyStore) Finish(c claim, ok bool) {
	if c.entry == nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	c.entry.inFlight = false
	c.entry.done = c.entry.done || ok
}

// expire forgets the keys whose time is up, except those in flight, which
// go once they are finished and found expired. s.mu must be held.
func (s *idempotencyStore) expire(now time.Time) {
	for el := s.order.Front(); el != nil; {
		e := el.Value.(*idemEntry)
		if !now.After(e.expires) {
			return
		}
		next := el.Next()
		if !e.inFlight {
			s.remove(el)
		}
		el = next
	}
}

// evictOldestSettled forgets the oldest key not in flight, and reports
// whether there was one. s.mu must be held.
func (s *idempotencyStore) evictOldestSettled() bool {
	for el := s.order.Front(); el != nil; el = el.Next() {
		if !el.Value.(*idemEntry).inFlight {
			s.remove(el)
			return true
		}
	}
	return false
}

func (s *idempotencyStore) remove(el *list.Element) {
	e := el.Value.(*idemEntry)
	s.order.Remove(el)
	delete(s.keys, e.key)
	s.bytes -= e.cost()
}
