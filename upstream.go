package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// maxUpstreamBody caps how much of one upstream answer is read. The largest
// legitimate answer is GET /getEvents; 8 MiB holds tens of thousands of
// events while keeping a hostile upstream from exhausting memory.
const maxUpstreamBody = 8 << 20

// failure classifies why an upstream call did not succeed.
type failure int

const (
	failNotFound    failure = iota + 1 // the upstream answered 404
	failRejected                       // the upstream answered another 4xx
	failUnavailable                    // the upstream answered 503
	failStatus                         // the upstream answered another 5xx (or 1xx/3xx)
	failTimeout                        // UPSTREAM_TIMEOUT or the request deadline passed
	failNetwork                        // no answer: refused, reset, dropped
	failMalformed                      // an answer that is not the JSON we expect
	failCanceled                       // the client went away; nobody is waiting
)

var failureNames = map[failure]string{
	failNotFound:    "not_found",
	failRejected:    "rejected",
	failUnavailable: "unavailable",
	failStatus:      "bad_status",
	failTimeout:     "timeout",
	failNetwork:     "network",
	failMalformed:   "malformed",
	failCanceled:    "canceled",
}

func (f failure) String() string { return failureNames[f] }

// upstreamError is the error of every failed upstream call.
type upstreamError struct {
	Op         string        // the upstream call, e.g. "getUserById"
	Kind       failure       // why it failed
	Status     int           // the upstream's status code, if it answered
	RetryAfter time.Duration // the upstream's Retry-After, if it sent one
	Err        error         // the underlying cause, for logs only
}

func (e *upstreamError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "upstream %s: %s", e.Op, e.Kind)
	if e.Status != 0 {
		fmt.Fprintf(&b, " (status %d)", e.Status)
	}
	if e.Err != nil {
		fmt.Fprintf(&b, ": %v", e.Err)
	}
	return b.String()
}

func (e *upstreamError) Unwrap() error { return e.Err }

// upstreamFault reports whether err is the upstream's fault: a 5xx, a
// timeout, a network error or a malformed answer. A 4xx is the client's
// fault and a cancelled call is nobody's; the circuit breaker counts only
// faults, so that bad requests cannot shut writes off for everyone.
func upstreamFault(err error) bool {
	var ue *upstreamError
	if !errors.As(err, &ue) {
		return false
	}
	switch ue.Kind {
	case failUnavailable, failStatus, failTimeout, failNetwork, failMalformed:
		return true
	}
	return false
}

// errCallTimeout is the cause recorded when one call exceeds UPSTREAM_TIMEOUT.
var errCallTimeout = errors.New("upstream call exceeded UPSTREAM_TIMEOUT")

// upstream is the client of the external Event API: one method per call.
// It is safe for concurrent use.
type upstream struct {
	base    string // the base URL without a trailing slash
	client  *http.Client
	timeout time.Duration // one call, UPSTREAM_TIMEOUT
	slots   chan struct{} // process-wide bound on calls in flight
	retry   retryPolicy   // for idempotent reads
	metrics *metrics      // may be nil
}

// upstreamOptions configures newUpstream.
type upstreamOptions struct {
	BaseURL     string
	Timeout     time.Duration
	MaxInflight int
	Retry       retryPolicy
	Metrics     *metrics // nil records nothing
	Transport   http.RoundTripper
}

func newUpstream(o upstreamOptions) *upstream {
	if o.Transport == nil {
		o.Transport = newTransport(o.MaxInflight, o.Metrics)
	}
	return &upstream{
		base:    strings.TrimRight(o.BaseURL, "/"),
		client:  &http.Client{Transport: o.Transport},
		timeout: o.Timeout,
		slots:   make(chan struct{}, o.MaxInflight),
		retry:   o.Retry,
		metrics: o.Metrics,
	}
}

