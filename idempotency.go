package main

import (
	"container/list"
	"errors"
	"sync"
	"time"
)

// idempotencyStore remembers the Idempotency-Keys of POST /addEvent in this
// process: the fast path in front of the derived ids of eventid.go. Each
// key is bound, on first use, to the event id derived from it and the
// request's content. A retry with the same key and content resends the same
// id, or, once the write succeeded, is answered from memory without calling
// the upstream; a key still in use is refused (409), and so is one seen with
// other content (422).
//
// Only writes that were sent upstream are remembered. A claim whose write
// was refused before it left (breaker open, gateway busy) is removed, not
// settled: such a write leaves no trace, and, since keys are made room for
// only when a write is settled, it forgets no other key.
//
// Keys are remembered for TTL, within MaxBytes (each key costs its bytes and
// entryOverhead): past it the oldest settled key is forgotten. A write in
// flight is never forgotten: were it, its retry could not be refused while
// it runs. Writes in flight may hold MaxBytes too; past that a new key is
// refused with a 503 that says to come back in a second.
type idempotencyStore struct {
	storeOptions

	mu       sync.Mutex               // protects the fields below
	keys     map[string]*list.Element // key → element of order holding an *idemEntry
	order    *list.List               // oldest first; with one TTL, also soonest to expire
	settled  int64                    // the cost of the entries not in flight
	inFlight int64                    // the cost of the entries in flight
}

// storeOptions configure an idempotencyStore.
type storeOptions struct {
	TTL      time.Duration // how long a key is remembered
	MaxBytes int64         // bytes remembered at most, settled and in flight each (keys, ids, plus entryOverhead each)
}

type idemEntry struct {
	key      string
	id       string // the event id bound to the key: derived from it and the content
	inFlight bool   // a request with this key is running
	done     bool   // the write succeeded
	expires  time.Time
}

func (e *idemEntry) cost() int64 {
	return int64(len(e.key) + len(e.id) + entryOverhead)
}

// claim is what Begin grants: the event id to use, and whether the write is
// already done (answer at once) or must be sent. It holds its entry, so
// that Finish ends this claim and no later one for the same key.
type claim struct {
	ID    string
	Done  bool
	entry *idemEntry
	fresh bool // the entry was made by this claim
}

// writeResult is how a claimed write ended, for Finish.
type writeResult int

const (
	writeUnsent writeResult = iota // refused before it left: no trace is kept
	writeFailed                    // sent, and not confirmed: it may be stored
	writeStored                    // sent and confirmed
)

// Begin's refusals; respond.go says what a client is told of each.
var (
	errKeyInUse  = errors.New("a request with this Idempotency-Key is in progress")
	errKeyReused = errors.New("Idempotency-Key used with another body")
	errStoreFull = errors.New("the writes in flight with an Idempotency-Key fill the key memory")
)

func newIdempotencyStore(o storeOptions) *idempotencyStore {
	return &idempotencyStore{storeOptions: o, keys: map[string]*list.Element{}, order: list.New()}
}

// Begin claims key for a write whose derived event id is id. It refuses a
// key in use by a request still running (409), a key bound to another id,
// that is another content (422), and a new key while writes in flight fill
// MaxBytes (503). It forgets no other key. Every claim that is not Done must
// be ended with Finish.
func (s *idempotencyStore) Begin(key, id string) (claim, error) {
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.expire(now)

	if el, ok := s.keys[key]; ok {
		e := el.Value.(*idemEntry)
		switch {
		case e.id != id:
			return claim{}, errKeyReused
		case e.done:
			return claim{ID: e.id, Done: true}, nil
		case e.inFlight:
			return claim{}, errKeyInUse
		}
		s.setInFlight(e, true)
		return claim{ID: e.id, entry: e}, nil
	}
	e := &idemEntry{key: key, id: id, inFlight: true, expires: now.Add(s.TTL)}
	if s.inFlight+e.cost() > s.MaxBytes {
		return claim{}, errStoreFull
	}
	s.keys[key] = s.order.PushBack(e)
	s.inFlight += e.cost()
	return claim{ID: id, entry: e, fresh: true}, nil
}

// Finish ends claim c with the result of its write. It touches only c's own
// entry: if the key was forgotten and claimed anew since, the new claim is
// not ended by the old one. An unsent write's fresh entry is removed; a
// sent one's is settled, and the oldest settled keys are forgotten while
// the store is over its bounds.
func (s *idempotencyStore) Finish(c claim, r writeResult) {
	e := c.entry
	if e == nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if !e.inFlight {
		return // ended already
	}
	if r == writeUnsent && c.fresh {
		s.remove(s.keys[e.key]) // in flight, so neither expired nor evicted
		return
	}
	s.setInFlight(e, false)
	e.done = r == writeStored
	for s.settled > s.MaxBytes {
		s.evictOldestSettled()
	}
}

// setInFlight moves e, which is held, between in flight and settled. s.mu
// must be held.
func (s *idempotencyStore) setInFlight(e *idemEntry, on bool) {
	e.inFlight = on
	d := e.cost()
	if !on {
		d = -d
	}
	s.inFlight += d
	s.settled -= d
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

// evictOldestSettled forgets the oldest key not in flight. s.mu must be held.
func (s *idempotencyStore) evictOldestSettled() {
	for el := s.order.Front(); el != nil; el = el.Next() {
		if !el.Value.(*idemEntry).inFlight {
			s.remove(el)
			return
		}
	}
}

// remove forgets one entry, settled or in flight. s.mu must be held.
func (s *idempotencyStore) remove(el *list.Element) {
	e := el.Value.(*idemEntry)
	s.order.Remove(el)
	delete(s.keys, e.key)
	if e.inFlight {
		s.inFlight -= e.cost()
		e.inFlight = false
	} else {
		s.settled -= e.cost()
	}
}
