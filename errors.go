package main

import (
	"errors"
	"fmt"
	"math"
	"net/http"
	"time"
)

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

// toAPIError maps any error a handler returns to what the client is told,
// following the status table of the design brief. Only messages written for
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