// newTransport returns a transport tuned for many parallel calls to one host.
// The default keeps only 2 idle connections per host, so a fan-out of a
// thousand calls would close 998 connections after every round and dial
// them again on the next: here every connection the in-flight bound allows
// may stay idle for reuse.
//
// Every connection dialed is counted in m, so an operator can see whether
// connections are reused (the count stays flat under steady load).
func newTransport(maxInflight int, m *metrics) *http.Transport {
	dialer := &net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}
	return &http.Transport{
		Proxy: http.ProxyFromEnvironment,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			m.connectionDialed()
			return dialer.DialContext(ctx, network, addr)
		},
		ForceAttemptHTTP2:     true,
		MaxIdleConns:          maxInflight,
		MaxIdleConnsPerHost:   maxInflight,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   5 * time.Second,
		ExpectContinueTimeout: time.Second,
	}
}

// Users returns the upstream's GET /getUsers answer, checked to be a JSON array.
func (u *upstream) Users(ctx context.Context) ([]byte, error) {
	return u.getArray(ctx, "getUsers", "/getUsers")
}

// Events returns the upstream's GET /getEvents answer, checked to be a JSON array.
func (u *upstream) Events(ctx context.Context) ([]byte, error) {
	return u.getArray(ctx, "getEvents", "/getEvents")
}

// upstreamUser is the part of an upstream user that the gateway reads.
type upstreamUser struct {
	Events []string `json:"events"`
}

// UserEventIDs returns the ids of the events of user id, in the user's order.
// An unknown user is a failNotFound error.
func (u *upstream) UserEventIDs(ctx context.Context, id string) ([]string, error) {
	const op = "getUserById"
	seg, err := pathSegment(op, id)
	if err != nil {
		return nil, err
	}
	body, err := u.get(ctx, op, "/getUserById/"+seg)
	if err != nil {
		return nil, err
	}
	var user upstreamUser
	if err := json.Unmarshal(body, &user); err != nil {
		return nil, &upstreamError{Op: op, Kind: failMalformed, Err: err}
	}
	return user.Events, nil
}

// Event returns the JSON object of event id. An unknown event is a
// failNotFound error.
func (u *upstream) Event(ctx context.Context, id string) (json.RawMessage, error) {
	const op = "getEventById"
	seg, err := pathSegment(op, id)
	if err != nil {
		return nil, err
	}
	body, err := u.get(ctx, op, "/getEventById/"+seg)
	if err != nil {
		return nil, err
	}
	if !isJSON(body, '{') {
		return nil, &upstreamError{Op: op, Kind: failMalformed, Err: errors.New("not a JSON object")}
	}
	return body, nil
}

// newEvent is the body of the upstream's POST /addEvent.
type newEvent struct {
	ID      string `json:"id"`
	Name    string `json:"name"`
	UserID  string `json:"userId"`
	Details string `json:"details"`
}

// AddEvent stores ev upstream. It is sent once, never retried: a retry is
// the client's decision (with an Idempotency-Key, it is safe).
func (u *upstream) AddEvent(ctx context.Context, ev newEvent) error {
	body, err := json.Marshal(ev)
	if err != nil {
		return err
	}
	_, err = u.call(ctx, "addEvent", http.MethodPost, "/addEvent", body)
	return err
}

// getArray is get for the list endpoints, whose answer must be a JSON array.
func (u *upstream) getArray(ctx context.Context, op, path string) ([]byte, error) {
	body, err := u.get(ctx, op, path)
	if err != nil {
		return nil, err
	}
	if !isJSON(body, '[') {
		return nil, &upstreamError{Op: op, Kind: failMalformed, Err: errors.New("not a JSON array")}
	}
	return body, nil
}

// get is an idempotent read, retried as u.retry allows.
func (u *upstream) get(ctx context.Context, op, path string) ([]byte, error) {
	return u.retry.do(ctx, func() ([]byte, error) {
		return u.call(ctx, op, http.MethodGet, path, nil)
	})
}

// call makes one upstream call and returns the body of a 2xx answer.
// Every other outcome is an *upstreamError.
func (u *upstream) call(ctx context.Context, op, method, path string, body []byte) ([]byte, error) {
	select {
	case u.slots <- struct{}{}:
		defer func() { <-u.slots }()
	case <-ctx.Done():
		return nil, contextError(ctx, op, ctx.Err())
	}
	u.metrics.upstreamInflight(1)
	defer u.metrics.upstreamInflight(-1)

	start := time.Now()
	out, err := u.roundTrip(ctx, op, method, path, body)
	u.metrics.observeUpstream(op, outcome(err), time.Since(start))
	return out, err
}

