package main

// Answers: the error type a client sees, its one mapping from every error
// to an HTTP status and a sentence for a person (toAPIError), and writing
// JSON answers.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"time"
)

// apiHandler is a handler that returns its error instead of writing it, so
// that one place, writeError, turns every error into the client's answer.
type apiHandler func(w http.ResponseWriter, r *http.Request) error

func (h apiHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if err := h(w, r); err != nil {
		writeError(w, r, err)
	}
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

// apiError is an error as a client sees it: a status, a sentence for a
// person, and optionally the problems with each field of the request.
type apiError struct {
	Status     int
	Message    string
	Problems   map[string]string // field → what is wrong with it
	RetryAfter time.Duration     // sets Retry-After when positive
}

func (e *apiError) Error() string { return fmt.Sprintf("%d: %s", e.Status, e.Message) }

// errorf returns an apiError with a formatted message.
func errorf(status int, format string, args ...any) *apiError {
	return &apiError{Status: status, Message: fmt.Sprintf(format, args...)}
}

// statusClientClosed is logged (never seen by anyone) when the client went
// away before its answer was ready, as nginx does.
const statusClientClosed = 499

// defaultRetryAfter is what a client is told to wait when the upstream
// answered 503 without saying how long.
const defaultRetryAfter = 5 * time.Second

// errBusy is the answer when eventgate itself is overloaded: no upstream
// slot or no memory came in time.
var errBusy = &apiError{Status: http.StatusServiceUnavailable, RetryAfter: time.Second,
	Message: "the gateway is busy with other requests; retry in a second"}

// toAPIError maps any error a handler returns to what the client is told,
// following the status table of the README. Only messages written for
// a person reach the client: an upstream's body or Go's error text never do.
func toAPIError(err error) *apiError {
	var ae *apiError
	if errors.As(err, &ae) {
		return ae
	}
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		return errorf(http.StatusRequestEntityTooLarge, "request body is larger than %d bytes", mbe.Limit)
	}
	switch {
	case errors.Is(err, errMemoryBusy):
		return errBusy
	case errors.Is(err, errKeyInUse):
		return errorf(http.StatusConflict, "a request with this Idempotency-Key is still in progress; retry when it has finished")
	case errors.Is(err, errKeyReused):
		return errorf(http.StatusUnprocessableEntity, "Idempotency-Key was already used with a different request body")
	case errors.Is(err, errStoreFull):
		return &apiError{Status: http.StatusServiceUnavailable, RetryAfter: time.Second,
			Message: "too many writes with an Idempotency-Key are in progress; retry in a second"}
	case errors.Is(err, context.Canceled):
		return errorf(statusClientClosed, "the client closed the request")
	}
	var pe *pacingError
	if errors.As(err, &pe) {
		return &apiError{Status: http.StatusServiceUnavailable, RetryAfter: pe.RetryAfter,
			Message: fmt.Sprintf("the gateway is pacing writes to what the event service accepts, and none can be sent in time; retry after %d seconds", retrySeconds(pe.RetryAfter))}
	}
	var oe *openError
	if errors.As(err, &oe) {
		return &apiError{
			Status:     http.StatusServiceUnavailable,
			Message:    fmt.Sprintf("the event service is unavailable; retry after %d seconds", retrySeconds(oe.RetryAfter)),
			RetryAfter: oe.RetryAfter,
		}
	}
	var ue *upstreamError
	if !errors.As(err, &ue) {
		return errorf(http.StatusInternalServerError, "internal error")
	}
	status, message := http.StatusBadGateway, ue.Message
	say := func(s string, args ...any) {
		if message == "" {
			message = fmt.Sprintf(s, args...)
		}
	}
	switch ue.Kind {
	case failUnavailable:
		wait := ue.RetryAfter
		if wait <= 0 {
			wait = defaultRetryAfter
		}
		return &apiError{
			Status:     http.StatusServiceUnavailable,
			Message:    fmt.Sprintf("the event service is overloaded; retry after %d seconds", retrySeconds(wait)),
			RetryAfter: wait,
		}
	case failBusy:
		return errBusy
	case failTimeout, failDeadline:
		status = http.StatusGatewayTimeout
		say("the event service did not answer in time")
	case failCanceled:
		status = statusClientClosed
		say("the client closed the request")
	case failNetwork:
		say("could not reach the event service")
	case failMalformed, failTooLarge, failUnconfirmed:
		say("the event service sent an answer that could not be read")
	case failStatus, failRedirect:
		say("the event service failed (status %d)", ue.Status)
	default: // a 4xx the handler did not expect: our request, not the client's, was wrong
		say("the event service refused the request (status %d)", ue.Status)
	}
	return errorf(status, "%s", message)
}

// retrySeconds rounds d up to whole seconds, at least 1, for Retry-After.
func retrySeconds(d time.Duration) int {
	return max(1, int(math.Ceil(d.Seconds())))
}
