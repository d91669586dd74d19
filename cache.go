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
// An event the upstream says does not exist is remembered as missing for
// missingTTL (at most TTL), so a user listing thousands of missing ids costs
// the upstream one lookup per id per missingTTL; a write through this
// instance forgets the id it stored (Forget).
//
// It is bounded in bytes (MaxBytes, which counts entryOverhead per entry,
// so it bounds their number too): past it, the least recently used events
// are dropped. Lookups go through one
// flightGroup, so concurrent lookups of one id are one upstream call, even
// with the TTL at 0 (caching off), and a lookup that was sent finishes and
// is kept even when every caller waiting for it has left, while one not yet
// sent when its last caller leaves is never sent: asking and hanging up
// costs the upstream nothing that a later request does not use.
type eventCache struct {
	cacheOptions
	refreshSlots chan struct{} // one per background refresh running
	lookups      *flightGroup[string, event]

	mu    sync.Mutex               // protects the fields below
	items map[string]*list.Element // id → element of lru holding a *cacheEntry
	lru   *list.List               // most recently used first
	bytes int64                    // the cost of the entries in lru
}

type cacheEntry struct {
	id      string
	ev      event
	missing bool // the upstream said there is no such event
	fetched time.Time
}

// missingTTL is how long an event the upstream answered 404 is remembered
// as missing: long enough that a user listing 10,000 missing ids costs at
// most 10,000 lookups per 10 s however often it is asked for, short enough
// that an event stored through another instance shows up soon.
const missingTTL = 10 * time.Second

// cost counts the JSON's capacity, not its length: the whole buffer is held.
func (e *cacheEntry) cost() int64 {
	return int64(len(e.id) + cap(e.ev.JSON) + len(e.ev.UserID) + entryOverhead)
}

// cacheOptions configure an eventCache.
type cacheOptions struct {
	Fetch        func(context.Context, string) (event, error) // looks an event up
	TTL          time.Duration                                // how long an event is fresh; 0: cache nothing
	MaxBytes     int64                                        // bytes cached at most (ids and JSON, plus entryOverhead each)
	MaxRefreshes int                                          // stale events refetched at once at most
	Metrics      *metrics
}

func newEventCache(o cacheOptions) *eventCache {
	return &eventCache{
		cacheOptions: o,
		refreshSlots: make(chan struct{}, max(o.MaxRefreshes, 1)),
		lookups:      newFlightGroup[string, event](leftCall("getEventById")),
		items:        map[string]*list.Element{},
		lru:          list.New(),
	}
}

// peek returns the cached event id, if it is there, fresh or stale, and
// counts it; a miss is counted by the Get that follows it. A stale event
// starts its refresh. An event known to be missing is found, with no JSON.
func (c *eventCache) peek(ctx context.Context, id string, now time.Time) (event, bool) {
	c.mu.Lock()
	ev, result := c.lookup(ctx, id, now)
	c.mu.Unlock()
	if result == "" {
		return event{}, false
	}
	c.Metrics.count(c.Metrics.cache, labels{result})
	return ev, true
}

// lookup is peek with c.mu held, and without counting. Its result is "hit"
// for a fresh event, "stale" for a stale one, "missing" for one known not
// to exist, "" if there is none.
func (c *eventCache) lookup(ctx context.Context, id string, now time.Time) (ev event, result string) {
	el, ok := c.items[id]
	if !ok {
		return event{}, ""
	}
	e := el.Value.(*cacheEntry)
	c.lru.MoveToFront(el)
	switch age := now.Sub(e.fetched); {
	case e.missing && age <= min(missingTTL, c.TTL):
		return event{}, "missing"
	case e.missing:
	case age <= c.TTL:
		return e.ev, "hit"
	case age <= 2*c.TTL:
		c.startRefresh(ctx, id)
		return e.ev, "stale"
	}
	c.remove(id)
	return event{}, ""
}

// Get returns event id from the cache, or fetches it; an event known to be
// missing is a failNotFound error at once. Concurrent callers for the same
// id share one fetch (the flightGroup), which each can leave when its own
// ctx ends.
func (c *eventCache) Get(ctx context.Context, id string) (event, error) {
	c.mu.Lock()
	ev, result := c.lookup(ctx, id, time.Now())
	c.mu.Unlock()
	switch result {
	case "missing":
		c.Metrics.count(c.Metrics.cache, labels{result})
		return event{}, &upstreamError{Op: "getEventById", Kind: failNotFound}
	case "hit", "stale":
		c.Metrics.count(c.Metrics.cache, labels{result})
		return ev, nil
	}
	ev, err, joined := c.lookups.Do(ctx, id, c.fetch)
	result = "miss"
	if joined {
		result = "coalesced"
	}
	c.Metrics.count(c.Metrics.cache, labels{result})
	return ev, err
}

// fetch looks id up and keeps what it learns, before any waiter sees it: a
// fetch that finds the event gone remembers it as missing; one that fails
// otherwise leaves a stale copy to be served until it is 2×TTL old.
func (c *eventCache) fetch(ctx context.Context, id string) (event, error) {
	ev, err := c.Fetch(ctx, id)
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case err == nil:
		c.store(&cacheEntry{id: id, ev: ev, fetched: time.Now()})
	case isNotFound(err):
		c.store(&cacheEntry{id: id, missing: true, fetched: time.Now()})
	}
	return ev, err
}

// Forget drops what the cache holds for id: an event just stored through
// this instance may be remembered as missing.
func (c *eventCache) Forget(id string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.remove(id)
}

// startRefresh fetches id again in the background, unless that is under way
// or as many refreshes as allowed are.
func (c *eventCache) startRefresh(ctx context.Context, id string) {
	select {
	case c.refreshSlots <- struct{}{}:
	default:
		return
	}
	if !c.lookups.Start(ctx, id, c.refresh) {
		<-c.refreshSlots
	}
}

// refresh is fetch for startRefresh: it gives its slot back.
func (c *eventCache) refresh(ctx context.Context, id string) (event, error) {
	defer func() { <-c.refreshSlots }()
	return c.fetch(ctx, id)
}

// Close cancels the lookups in flight and returns when their goroutines
// have ended. Afterwards the cache starts none: a Get looks up on its
// caller's goroutine, and stale events are not refreshed.
func (c *eventCache) Close() { c.lookups.Close() }

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

// store caches e, then drops the least recently used entries while the
// cache is over its bound. c.mu must be held.
func (c *eventCache) store(e *cacheEntry) {
	if c.TTL <= 0 {
		return
	}
	c.remove(e.id)
	if e.cost() > c.MaxBytes {
		return // larger than the whole cache: it would only empty it
	}
	c.items[e.id] = c.lru.PushFront(e)
	c.bytes += e.cost()
	for c.bytes > c.MaxBytes {
		c.drop(c.lru.Back())
	}
}
