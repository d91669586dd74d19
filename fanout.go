package main

import (
	"context"
	"encoding/json"
	"sync"
	"sync/atomic"
	"time"
)

// eventLoader fetches many events by id at once: from the cache where it
// can, otherwise from the upstream in parallel, at most limit lookups in
// flight for one request (the upstream client bounds the whole process).
type eventLoader struct {
	up    *upstream
	limit int
	cache *eventCache
}

func newEventLoader(up *upstream, limit int, cache *eventCache) *eventLoader {
	return &eventLoader{up: up, limit: limit, cache: cache}
}

// Load returns the events with the given ids, in the order of ids. An id
// listed twice is fetched once and appears twice. An event the upstream says
// does not exist is left out and logged. Any other failure fails the whole
// load at once and cancels the lookups still in flight; Load returns only
// after every goroutine it started has ended.
func (l *eventLoader) Load(ctx context.Context, ids []string) ([]json.RawMessage, error) {
	found := make(map[string]json.RawMessage, len(ids))
	var missing []string
	now := time.Now()
	for _, id := range ids {
		if _, seen := found[id]; seen {
			continue
		}
		body, ok := l.cache.peek(ctx, id, now)
		found[id] = body // nil until fetched; marks the id as seen
		if !ok {
			missing = append(missing, id)
		}
	}
	if len(missing) > 0 {
		fetched, err := l.fetchAll(ctx, missing)
		if err != nil {
			return nil, err
		}
		for i, id := range missing {
			found[id] = fetched[i]
		}
	}

	out := make([]json.RawMessage, 0, len(ids))
	for _, id := range ids {
		if body := found[id]; body != nil {
			out = append(out, body)
		}
	}
	return out, nil
}

// fetchAll fetches ids (distinct) with at most l.limit in flight: a fixed
// pool of workers takes the next index until none is left. A nil result is
// an event the upstream does not have.
func (l *eventLoader) fetchAll(ctx context.Context, ids []string) ([]json.RawMessage, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	results := make([]json.RawMessage, len(ids))
	var (
		next     atomic.Int64
		wg       sync.WaitGroup
		errOnce  sync.Once
		firstErr error
	)
	for range min(l.limit, len(ids)) {
		wg.Go(func() {
			for ctx.Err() == nil {
				i := int(next.Add(1) - 1)
				if i >= len(ids) {
					return
				}
				body, err := l.cache.Get(ctx, ids[i])
				switch {
				case isNotFound(err):
					loggerFrom(ctx).WarnContext(ctx, "user lists an event the upstream does not have", "event_id", ids[i])
				case err != nil:
					errOnce.Do(func() { firstErr = err; cancel() })
					return
				default:
					results[i] = body
				}
			}
		})
	}
	wg.Wait()
	if firstErr != nil {
		return nil, firstErr
	}
	if err := ctx.Err(); err != nil {
		// Cancelled from outside: the client left or the deadline passed.
		return nil, contextError(ctx, "getEventById", err)
	}
	return results, nil
}
