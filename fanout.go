package main

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// eventLoader fetches the events of one user at once: from the cache where
// it can, otherwise from the upstream in parallel, at most Limit lookups in
// flight for one request (the upstream client bounds the whole process).
type eventLoader struct {
	loaderOptions
}

// loaderOptions configure an eventLoader.
type loaderOptions struct {
	Cache    *eventCache
	Limit    int      // lookups in flight for one Load, FANOUT_LIMIT
	MaxBytes int64    // the events of one answer, in bytes, MAX_RESPONSE_BYTES; 0: no bound
	Metrics  *metrics // may be nil
}

func newEventLoader(o loaderOptions) *eventLoader { return &eventLoader{o} }

// Load returns the JSON of the events with the given ids, those of user
// userID, in the order of ids. An id listed twice is fetched and answered
// once, at its first place. Events the upstream says do not exist, and
// events of another user, are left out and logged.
//
// Any other failure, or events adding up to more than MaxBytes, fails the
// whole load at once and cancels the lookups still in flight; Load returns
// only after every goroutine it started has ended.
func (l *eventLoader) Load(ctx context.Context, userID string, ids []string) ([]json.RawMessage, error) {
	found := make(map[string]event, len(ids))
	var order, missing []string // distinct ids; those not in the cache
	answer := answerBudget{max: l.MaxBytes}
	now := time.Now()
	for _, id := range ids {
		if _, seen := found[id]; seen {
			continue
		}
		order = append(order, id)
		ev, ok := l.Cache.peek(ctx, id, now)
		found[id] = ev // zero until fetched; marks the id as seen
		if !ok {
			missing = append(missing, id)
		} else if err := answer.add(ev, userID); err != nil {
			return nil, err
		}
	}
	if len(missing) > 0 {
		fetched, err := l.fetchAll(ctx, userID, missing, &answer)
		if err != nil {
			return nil, err
		}
		for i, id := range missing {
			found[id] = fetched[i]
		}
	}

	out := make([]json.RawMessage, 0, len(order))
	for _, id := range order {
		switch ev := found[id]; {
		case ev.JSON == nil: // gone upstream: logged by fetchAll
		case ev.UserID != userID:
			l.Metrics.foreignEventWithheld()
			loggerFrom(ctx).WarnContext(ctx, "user lists an event of another user; left out",
				"user_id", userID, "event_id", id, "owner", fmt.Sprintf("%.64s", ev.UserID))
		default:
			out = append(out, ev.JSON)
		}
	}
	return out, nil
}

// answerBudget adds up the bytes of the events an answer will hold.
type answerBudget struct {
	max   int64 // 0: no bound
	bytes atomic.Int64
}

// add counts ev if it will be in the answer for userID, and fails once the
// answer is over the bound.
func (a *answerBudget) add(ev event, userID string) error {
	if a.max <= 0 || ev.UserID != userID {
		return nil
	}
	if a.bytes.Add(int64(len(ev.JSON))+1) > a.max {
		return &upstreamError{Op: "getEventById", Kind: failTooLarge,
			Err: fmt.Errorf("events of user %q add up to more than %d bytes", userID, a.max),
			Message: fmt.Sprintf("the events of user %q add up to more than %s, more than this gateway answers at once (MAX_RESPONSE_BYTES)",
				userID, formatBytes(a.max))}
	}
	return nil
}

// fetchAll fetches ids (distinct) with at most l.Limit in flight: a fixed
// pool of workers takes the next index until none is left. A zero result
// is an event the upstream does not have.
func (l *eventLoader) fetchAll(ctx context.Context, userID string, ids []string, answer *answerBudget) ([]event, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	results := make([]event, len(ids))
	var (
		next     atomic.Int64
		wg       sync.WaitGroup
		errOnce  sync.Once
		firstErr error
	)
	fail := func(err error) { errOnce.Do(func() { firstErr = err; cancel() }) }
	for range min(l.Limit, len(ids)) {
		wg.Go(func() {
			for ctx.Err() == nil {
				i := int(next.Add(1) - 1)
				if i >= len(ids) {
					return
				}
				ev, err := l.Cache.Get(ctx, ids[i])
				if err == nil {
					err = answer.add(ev, userID)
				}
				switch {
				case isNotFound(err):
					loggerFrom(ctx).WarnContext(ctx, "user lists an event the upstream does not have", "event_id", ids[i])
				case err != nil:
					fail(err)
					return
				default:
					results[i] = ev
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
