package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"
)

func TestEventCacheServesRepeatsRefreshesAndExpires(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		api := newFakeEventAPI(500 * time.Millisecond)
		api.addUser("u", 30)
		g := newTestGateway(t, api, nil) // EVENT_CACHE_TTL=60s
		eventIDs(t, g.get("/getEventsByUserId/u"))
		start := time.Now()
		if ids := eventIDs(t, g.get("/getEventsByUserId/u")); len(ids) != 30 {
			t.Fatalf("warm request: %d events; want 30", len(ids))
		}
		if took := time.Since(start); took != 0 {
			t.Errorf("warm request took %v; want no event round", took)
		}
		if n, _ := api.lookups(); n != 30 {
			t.Errorf("%d event lookups after a repeat; want 30, the repeat served from cache", n)
		}
		api.users["u"] = append(api.users["u"], "new") // the user lookup is never cached
		if ids := eventIDs(t, g.get("/getEventsByUserId/u")); len(ids) != 31 {
			t.Errorf("after the user gained an event: %d events; want 31", len(ids))
		}

		// Past the TTL the cached events are stale: served at once while
		// they are fetched again in the background.
		time.Sleep(61 * time.Second)
		start = time.Now()
		if ids := eventIDs(t, g.get("/getEventsByUserId/u")); len(ids) != 31 {
			t.Errorf("stale request: %d events; want 31", len(ids))
		}
		if took := time.Since(start); took != 0 {
			t.Errorf("stale request took %v; want no event round", took)
		}
		eventIDs(t, g.get("/getEventsByUserId/u")) // while the refresh runs: no second one
		time.Sleep(time.Second)
		synctest.Wait()
		if n, _ := api.lookups(); n != 31+31 {
			t.Errorf("%d event lookups after the TTL; want 62, all 31 refreshed once", n)
		}
		if text := g.get("/metrics").Body.String(); !strings.Contains(text, `eventgate_event_cache_lookups_total{result="stale"} 62`) {
			t.Errorf("/metrics does not count 62 stale lookups (two requests of 31):\n%s", text)
		}

		// Unasked for two TTLs, they are gone: the next request waits.
		time.Sleep(121 * time.Second)
		start = time.Now()
		eventIDs(t, g.get("/getEventsByUserId/u"))
		if took := time.Since(start); took != 500*time.Millisecond {
			t.Errorf("request after 2×TTL took %v; want one event round, 500ms", took)
		}
		if n, _ := api.lookups(); n != 31+31+31 {
			t.Errorf("%d event lookups after 2×TTL; want 93", n)
		}
	})
}

// TestStaleEventRefreshThatFails keeps serving the copy it has when the
// refresh meets an upstream fault, and drops it when the upstream says the
// event is gone.
func TestStaleEventRefreshThatFails(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		api := newFakeEventAPI(500 * time.Millisecond)
		api.users["u"] = []string{"broken", "deleted", "fine"}
		g := newTestGateway(t, api, nil) // EVENT_CACHE_TTL=60s
		eventIDs(t, g.get("/getEventsByUserId/u"))

		time.Sleep(61 * time.Second)
		api.mu.Lock()
		api.failing["broken"] = http.StatusInternalServerError
		api.failing["deleted"] = http.StatusNotFound
		api.mu.Unlock()
		if got := eventIDs(t, g.get("/getEventsByUserId/u")); fmt.Sprint(got) != "[broken deleted fine]" {
			t.Errorf("stale request = %v; want all three, served from the cache", got)
		}
		time.Sleep(time.Second) // the refreshes, and the retries of the broken one
		synctest.Wait()
		if got := eventIDs(t, g.get("/getEventsByUserId/u")); fmt.Sprint(got) != "[broken fine]" {
			t.Errorf("after the refresh = %v; want [broken fine]: the failed refresh keeps its copy, the deleted event is left out", got)
		}
	})
}

func TestEventCacheCanBeTurnedOffAndStillCoalesces(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		api := newFakeEventAPI(500 * time.Millisecond)
		api.addUser("u", 10)
		g := newTestGateway(t, api, func(c *config) { c.EventCacheTTL = 0 })
		var wg sync.WaitGroup
		for range 5 {
			wg.Go(func() { eventIDs(t, g.get("/getEventsByUserId/u")) })
		}
		wg.Wait()
		if n, _ := api.lookups(); n != 10 {
			t.Errorf("5 concurrent requests made %d lookups; want 10, coalesced", n)
		}
		eventIDs(t, g.get("/getEventsByUserId/u"))
		if n, _ := api.lookups(); n != 20 {
			t.Errorf("with the cache off, a later request made %d lookups in all; want 20", n)
		}
	})
}

