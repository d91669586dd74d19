package main

// The handlers, one maker per endpoint: each takes its dependencies and
// returns an http.Handler.

import (
	"errors"
	"net/http"
	"runtime"
	"sync/atomic"
	"time"
)

// handleList serves a list endpoint by passing the upstream's JSON array
// through unchanged: it was checked to be a JSON array, and decoding and
// encoding it again would only cost time. Concurrent reads share one call
// and one copy of its answer (listReader), counted in the memory budget
// until the last of them has written it; held counts what this request
// alone needs to write it.
func handleList(lists *listReader, memory *memoryPool, leave time.Duration) http.Handler {
	return apiHandler(func(w http.ResponseWriter, r *http.Request) error {
		held := memory.account(leave)
		defer held.close()
		answer, done, err := lists.Read(r.Context())
		defer done()
		if err != nil {
			return err
		}
		writeTagged(w, r, held, answer.tag, answer.pieces)
		return nil
	})
}

// handleEventsByUser answers the events of one user, in the user's order.
// Events the user lists but the upstream no longer has, or that belong to
// another user, are left out.
func handleEventsByUser(up *upstream, loader *eventLoader, memory *memoryPool) http.Handler {
	return apiHandler(func(w http.ResponseWriter, r *http.Request) error {
		held := memory.account(up.timeout)
		defer held.close()
		id := r.PathValue("id")
		if problem := checkID(id); problem != "" {
			return errorf(http.StatusBadRequest, "invalid user id: %s", problem)
		}
		ids, err := up.UserEventIDs(r.Context(), id)
		if isNotFound(err) {
			return errorf(http.StatusNotFound, "user %q not found", id)
		}
		if err != nil {
			return err
		}
		events, err := loader.Load(r.Context(), id, ids, held)
		if err != nil {
			return err
		}
		writeAnswer(w, r, held, arrayPieces(events))
		return nil
	})
}

// handleHealth is the liveness check: cheap, no upstream call. It shows
// the breaker, with its times as the JSON of RFC 3339 and whole seconds.
func handleHealth(br *breaker, adm *admission) http.Handler {
	type breakerJSON struct {
		State            string     `json:"state"`
		Since            *time.Time `json:"since,omitempty"`
		FailuresInWindow int        `json:"failuresInWindow"`
		NextTrialAt      *time.Time `json:"nextTrialAt,omitempty"`
		RetryAfterSecs   int        `json:"retryAfterSeconds,omitempty"`
		TimesOpened      int        `json:"timesOpened"`
	}
	utc := func(t time.Time) *time.Time {
		if t.IsZero() {
			return nil
		}
		t = t.UTC()
		return &t
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s := br.Snapshot()
		b := breakerJSON{State: string(s.State), Since: utc(s.Since), FailuresInWindow: s.FailuresInWindow,
			NextTrialAt: utc(s.NextTrial), TimesOpened: s.TimesOpened}
		if !s.NextTrial.IsZero() {
			b.RetryAfterSecs = retrySeconds(time.Until(s.NextTrial))
		}
		p := adm.Snapshot()
		pacing := map[string]any{"paced": p.Writes > 0, "waiting": p.Waiting}
		if p.Writes > 0 {
			pacing["writesPerSecond"], pacing["writesPerWindow"], pacing["windowSeconds"] = p.WritesPerSecond, p.Writes, p.Window.Seconds()
		}
		v, _ := version()
		encode(w, http.StatusOK, map[string]any{"status": "ok", "version": v, "breaker": b, "writePacing": pacing, "goroutines": runtime.NumGoroutine()})
	})
}

// handleReady is the readiness check: 503 once shutdown has begun, so that a
// load balancer stops sending traffic before the listener closes. That 503
// is the drain working, not a failure: it is not logged as one.
func handleReady(ready *atomic.Bool) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !ready.Load() {
			w.Header().Set("Retry-After", "1")
			encode(w, http.StatusServiceUnavailable, map[string]string{"error": "shutting down"})
			return
		}
		encode(w, http.StatusOK, map[string]string{"status": "ready"})
	})
}

// neverSent reports whether a write's error says it never reached the
// upstream: refused by the breaker, or by eventgate before it left.
func neverSent(err error) bool {
	var open *openError
	return errors.As(err, &open) || unsent(err)
}

// handleAddEvent stores a new event upstream under a fresh id. Writes wait
// for their turn in the admission, then pass the circuit breaker; with an
// Idempotency-Key, the id is derived from the key and the event, so a
// retried request reuses its first id and the upstream (which stores an id
// once) never holds it twice. A keyed write holds its key while it waits.
// Once stored, the id is forgotten by the event cache, which may remember
// it as missing.
func handleAddEvent(up *upstream, adm *admission, br *breaker, keys *idempotencyStore, ids idDeriver, loader *eventLoader, memory *memoryPool) http.Handler {
	return apiHandler(func(w http.ResponseWriter, r *http.Request) error {
		held := memory.account(up.timeout)
		defer held.close()
		if err := held.reserve(r.Context(), bodyReservation(r, maxAddEventBody)); err != nil {
			return err
		}
		body, err := readWriteBody(w, r, maxAddEventBody, up.timeout)
		if err != nil {
			return err
		}
		req, err := parseAddEvent(r.Header.Get("Content-Type"), body)
		if err != nil {
			return err
		}

		ev := newEvent{ID: newEventID(), Name: req.Name, UserID: req.UserID, Details: req.Details}
		result := writeFailed // until known otherwise, the write may be stored
		if values := r.Header.Values("Idempotency-Key"); len(values) > 0 {
			key, err := parseIdempotencyKey(values)
			if err != nil {
				return err
			}
			claim, err := keys.Begin(key, ids.forWrite(key, req))
			if err != nil {
				return err
			}
			if claim.Done {
				w.Header().Set("Idempotent-Replayed", "true")
				encode(w, http.StatusOK, map[string]any{"success": true, "id": claim.ID})
				return nil
			}
			ev.ID = claim.ID
			// Deferred, so that the key is free again whatever happens
			// below, a panic included.
			defer func() { keys.Finish(claim, result) }()
		}

		if err := br.Refusing(); err != nil {
			result = writeUnsent
			return err // at once, not after a wait for a pacing turn
		}
		t, err := adm.Admit(r.Context(), up.timeout)
		if err != nil {
			result = writeUnsent
			return err
		}
		err = errCallPanicked // what the admission hears if the call panics
		defer func() { adm.Done(t, err) }()
		err = br.Execute(func() error { return up.AddEvent(r.Context(), ev) })
		if neverSent(err) {
			result = writeUnsent
		}
		if isNotFound(err) {
			return errorf(http.StatusNotFound, "user %q not found", req.UserID)
		}
		if err != nil {
			return err
		}
		result = writeStored
		loader.Cache.Forget(ev.ID)
		encode(w, http.StatusOK, map[string]any{"success": true, "id": ev.ID})
		return nil
	})
}
