package main

import (
	"container/list"
	"context"
	"sync"
	"time"
)

// eventCache holds events by id, in memory, for a while. Events are
// immutable in this API (it has no update or delete), so a cached event is
// never wrong, only possibly deleted by some future API; the TTL bounds that.
//
// An event is fresh for TTL after it was fetched. For another TTL after that
// it is stale: still served at once, while one lookup in the background
// fetches it again. So a popular event never makes a request wait for the
// upstream when it expires; one nobody asked for in 2×TTL is fetched anew.
// At most MaxRefreshes such lookups run at once (the gateway allows as many
// as one request's fan-out): past that a stale event is served without one,
// and a later lookup refreshes it.
//
// It is bounded in entries (Size) and in bytes (MaxBytes): past either, the
// least recently used events are dropped. It also coalesces concurrent lookups of one id into one upstream call, even
// with the TTL at 0 (caching off).
type eventCache struct {
	cacheOptions
	refreshSlots chan struct{}  // one per background refresh running
	running      sync.WaitGroup // flight goroutines, waited for by Close

	mu      sync.Mutex               // protects the fields below
	items   map[string]*list.Element // id → element of lru holding a *cacheEntry
	lru     *list.List               // most recently used first
	bytes   int64                    // the cost of the entries in lru
	flights map[string]*flight       // lookups in progress
	closed  bool                     // set by Close: no more goroutines
}

type cacheEntry struct {
	id      string
	ev      event
	fetched time.Time
}

// entryOverhead is what one entry costs besides its id and JSON: the list
// element, the map slot and the entry itself, rounded up.
const entryOverhead = 256

func (e *cacheEntry) cost() int64 {
	return int64(len(e.id) + len(e.ev.JSON) + len(e.ev.UserID) + entryOverhead)
}

// flight is one upstream lookup that any number of callers wait for.
type flight struct {
	done    chan struct{} // closed when ev and err are set
	ev      event
	err     error
	waiters int                // callers still waiting; guarded by eventCache.mu
	refresh bool               // holds a refresh slot; guarded by eventCache.mu
	cancel  context.CancelFunc // ends the lookup when the last waiter leaves
}

// cacheOptions configure an eventCache.
type cacheOptions struct {
	Fetch        func(context.Context, string) (event, error) // looks an event up
	TTL          time.Duration                                // how long an event is fresh; 0: cache nothing
	Size         int                                          // events cached at most
	MaxBytes     int64                                        // bytes cached at most (ids and JSON, plus entryOverhead each); 0: no bound
	MaxRefreshes int                                          // stale events refetched at once at most
	Metrics      *metrics                                     // may be nil
}

func newEventCache(o cacheOptions) *eventCache {
	return &eventCache{
		cacheOptions: o,
		refreshSlots: make(chan struct{}, max(o.MaxRefreshes, 1)),
		items:        map[string]*list.Element{},
		lru:          list.New(),
		flights:      map[string]*flight{},
	}
}

// peek returns the cached event id, if it is there, fresh or stale, and
// counts it; a miss is counted by the Get that follows it. A stale event
// starts its refresh.
func (c *eventCache) peek(ctx context.Context, id string, now time.Time) (event, bool) {
	c.mu.Lock()
	ev, result := c.lookup(ctx, id, now)
	c.mu.Unlock()
	if result == "" {
		return event{}, false
	}
	c.Metrics.cacheLookup(result)
	return ev, true
}

// lookup is peek with c.mu held, and without counting. Its result is "hit"
// for a fresh event, "stale" for a stale one, "" if there is none.
func (c *eventCache) lookup(ctx context.Context, id string, now time.Time) (ev event, result string) {
	el, ok := c.items[id]
	if !ok {
		return event{}, ""
	}
	e := el.Value.(*cacheEntry)
	c.lru.MoveToFront(el)
	switch age := now.Sub(e.fetched); {
	case age <= c.TTL:
		return e.ev, "hit"
	case age <= 2*c.TTL:
		c.startRefresh(ctx, id)
		return e.ev, "stale"
	}
	c.remove(id)
	return event{}, ""
}