// TestEventCacheIsBoundedInBytes fills a cache whose byte bound holds three
// 1 KB events: the fourth pushes out the least recently used, whatever the
// entry count allows, and an event larger than the whole cache is not kept.
func TestEventCacheIsBoundedInBytes(t *testing.T) {
	sizes := map[string]int{"a": 1000, "b": 1000, "c": 1000, "d": 1000, "huge": 10_000}
	fetch := func(_ context.Context, id string) (event, error) {
		js := make(json.RawMessage, 0, sizes[id]) // the capacity is what is counted
		return event{JSON: fmt.Appendf(js, "%q", strings.Repeat("x", sizes[id]-2))}, nil
	}
	c := newEventCache(cacheOptions{Metrics: newMetrics(), Fetch: fetch, TTL: time.Minute, MaxBytes: 3 * (1000 + 1 + entryOverhead)})
	defer c.Close()
	for _, id := range []string{"a", "b", "c", "a", "d"} { // "b" is least recently used when "d" arrives
		c.Get(t.Context(), id)
	}
	for id, want := range map[string]bool{"a": true, "b": false, "c": true, "d": true} {
		if _, ok := c.peek(t.Context(), id, time.Now()); ok != want {
			t.Errorf("%s cached: %v; want %v", id, ok, want)
		}
	}
	c.Get(t.Context(), "huge")
	if _, ok := c.peek(t.Context(), "huge", time.Now()); ok || entries(c) != 3 {
		t.Errorf("an event larger than the cache: kept %v, %d entries; want not kept, the 3 others untouched", ok, entries(c))
	}
	c.mu.Lock()
	bytes := c.bytes
	c.mu.Unlock()
	if bytes != 3*(1000+1+entryOverhead) {
		t.Errorf("cache counts %d bytes; want %d", bytes, 3*(1000+1+entryOverhead))
	}
}

// TestStaleRefreshesAreBounded: one request over many stale events starts
// no more background lookups than one request's fan-out may run; the rest
// are served stale and refreshed by later requests.
func TestStaleRefreshesAreBounded(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		api := newFakeEventAPI(500 * time.Millisecond)
		api.addUser("u", 30)
		g := newTestGateway(t, api, func(c *config) { c.FanoutLimit = 10 })
		eventIDs(t, g.get("/getEventsByUserId/u"))
		time.Sleep(61 * time.Second)

		for i, want := range []int{40, 50, 60, 60} {
			start := time.Now()
			if ids := eventIDs(t, g.get("/getEventsByUserId/u")); len(ids) != 30 {
				t.Fatalf("request %d: %d events; want 30", i, len(ids))
			}
			if took := time.Since(start); took != 0 {
				t.Errorf("request %d took %v; want no event round", i, took)
			}
			time.Sleep(time.Second)
			synctest.Wait()
			if n, _ := api.lookups(); n != want {
				t.Errorf("after request %d: %d lookups; want %d, 10 more stale events refreshed while any are left", i, n, want)
			}
		}
	})
}

// TestEventCacheCloseEndsItsRefreshes: a background refresh belongs to the
// cache, and Close cancels it and waits for it.
func TestEventCacheCloseEndsItsRefreshes(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var calls atomic.Int32
		var cancelled atomic.Bool
		fetch := func(ctx context.Context, id string) (event, error) {
			if calls.Add(1) == 1 {
				return event{JSON: json.RawMessage(`{}`)}, nil
			}
			<-ctx.Done() // an upstream that never answers the refresh
			cancelled.Store(true)
			return event{}, ctx.Err()
		}
		c := newEventCache(cacheOptions{MaxBytes: 1 << 30, Metrics: newMetrics(), Fetch: fetch, TTL: time.Minute, MaxRefreshes: 10})
		c.Get(t.Context(), "a")
		time.Sleep(61 * time.Second)
		if _, ok := c.peek(t.Context(), "a", time.Now()); !ok {
			t.Fatal("stale event not served")
		}
		synctest.Wait()
		if calls.Load() != 2 {
			t.Fatalf("%d fetches; want 2, the second a refresh", calls.Load())
		}
		c.Close()
		if !cancelled.Load() {
			t.Error("Close returned before the refresh ended")
		}

		// A request that outlives the shutdown is still answered, and
		// starts nothing in the background.
		if _, ok := c.peek(t.Context(), "a", time.Now()); !ok || calls.Load() != 2 {
			t.Errorf("after Close: stale event served %v, %d fetches; want served, no new refresh", ok, calls.Load())
		}
		ctx, cancel := context.WithCancel(t.Context())
		cancel()
		if _, err := c.Get(ctx, "b"); err == nil || calls.Load() != 3 {
			t.Errorf("after Close, Get(b) with its context ended = %v after %d fetches; want the caller's own fetch, cancelled", err, calls.Load())
		}
	})
}

// entries returns how many events c holds.
func entries(c *eventCache) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lru.Len()
}

