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
	Limit    int   // lookups in flight for one Load: 5/8 of UPSTREAM_MAX_INFLIGHT
	MaxBytes int64 // the events one answer holds, in bytes: an eighth of MEMORY_BUDGET
	Metrics  *metrics
}

func newEventLoader(o loaderOptions) *eventLoader { return &eventLoader{o} }

// Load returns the JSON of the events with the given ids, those of user
// userID, in the order of ids. An id listed twice is fetched and answered
// once, at its first place. Events the upstream says do not exist, and
// events of another user, are left out, and logged in one line per load.
//
// Before any lookup, the most the answer can take is reserved in held (the
// request's share of the memory budget): the cached events' bytes, the
// largest event the upstream may send for each of the others, at most
// MaxBytes, and the ids; a request that cannot get it in time is the
// gateway's own overload. Events in the answer that are also in the cache
// are counted in both. Any other failure, or events adding up to more than
// MaxBytes, fails the whole load at once and stops the lookups not yet
// sent; Load returns only after every goroutine it started has ended.
func (l *eventLoader) Load(ctx context.Context, userID string, ids []string, held *memoryAccount) ([]json.RawMessage, error) {
	found := make(map[string]json.RawMessage, len(ids))
	var order, missing []string // distinct ids; those not in the cache
	var left leftOut
	answer := answerBudget{max: l.MaxBytes}
	now := time.Now()
	for _, id := range ids {
		if _, seen := found[id]; seen {
			continue
		}
		if id == "." || id == ".." { // no path can ask for it: left out as missing, not the whole answer
			left.add(false, id)
			found[id] = nil
			continue
		}
		order = append(order, id)
		found[id] = nil // nil until fetched; marks the id as seen
		ev, ok := l.Cache.peek(ctx, id, now)
		if !ok {
			missing = append(missing, id)
			continue
		}
		js, err := l.keep(ev, id, userID, &answer, &left)
		if err != nil {
			return nil, err
		}
		found[id] = js
	}
	if err := held.reserve(ctx, l.reservation(order, found, len(missing))); err != nil {
		return nil, err
	}
	if len(missing) > 0 {
		fetched, err := l.fetchAll(ctx, userID, missing, &answer, &left)
		if err != nil {
			return nil, err
		}
		for i, id := range missing {
			found[id] = fetched[i]
		}
	}
	left.log(ctx, userID, l.Metrics)

	out := make([]json.RawMessage, 0, len(order))
	for _, id := range order {
		if js := found[id]; js != nil {
			out = append(out, js)
		}
	}
	return out, nil
}

// reservation is the memory an answer of the distinct ids order may take,
// missing of them not cached: see Load.
func (l *eventLoader) reservation(order []string, cached map[string]json.RawMessage, missing int) int64 {
	var events, names int64
	for _, id := range order {
		events += int64(len(cached[id])) + 1
		names += int64(len(id)) + 16 // the string header beside it
	}
	events += int64(missing) * (maxEventBody + 1)
	return min(events, l.MaxBytes) + names
}

// keep judges one event for the answer: it returns its JSON if it is
// userID's, and nil (noted in left) if it is missing or another user's. It
// fails once the answer is over its bound.
func (l *eventLoader) keep(ev event, id, userID string, answer *answerBudget, left *leftOut) (json.RawMessage, error) {
	switch {
	case ev.JSON == nil:
		left.add(false, id)
		return nil, nil
	case ev.UserID != userID:
		left.add(true, id)
		return nil, nil
	}
	return ev.JSON, answer.add(ev, userID)
}

// leftOut notes the events a load leaves out, for one log line.
type leftOut struct {
	mu               sync.Mutex
	missing, foreign []string // the first few ids of each
	nMissing, nOther int
}

// leftOutShown is how many ids of each kind the log line names.
const leftOutShown = 5

// add notes id as left out: another user's if foreign, else missing.
func (lo *leftOut) add(foreign bool, id string) {
	lo.mu.Lock()
	defer lo.mu.Unlock()
	ids, n := &lo.missing, &lo.nMissing
	if foreign {
		ids, n = &lo.foreign, &lo.nOther
	}
	*n++
	if len(*ids) < leftOutShown {
		*ids = append(*ids, id)
	}
}

// log writes one line for the whole load, if anything was left out: its
// size does not grow with the number of events.
func (lo *leftOut) log(ctx context.Context, userID string, m *metrics) {
	if lo.nMissing == 0 && lo.nOther == 0 {
		return
	}
	m.foreignWithheld.Add(uint64(lo.nOther))
	loggerFrom(ctx).WarnContext(ctx, "user lists events left out of the answer",
		"user_id", userID,
		"missing_upstream", lo.nMissing, "missing_ids", lo.missing,
		"of_another_user", lo.nOther, "foreign_ids", lo.foreign)
}

// answerBudget adds up the bytes of the events an answer will hold.
type answerBudget struct {
	max   int64
	bytes atomic.Int64
}

// add counts ev, and fails once the answer is over the bound.
func (a *answerBudget) add(ev event, userID string) error {
	if a.bytes.Add(int64(len(ev.JSON))+1) > a.max {
		return &upstreamError{Op: "getEventById", Kind: failTooLarge,
			Err: fmt.Errorf("events of user %q add up to more than %d bytes", userID, a.max),
			Message: fmt.Sprintf("the events of user %q add up to more than %s, more than this gateway answers at once (an eighth of MEMORY_BUDGET)",
				userID, formatBytes(a.max))}
	}
	return nil
}

// fetchAll fetches ids (distinct) with at most l.Limit in flight: a fixed
// pool of workers takes the next index until none is left. A nil result is
// an event left out.
func (l *eventLoader) fetchAll(ctx context.Context, userID string, ids []string, answer *answerBudget, left *leftOut) ([]json.RawMessage, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	results := make([]json.RawMessage, len(ids))
	var (
		next     atomic.Int64
		wg       sync.WaitGroup
		errOnce  sync.Once
		firstErr error
	)
	fail := func(err error) { errOnce.Do(func() { firstErr = err; cancel() }) }
	work := func() {
		for ctx.Err() == nil {
			i := int(next.Add(1) - 1)
			if i >= len(ids) {
				return
			}
			ev, err := l.Cache.Get(ctx, ids[i])
			if isNotFound(err) {
				ev, err = event{}, nil
			}
			if err == nil {
				results[i], err = l.keep(ev, ids[i], userID, answer, left)
			}
			if err != nil {
				fail(err)
				return
			}
		}
	}
	for range min(l.Limit, len(ids)) {
		wg.Go(func() { guard(ctx, "fan-out worker", work, fail) })
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