// Get returns event id from the cache, or fetches it. Concurrent callers
// for the same id share one fetch, which runs on its own goroutine so that
// each caller can leave when its own ctx ends; the fetch is cancelled when
// its last caller leaves, and ends by itself otherwise.
func (c *eventCache) Get(ctx context.Context, id string) (event, error) {
	c.mu.Lock()
	if ev, result := c.lookup(ctx, id, time.Now()); result != "" {
		c.mu.Unlock()
		c.Metrics.cacheLookup(result)
		return ev, nil
	}
	if c.closed {
		// A request outliving the shutdown: look up on its own goroutine.
		c.mu.Unlock()
		return c.Fetch(ctx, id)
	}
	f, joined := c.flights[id]
	if !joined {
		f = c.startFlight(ctx, id)
	}
	f.waiters++
	c.mu.Unlock()
	if joined {
		c.Metrics.cacheLookup("coalesced")
	} else {
		c.Metrics.cacheLookup("miss")
	}

	select {
	case <-f.done:
		return f.ev, f.err
	case <-ctx.Done():
		c.mu.Lock()
		f.waiters--
		if f.waiters == 0 {
			f.cancel()
			if c.flights[id] == f {
				delete(c.flights, id) // a newcomer must not join a cancelled lookup
			}
		}
		c.mu.Unlock()
		return event{}, contextError(ctx, "getEventById", ctx.Err())
	}
}

// startRefresh fetches id again in the background, unless that is under way
// or as many refreshes as allowed are. c.mu must be held.
func (c *eventCache) startRefresh(ctx context.Context, id string) {
	if _, inFlight := c.flights[id]; inFlight || c.closed {
		return
	}
	select {
	case c.refreshSlots <- struct{}{}:
	default:
		return
	}
	c.startFlight(ctx, id).refresh = true
}

// startFlight starts fetching id, with no waiter yet. c.mu must be held.
func (c *eventCache) startFlight(ctx context.Context, id string) *flight {
	// Detached from this caller's cancellation (another caller may still
	// want the answer, and a refresh has no caller), but keeping its
	// values: the request id.
	fctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	f := &flight{done: make(chan struct{}), cancel: cancel}
	c.flights[id] = f
	c.running.Go(func() { c.run(fctx, f, id) })
	return f
}

// run performs one flight's fetch and publishes its result. A fetch that
// finds the event gone drops a stale copy; one that fails otherwise leaves
// it to be served until it is 2×TTL old.
func (c *eventCache) run(ctx context.Context, f *flight, id string) {
	defer f.cancel()
	ev, err := c.Fetch(ctx, id)
	c.mu.Lock()
	if c.flights[id] == f {
		delete(c.flights, id)
	}
	if f.refresh {
		<-c.refreshSlots
	}
	switch {
	case err == nil:
		c.store(id, ev, time.Now())
	case isNotFound(err):
		c.remove(id)
	}
	f.ev, f.err = ev, err
	c.mu.Unlock()
	close(f.done)
}

// Close cancels the lookups in flight and returns when their goroutines
// have ended. Afterwards the cache starts none: a Get looks up on its
// caller's goroutine, and stale events are not refreshed.
func (c *eventCache) Close() {
	c.mu.Lock()
	c.closed = true
	for _, f := range c.flights {
		f.cancel()
	}
	c.mu.Unlock()
	c.running.Wait()
}

// remove drops id from the cache. c.mu must be held.
func (c *eventCache) remove(id string) {
	if el, ok := c.items[id]; ok {
		c.drop(el)
	}
}

// drop removes one entry. c.mu must be held.
func (c *eventCache) drop(el *list.Element) {
	e := el.Value.(*cacheEntry)
	c.lru.Remove(el)
	delete(c.items, e.id)
	c.bytes -= e.cost()
}

// store caches ev under id, then drops the least recently used entries
// while the cache is over either bound. c.mu must be held.
func (c *eventCache) store(id string, ev event, now time.Time) {
	if c.TTL <= 0 {
		return
	}
	c.remove(id)
	e := &cacheEntry{id: id, ev: ev, fetched: now}
	if c.MaxBytes > 0 && e.cost() > c.MaxBytes {
		return // larger than the whole cache: it would only empty it
	}
	c.items[id] = c.lru.PushFront(e)
	c.bytes += e.cost()
	for c.lru.Len() > c.Size || c.MaxBytes > 0 && c.bytes > c.MaxBytes {
		c.drop(c.lru.Back())
	}
}

// Len returns how many events are cached, fresh or not yet swept, and
// what they cost in bytes.
func (c *eventCache) Len() (entries int, bytes int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lru.Len(), c.bytes
}