// TestEventCacheFreshUntilExactlyTheTTL: an event exactly EVENT_CACHE_TTL
// old is still fresh (no refetch); a moment later it is stale and refetched.
func TestEventCacheFreshUntilExactlyTheTTL(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var fetches atomic.Int32
		fetch := func(context.Context, string) (event, error) {
			fetches.Add(1)
			return event{JSON: json.RawMessage(`{}`)}, nil
		}
		c := newEventCache(cacheOptions{MaxBytes: 1 << 30, Metrics: newMetrics(), Fetch: fetch, TTL: time.Minute, MaxRefreshes: 10})
		defer c.Close()
		c.Get(t.Context(), "a")
		time.Sleep(time.Minute)
		c.Get(t.Context(), "a")
		synctest.Wait()
		if n := fetches.Load(); n != 1 {
			t.Errorf("at exactly the TTL: %d fetches; want 1, the event still fresh", n)
		}
		time.Sleep(time.Millisecond)
		c.Get(t.Context(), "a")
		synctest.Wait()
		if n := fetches.Load(); n != 2 {
			t.Errorf("just past the TTL: %d fetches; want 2, a refresh", n)
		}
	})
}

// TestEventCacheNewcomerDoesNotJoinAnAbandonedLookup: once the last caller
// waiting for a lookup has left, that lookup is cancelled, and a caller
// arriving right after starts its own instead of inheriting the
// cancellation.
func TestEventCacheNewcomerDoesNotJoinAnAbandonedLookup(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var calls atomic.Int32
		fetch := func(ctx context.Context, id string) (event, error) {
			if calls.Add(1) == 1 {
				<-ctx.Done() // the first lookup hangs until it is abandoned
				return event{}, ctx.Err()
			}
			return event{JSON: json.RawMessage(`{}`)}, nil
		}
		c := newEventCache(cacheOptions{MaxBytes: 1 << 30, Metrics: newMetrics(), Fetch: fetch, TTL: time.Minute})
		defer c.Close()
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error)
		go func() { _, err := c.Get(ctx, "a"); done <- err }()
		synctest.Wait()
		cancel()
		<-done
		if _, err := c.Get(t.Context(), "a"); err != nil {
			t.Errorf("a caller right after the first left got %v; want its own lookup's event", err)
		}
	})
}

// TestForgetDropsWhatTheCacheKnows: an id the upstream answered 404 is
// remembered as missing, without a second lookup, until Forget (a write of
// that id through this instance); then it is looked up again.
func TestForgetDropsWhatTheCacheKnows(t *testing.T) {
	var fetches atomic.Int32
	c := newEventCache(cacheOptions{MaxBytes: 1 << 30, Metrics: newMetrics(), TTL: time.Minute, MaxRefreshes: 1,
		Fetch: func(context.Context, string) (event, error) {
			fetches.Add(1)
			return event{}, &upstreamError{Op: "getEventById", Kind: failNotFound}
		}})
	defer c.Close()
	for range 3 {
		if _, err := c.Get(t.Context(), "x"); !isNotFound(err) {
			t.Fatalf("Get = %v; want not found", err)
		}
	}
	c.Forget("x")
	c.Get(t.Context(), "x")
	if n := fetches.Load(); n != 2 {
		t.Errorf("%d lookups; want 2: once, and once more after Forget", n)
	}
}

// TestALookupThatFailsBadlyFailsOnlyItsWaiters: a lookup that panics, or
// calls runtime.Goexit, is an error for everyone waiting for it, who are
// all answered; the process goes on, and the next lookup of the id runs.
func TestALookupThatFailsBadlyFailsOnlyItsWaiters(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var calls atomic.Int32
		release := make(chan struct{})
		c := newEventCache(cacheOptions{MaxBytes: 1 << 30, Metrics: newMetrics(), TTL: time.Minute, MaxRefreshes: 1,
			Fetch: func(_ context.Context, id string) (event, error) {
				calls.Add(1)
				<-release
				switch id {
				case "panics":
					panic("on purpose")
				case "exits":
					runtime.Goexit()
				}
				return event{JSON: json.RawMessage(`{}`)}, nil
			}})
		defer c.Close()
		for _, id := range []string{"panics", "exits"} {
			errs := make(chan error, 3)
			for range 3 {
				go func() {
					_, err := c.Get(t.Context(), id)
					errs <- err
				}()
			}
			synctest.Wait()
			release <- struct{}{}
			for range 3 {
				if err := <-errs; err == nil {
					t.Errorf("a waiter of the lookup that %s got no error", id)
				}
			}
		}
		close(release)
		if _, err := c.Get(t.Context(), "panics"); err == nil {
			t.Error("the next lookup of the id did not run: still answered from the failed one")
		}
		if n := calls.Load(); n != 3 {
			t.Errorf("%d lookups; want 3: one per flight", n)
		}
	})
}