func (u *upstream) roundTrip(parent context.Context, op, method, path string, body []byte) ([]byte, error) {
	ctx, cancel := context.WithTimeoutCause(parent, u.timeout, errCallTimeout)
	defer cancel()

	req, err := http.NewRequestWithContext(ctx, method, u.base+path, bytes.NewReader(body))
	if err != nil {
		return nil, &upstreamError{Op: op, Kind: failNetwork, Err: err}
	}
	req.Header.Set("Accept", "application/json")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if id := requestIDFrom(parent); id != "" {
		req.Header.Set("X-Request-ID", id)
	}

	resp, err := u.client.Do(req)
	if err != nil {
		return nil, contextError(ctx, op, err)
	}
	defer resp.Body.Close()
	// The body is read under the same deadline, so an upstream that
	// trickles its answer one byte at a time still times out.
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxUpstreamBody+1))
	if err != nil {
		return nil, contextError(ctx, op, err)
	}
	if len(data) > maxUpstreamBody {
		return nil, &upstreamError{Op: op, Kind: failMalformed, Status: resp.StatusCode,
			Err: fmt.Errorf("answer larger than %d bytes", maxUpstreamBody)}
	}

	switch s := resp.StatusCode; {
	case s >= 200 && s < 300:
		return data, nil
	case s == http.StatusNotFound:
		return nil, &upstreamError{Op: op, Kind: failNotFound, Status: s}
	case s == http.StatusServiceUnavailable:
		return nil, &upstreamError{Op: op, Kind: failUnavailable, Status: s,
			RetryAfter: parseRetryAfter(resp.Header.Get("Retry-After"))}
	case s >= 400 && s < 500:
		return nil, &upstreamError{Op: op, Kind: failRejected, Status: s}
	default:
		return nil, &upstreamError{Op: op, Kind: failStatus, Status: s}
	}
}

// contextError classifies err from a call made under ctx: a timeout if a
// deadline passed, cancelled if the caller went away, else a network error.
func contextError(ctx context.Context, op string, err error) error {
	switch cause := context.Cause(ctx); {
	case errors.Is(cause, errCallTimeout) || errors.Is(cause, context.DeadlineExceeded):
		return &upstreamError{Op: op, Kind: failTimeout, Err: cause}
	case cause != nil:
		return &upstreamError{Op: op, Kind: failCanceled, Err: cause}
	}
	return &upstreamError{Op: op, Kind: failNetwork, Err: err}
}

// pathSegment escapes id as one path segment. Escaping keeps "/", "?", "#"
// and "%" from leaving the segment; "." and ".." are refused outright
// because they would still be read as the current and parent directory, and
// would let an id reach another upstream path.
func pathSegment(op, id string) (string, error) {
	if id == "" || id == "." || id == ".." {
		return "", &upstreamError{Op: op, Kind: failMalformed, Err: fmt.Errorf("unusable id %q", id)}
	}
	return url.PathEscape(id), nil
}

// isJSON reports whether b is valid JSON whose first token starts with open
// ('[' for an array, '{' for an object).
func isJSON(b []byte, open byte) bool {
	t := bytes.TrimLeft(b, " \t\r\n")
	return len(t) > 0 && t[0] == open && json.Valid(t)
}

// parseRetryAfter reads a Retry-After header given in seconds; anything
// else (absent, a date, garbage) is zero.
func parseRetryAfter(v string) time.Duration {
	n, err := strconv.Atoi(strings.TrimSpace(v))
	if err != nil || n < 0 {
		return 0
	}
	return time.Duration(n) * time.Second
}

// outcome names the result of a call for metrics: "ok" or the failure kind.
func outcome(err error) string {
	var ue *upstreamError
	switch {
	case err == nil:
		return "ok"
	case errors.As(err, &ue):
		return ue.Kind.String()
	}
	return "error"
}
