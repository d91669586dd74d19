package main

import (
	"container/list"
	"context"
	"encoding/json"
	"sync"
	"time"
)

// eventCache holds events by id, in memory, for a while. Events are
// immutable in this API (it has no update or delete), so a cached event is
// never wrong, only possibly deleted by some future API; the TTL bounds that.
//
// It is bounded: past size entries, the least recently used is dropped. It
// also coalesces concurrent lookups of one id into one upstream call, even
// with the TTL at 0 (caching off).
type eventCache struct {
	ttl     time.Duration // 0: cache nothing
	size    int
	metrics *metrics

	mu      sync.Mutex               // protects the fields below
	items   map[string]*list.Element // id → element of lru holding a *cacheEntry
	lru     *list.List               // most recently used first
	flights map[string]*flight       // lookups in progress
}

type cacheEntry struct {
	id      string
	body    json.RawMessage
	expires time.Time
}

// flight is one upstream lookup that any number of callers wait for.
type flight struct {
	done    chan struct{} // closed when body and err are set
	body    json.RawMessage
	err     error
	waiters int                // callers still waiting; guarded by eventCache.mu
	cancel  context.CancelFunc // ends the lookup when the last waiter leaves
}

func newEventCache(size int, ttl time.Duration, m *metrics) *eventCache {
	return &eventCache{
		ttl:     ttl,
		size:    size,
		metrics: m,
		items:   map[string]*list.Element{},
		lru:     list.New(),
		flights: map[string]*flight{},
	}
}

// peek returns the cached event id, if it is there and fresh, and counts a
// hit; a miss is counted by the Get that follows it.
func (c *eventCache) peek(id string, now time.Time) (json.RawMessage, bool) {
	c.mu.Lock()
	body, ok := c.lookup(id, now)
	c.mu.Unlock()
	if ok {
		c.metrics.cacheLookup("hit")
	}
	return body, ok
}

// lookup is peek with c.mu held.
func (c *eventCache) lookup(id string, now time.Time) (json.RawMessage, bool) {
	el, ok := c.items[id]
	if !ok {
		return nil, false
	}
	e := el.Value.(*cacheEntry)
	if now.After(e.expires) {
		c.lru.Remove(el)
		delete(c.items, id)
		return nil, false
	}
	c.lru.MoveToFront(el)
	return e.body, true
}

// Get returns event id from the cache, or calls fetch for it. Concurrent
// callers for the same id share one fetch, which runs on its own goroutine
// so that each caller can leave when its own ctx ends; the fetch is
// cancelled when its last caller leaves, and ends by itself otherwise.
func (c *eventCache) Get(ctx context.Context, id string, fetch func(context.Context, string) (json.RawMessage, error)) (json.RawMessage, error) {
	c.mu.Lock()
	if body, ok := c.lookup(id, time.Now()); ok {
		c.mu.Unlock()
		c.metrics.cacheLookup("hit")
		return body, nil
	}
	f, joined := c.flights[id]
	if !joined {
		// Detached from this caller's cancellation (another caller may
		// still want the answer), but keeping its values: the request id.
		fctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		f = &flight{done: make(chan struct{}), cancel: cancel}
		c.flights[id] = f
		go c.run(fctx, f, id, fetch)
	}
	f.waiters++
	c.mu.Unlock()
	if joined {
		c.metrics.cacheLookup("coalesced")
	} else {
		c.metrics.cacheLookup("miss")
	}

	select {
	case <-f.done:
		return f.body, f.err
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
		return nil, contextError(ctx, "getEventById", ctx.Err())
	}
}

// run performs one flight's fetch and publishes its result.
func (c *eventCache) run(ctx context.Context, f *flight, id string, fetch func(context.Context, string) (json.RawMessage, error)) {
	defer f.cancel()
	body, err := fetch(ctx, id)
	c.mu.Lock()
	if c.flights[id] == f {
		delete(c.flights, id)
	}
	if err == nil {
		c.store(id, body, time.Now())
	}
	f.body, f.err = body, err
	c.mu.Unlock()
	close(f.done)
}

// store caches body under id, dropping the least recently used entry if the
// cache is full. c.mu must be held.
func (c *eventCache) store(id string, body json.RawMessage, now time.Time) {
	if c.ttl <= 0 {
		return
	}
	if el, ok := c.items[id]; ok {
		el.Value.(*cacheEntry).expires = now.Add(c.ttl)
		c.lru.MoveToFront(el)
		return
	}
	c.items[id] = c.lru.PushFront(&cacheEntry{id: id, body: body, expires: now.Add(c.ttl)})
	if c.lru.Len() > c.size {
		oldest := c.lru.Back()
		c.lru.Remove(oldest)
		delete(c.items, oldest.Value.(*cacheEntry).id)
	}
}

// Len returns how many events are cached, fresh or not yet swept.
func (c *eventCache) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lru.Len()
}
