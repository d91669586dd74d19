package main

import (
	"crypto/rand"
	"net/http"
	"strings"
)

// handleAddEvent stores a new event upstream under a fresh id. Writes pass
// the circuit breaker; with an Idempotency-Key, a retried request reuses
// its first id, so the upstream (which stores an id once) never holds it twice.
func handleAddEvent(up *upstream, br *breaker, keys *idempotencyStore) http.Handler {
	return apiHandler(func(w http.ResponseWriter, r *http.Request) error {
		body, err := readWriteBody(w, r, maxAddEventBody, up.timeout)
		if err != nil {
			return err
		}
		req, err := parseAddEvent(r.Header.Get("Content-Type"), body)
		if err != nil {
			return err
		}

		id := newEventID()
		stored := false // set only once the upstream has confirmed the write
		if key := r.Header.Get("Idempotency-Key"); key != "" {
			claim, err := keys.Begin(key, req.fingerprint(), id)
			if err != nil {
				return err
			}
			if claim.Done {
				w.Header().Set("Idempotent-Replayed", "true")
				encode(w, http.StatusOK, map[string]any{"success": true, "id": claim.ID})
				return nil
			}
			id = claim.ID
			// Deferred, so that the key is free again whatever happens
			// below, a panic included.
			defer func() { keys.Finish(key, stored) }()
		}

		ev := newEvent{ID: id, Name: req.Name, UserID: req.UserID, Details: req.Details}
		err = br.Execute(func() error { return up.AddEvent(r.Context(), ev) })
		if isNotFound(err) {
			return errorf(http.StatusNotFound, "user %q not found", req.UserID)
		}
		if err != nil {
			return err
		}
		stored = true
		encode(w, http.StatusOK, map[string]any{"success": true, "id": id})
		return nil
	})
}

// newEventID returns a new random event id. It comes from crypto/rand, so
// two requests in the same instant, or on two instances, never collide.
func newEventID() string {
	return "event-" + strings.ToLower(rand.Text())
}
