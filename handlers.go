package main

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// services are the dependencies the handlers share.
type services struct {
	up      *upstream
	loader  *eventLoader      // events by id: bounded fan-out, cache, coalescing
	breaker *breaker          // guards POST /addEvent
	keys    *idempotencyStore // Idempotency-Key memory for POST /addEvent
	metrics *metrics
	ready   *atomic.Bool // false once shutdown has begun
}

// Close ends the goroutines the services own (the cache's lookups, the
// breaker's probe) and the idle upstream connections. Call it after the
// server has stopped serving.
func (s services) Close() {
	s.loader.Cache.Close()
	s.breaker.Close()
	s.up.client.CloseIdleConnections()
}

// route is one entry of the API: a ServeMux pattern and its handler.
type route struct {
	pattern string
	handler http.Handler
}

// routes lists the whole API. openapi.yaml documents the same list, and a
// test keeps the two in step.
func routes(cfg config, s services) []route {
	return []route{
		{"GET /getUsers", handleList(s.up.Users)},
		{"GET /getEvents", handleList(s.up.Events)},
		{"GET /getEventsByUserId/{id}", handleEventsByUser(s.up, s.loader)},
		{"POST /addEvent", requireToken(cfg.APIToken, handleAddEvent(s.up, s.breaker, s.keys))},
		{"GET /health", handleHealth(s.breaker, s.metrics)},
		{"GET /ready", handleReady(s.ready)},
		{"GET /metrics", s.metrics},
	}
}

// newServer returns the gateway's whole HTTP API, wrapped in the middleware
// every request passes through.
func newServer(logger *slog.Logger, cfg config, s services) http.Handler {
	mux := http.NewServeMux()
	for _, r := range routes(cfg, s) {
		mux.Handle(r.pattern, r.handler)
	}
	mux.Handle("/", handleNoRoute(mux))
	return withMiddleware(logger, cfg, s.metrics, mux)
}

// apiHandler is a handler that returns its error instead of writing it, so
// that one place, writeError, turns every error into the client's answer.
type apiHandler func(w http.ResponseWriter, r *http.Request) error

func (h apiHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if err := h(w, r); err != nil {
		writeError(w, r, err)
	}
}

// handleList serves a list endpoint by passing the upstream's JSON array
// through unchanged: it was checked to be a JSON array, and decoding and
// encoding it again would only cost time.
func handleList(fetch func(context.Context) ([]byte, error)) http.Handler {
	return apiHandler(func(w http.ResponseWriter, r *http.Request) error {
		body, err := fetch(r.Context())
		if err != nil {
			return err
		}
		writeRaw(w, http.StatusOK, body)
		return nil
	})
}

// handleEventsByUser answers the events of one user, in the user's order.
// Events the user lists but the upstream no longer has, or that belong to
// another user, are left out.
func handleEventsByUser(up *upstream, loader *eventLoader) http.Handler {
	return apiHandler(func(w http.ResponseWriter, r *http.Request) error {
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
		events, err := loader.Load(r.Context(), id, ids)
		if err != nil {
			return err
		}
		writeArray(w, events)
		return nil
	})
}

// handleHealth is the liveness check: cheap, no upstream call. It shows
// the breaker, with its times as the JSON of RFC 3339 and whole seconds.
func handleHealth(br *breaker, m *metrics) http.Handler {
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
		b := breakerJSON{State: s.State, Since: utc(s.Since), FailuresInWindow: s.FailuresInWindow,
			NextTrialAt: utc(s.NextTrial), TimesOpened: s.TimesOpened}
		if !s.NextTrial.IsZero() {
			b.RetryAfterSecs = retrySeconds(time.Until(s.NextTrial))
		}
		encode(w, http.StatusOK, map[string]any{"status": "ok", "breaker": b, "goroutines": m.goroutines()})
	})
}

// handleReady is the readiness check: 503 once shutdown has begun, so that a
// load balancer stops sending traffic before the listener closes.
func handleReady(ready *atomic.Bool) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !ready.Load() {
			writeError(w, r, errorf(http.StatusServiceUnavailable, "shutting down"))
			return
		}
		encode(w, http.StatusOK, map[string]string{"status": "ready"})
	})
}

// probeMethods are the methods tried to tell a 405 from a 404.
var probeMethods = []string{
	http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut,
	http.MethodPatch, http.MethodDelete, http.MethodOptions,
}

// handleNoRoute answers what no route matched. Because "/" matches every
// method, ServeMux routes a wrong method here instead of writing its own
// plain-text 405; so this asks mux which methods the path has and answers
// 405 with Allow, or 404, in JSON either way.
func handleNoRoute(mux *http.ServeMux) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var allow []string
		for _, m := range probeMethods {
			probe := r.Clone(r.Context())
			probe.Method = m
			if _, pattern := mux.Handler(probe); pattern != "/" && pattern != "" {
				allow = append(allow, m)
			}
		}
		if len(allow) == 0 {
			writeError(w, r, errorf(http.StatusNotFound, "no route for %s %s", r.Method, r.URL.Path))
			return
		}
		w.Header().Set("Allow", strings.Join(allow, ", "))
		writeError(w, r, errorf(http.StatusMethodNotAllowed, "%s is not allowed on %s; use %s",
			r.Method, r.URL.Path, strings.Join(allow, " or ")))
	})
}

// writeArray answers 200 with items as one JSON array, written piece by
// piece: neither decoded again nor copied into one more buffer as large as
// the answer.
func writeArray(w http.ResponseWriter, items []json.RawMessage) {
	n := 3 // "[", "]" and the newline
	for _, it := range items {
		n += len(it) + 1
	}
	if len(items) > 0 {
		n-- // one comma fewer than items
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(n))
	w.WriteHeader(http.StatusOK)
	sep := []byte{'['}
	for _, it := range items {
		w.Write(sep)
		w.Write(it)
		sep[0] = ','
	}
	if len(items) == 0 {
		w.Write(sep)
	}
	w.Write([]byte("]\n"))
}

// encode writes v as the JSON answer with the given status.
func encode(w http.ResponseWriter, status int, v any) {
	body, err := json.Marshal(v)
	if err != nil {
		// Only our own types are encoded here: a failure is a bug.
		status, body = http.StatusInternalServerError, []byte(`{"error":"internal error"}`)
	}
	writeRaw(w, status, body)
}

// writeRaw writes body, which is already JSON, with the given status.
func writeRaw(w http.ResponseWriter, status int, body []byte) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)+1))
	w.WriteHeader(status)
	w.Write(body)
	w.Write([]byte{'\n'})
}

// writeError writes err as {"error": "..."} with the status toAPIError
// gives it, and logs what the client is not told.
func writeError(w http.ResponseWriter, r *http.Request, err error) {
	ae := toAPIError(err)
	logger := loggerFrom(r.Context())
	if ae.Status >= 500 {
		logger.WarnContext(r.Context(), "request failed", "status", ae.Status, "err", err)
	} else {
		logger.DebugContext(r.Context(), "request refused", "status", ae.Status, "err", err)
	}
	if ae.RetryAfter > 0 || ae.Status == http.StatusServiceUnavailable {
		// Every 503 says when to come back: at least a second, even when
		// the next breaker trial is due this instant.
		w.Header().Set("Retry-After", strconv.Itoa(retrySeconds(ae.RetryAfter)))
	}
	body := map[string]any{"error": ae.Message}
	if len(ae.Problems) > 0 {
		body["problems"] = ae.Problems
	}
	encode(w, ae.Status, body)
}
