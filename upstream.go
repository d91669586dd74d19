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
	"sync"
	"sync/atomic"
	"time"
)

// The trust boundary with the Event API. The upstream is not trusted: it
// may be misconfigured, overloaded or compromised. Every byte eventgate
// reads from it passes one of these rules, all of them in this file:
//
//   - Status. 2xx: the body is read and checked (below). 404: "not found",
//     nothing read. 3xx: a fault; redirects are never followed, Location is
//     never read, so no request, header or body of eventgate reaches another
//     host. 429 and 503: "unavailable", with Retry-After. Anything else
//     (1xx, other 4xx, 5xx): a fault with its status number, body unread.
//   - Headers. At most maxResponseHeaderBytes in all (the transport refuses
//     more). Only Retry-After is read: whole seconds or an HTTP date, kept
//     within [1s, MaxRetryAfter]; anything else is ignored. Content-Type is
//     not trusted: the body must prove to be the JSON expected.
//   - Bodies. Read under the call's deadline (a trickling answer times out)
//     up to a cap per call, checked against Content-Length before reading:
//     lists maxListBody, a user userBodyLimit, an event maxEventBody, a
//     write's confirmation maxConfirmBody. Past the cap: a fault.
//   - Shapes, checked with the strict reader of strictjson.go (no duplicate
//     or case-variant keys, valid UTF-8, paired surrogates):
//     a list is a JSON array; a user is an object whose "events" (absent:
//     none) is an array of at most maxUserEvents non-empty string ids of at
//     most maxIDLength bytes; an event is an object whose "id" is the id
//     asked for (its "userId" is kept, for the caller to check); a write is
//     confirmed only by an object whose "success" is true and whose "id", if
//     present, is the id sent. Anything else is a fault, and for a write, a
//     failure: the client is never told an unconfirmed write succeeded.
//   - Nothing the upstream sends reaches a client's error message or a log
//     line unbounded: messages are eventgate's own sentences.

// Caps on what one upstream call may make eventgate hold. See README.md
// ("Bounds") for how they were chosen.
const (
	maxListBody            = 8 << 20   // GET /getUsers, /getEvents: passed to the client as is
	maxEventBody           = 256 << 10 // one event; one written through eventgate is under 3 KB
	maxConfirmBody         = 64 << 10  // POST /addEvent's answer
	maxResponseHeaderBytes = 64 << 10  // Go's default is 10 MiB
)

// maxUserEvents is the most event ids taken from one user: four rounds of
// the fan-out (2 s at the mock's 500 ms), and a user's JSON of 2.3 MB.
const maxUserEvents = 10_000

// maxIDLength bounds ids, in paths, bodies and the upstream's lists; real
// ids are far shorter.
const maxIDLength = 128

// userBodyLimit caps a user's JSON: room for maxEvents ids of the longest
// length, and a mebibyte for the rest of the user.
func userBodyLimit(maxEvents int) int64 { return 1<<20 + int64(maxEvents)*(maxIDLength+4) }

// failure classifies why an upstream call did not succeed; its value is
// the outcome label of the call in /metrics.
type failure string

const (
	failNotFound    failure = "not_found"   // the upstream answered 404
	failRejected    failure = "rejected"    // the upstream answered another 4xx (not 429)
	failUnavailable failure = "unavailable" // the upstream answered 503 or 429
	failStatus      failure = "bad_status"  // the upstream answered another 5xx, or 1xx
	failRedirect    failure = "redirect"    // the upstream answered 3xx, which is never followed
	failTimeout     failure = "timeout"     // UPSTREAM_TIMEOUT passed
	failDeadline    failure = "deadline"    // the client request's own deadline passed
	failNetwork     failure = "network"     // no answer: refused, reset, dropped
	failMalformed   failure = "malformed"   // an answer that is not the JSON expected
	failTooLarge    failure = "too_large"   // an answer past one of eventgate's bounds
	failUnconfirmed failure = "unconfirmed" // a write answered 2xx without confirming it
	failCanceled    failure = "canceled"    // the client went away; nobody is waiting
	failBusy        failure = "busy"        // eventgate's own overload: no slot or memory in time
)

// upstreamError is the error of every failed upstream call.
type upstreamError struct {
	Op         string        // the upstream call, e.g. "getUserById"
	Kind       failure       // why it failed
	Status     int           // the upstream's status code, if it answered
	RetryAfter time.Duration // the upstream's Retry-After, if it sent a sane one
	Message    string        // if set, what the client is told: eventgate's words, never the upstream's
	Err        error         // the underlying cause, for logs only
	Unsent     bool          // the call never left eventgate
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

// upstreamFault reports whether err is the upstream's fault: anything but a
// 404 or other refusal of the request (the client's fault), a cancelled
// call, or the client request's own deadline (nobody's, or the client's).
// The circuit breaker counts only faults, so that bad or slow clients
// cannot shut writes off for everyone.
func upstreamFault(err error) bool {
	var ue *upstreamError
	if !errors.As(err, &ue) {
		return false
	}
	switch ue.Kind {
	case failNotFound, failRejected, failCanceled, failDeadline, failBusy:
		return false
	}
	return true
}

// retryable reports whether a second try of a read may succeed, and may
// be made now: a network error, or a 502, 503 or 504 (a 503 or 429 only if
// it did not say when to come back: never before a Retry-After). Never a
// timeout (the caller has already waited UPSTREAM_TIMEOUT), and the retry
// policy is never given a write.
func retryable(err error) bool {
	var ue *upstreamError
	if !errors.As(err, &ue) {
		return false
	}
	switch ue.Kind {
	case failNetwork:
		return true
	case failUnavailable:
		return ue.RetryAfter == 0
	case failStatus:
		return ue.Status == http.StatusBadGateway || ue.Status == http.StatusGatewayTimeout
	}
	return false
}

// retryAfter returns the Retry-After the upstream sent with err, or 0.
func retryAfter(err error) time.Duration {
	var ue *upstreamError
	if errors.As(err, &ue) {
		return ue.RetryAfter
	}
	return 0
}

// unsent reports whether err is from a call that never left eventgate.
func unsent(err error) bool {
	var ue *upstreamError
	return errors.As(err, &ue) && ue.Unsent
}

// isOverload reports whether err is the upstream saying it has no room
// now (a 503 or 429): the admission's signal to slow down, and a breaker
// fault only once the admission is at its floor.
func isOverload(err error) bool {
	var ue *upstreamError
	return errors.As(err, &ue) && ue.Kind == failUnavailable
}

// clientMistake reports whether the upstream refused a call as the
// client's mistake (a 4xx other than 429): nothing was stored, and an
// upstream checks that before it counts a write against its capacity.
func clientMistake(err error) bool {
	var ue *upstreamError
	return errors.As(err, &ue) && (ue.Kind == failNotFound || ue.Kind == failRejected)
}

func isNotFound(err error) bool {
	var ue *upstreamError
	return errors.As(err, &ue) && ue.Kind == failNotFound
}

// errCallTimeout is the cause recorded when one call exceeds UPSTREAM_TIMEOUT.
var errCallTimeout = errors.New("upstream call exceeded UPSTREAM_TIMEOUT")

// upstream is the client of the external Event API: one method per call.
// It is safe for concurrent use.
type upstream struct {
	base          string // the base URL without a trailing slash
	authorization string // sent as Authorization on every call; "" for none
	userAgent     string // userAgent(), worked out once: it reads the build information
	client        *http.Client
	timeout       time.Duration // one call, UPSTREAM_TIMEOUT
	slots         chan struct{} // process-wide bound on calls in flight
	retry         retryPolicy   // for idempotent reads
	maxRetryAfter time.Duration
	hedge         *hedgePolicy   // for idempotent reads
	reads         *memoryPool    // bodies being read, for the whole process
	running       sync.WaitGroup // hedges in flight, waited for by Close
	metrics       *metrics
}

// upstreamOptions configure newUpstream; every field is required but
// Transport (nil: the one newTransport tunes for a real upstream).
type upstreamOptions struct {
	BaseURL       string
	Authorization string // "" sends none
	Timeout       time.Duration
	MaxInflight   int
	Retry         retryPolicy
	MaxRetryAfter time.Duration // the longest Retry-After passed on
	Hedge         *hedgePolicy  // when reads are hedged
	Reads         *memoryPool   // the memory budget's pool for bodies being read
	Metrics       *metrics
	Transport     http.RoundTripper
}

func newUpstream(o upstreamOptions) *upstream {
	if o.Transport == nil {
		o.Transport = newTransport(o.MaxInflight, o.Metrics)
	}
	return &upstream{
		base:          strings.TrimRight(o.BaseURL, "/"),
		authorization: o.Authorization,
		userAgent:     userAgent(),
		client: &http.Client{
			Transport: o.Transport,
			// A redirect is answered as the fault it is: following it would
			// send the request, its headers and a write's body to whatever
			// host the upstream names, and turn a POST into a GET.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
		timeout:       o.Timeout,
		slots:         make(chan struct{}, o.MaxInflight),
		retry:         o.Retry,
		maxRetryAfter: o.MaxRetryAfter,
		hedge:         o.Hedge,
		reads:         o.Reads,
		metrics:       o.Metrics,
	}
}

// Close waits for the hedges still running (their calls are cancelled
// already), then closes the idle connections.
func (u *upstream) Close() {
	u.running.Wait()
	u.client.CloseIdleConnections()
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
			m.upstreamDials.Add(1)
			return dialer.DialContext(ctx, network, addr)
		},
		// HTTP/1.1 only: HTTP/2 re-sends a request by itself after a GOAWAY,
		// which would be an attempt this client did not decide to make.
		ForceAttemptHTTP2: false,
		// No Accept-Encoding: a compressed answer would cost eventgate far
		// more CPU than it cost the upstream (344 bytes of gzip are 255 KB
		// of JSON). An answer with a Content-Encoding is not the JSON
		// expected, and is refused as malformed.
		DisableCompression:     true,
		MaxIdleConns:           maxInflight,
		MaxIdleConnsPerHost:    maxInflight,
		MaxConnsPerHost:        maxInflight, // so file descriptors are bounded too
		IdleConnTimeout:        90 * time.Second,
		TLSHandshakeTimeout:    5 * time.Second,
		ExpectContinueTimeout:  time.Second,
		MaxResponseHeaderBytes: maxResponseHeaderBytes,
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

// UserEventIDs returns the ids of the events of user id, in the user's order.
// An unknown user is a failNotFound error; a user listing more than
// maxUserEvents events is a failTooLarge error, found before any lookup.
func (u *upstream) UserEventIDs(ctx context.Context, id string) ([]string, error) {
	const op = "getUserById"
	seg, err := pathSegment(op, id)
	if err != nil {
		return nil, err
	}
	body, err := u.get(ctx, op, "/getUserById/"+seg, userBodyLimit(maxUserEvents))
	if err != nil {
		return nil, err
	}
	malformed := func(err error) error {
		return &upstreamError{Op: op, Kind: failMalformed, Err: err,
			Message: "the event service sent a user that is not an object with an array of event ids"}
	}
	members, err := objectMembers(body)
	if err != nil {
		return nil, malformed(err)
	}
	list, err := field(members, "events")
	if err != nil {
		return nil, malformed(err)
	}
	if list == nil {
		return nil, nil // absent: no events
	}
	ids, err := stringArray(list, maxUserEvents)
	if errors.Is(err, errTooMany) {
		return nil, &upstreamError{Op: op, Kind: failTooLarge, Err: err,
			Message: fmt.Sprintf("user %q has more than %d events, more than this gateway serves", id, maxUserEvents)}
	}
	if err != nil {
		return nil, malformed(err)
	}
	return ids, nil
}

var errTooMany = errors.New("too many elements")

// stringArray reads a JSON array of event ids (v is valid JSON), refusing
// more than max of them, and ids that are empty or longer than maxIDLength.
func stringArray(v json.RawMessage, max int) ([]string, error) {
	if v[0] != '[' {
		return nil, fmt.Errorf("events is %s, not an array", jsonKind(v[0]))
	}
	var ids []string
	if err := json.Unmarshal(v, &ids); err != nil {
		return nil, fmt.Errorf("events is not an array of strings: %w", err)
	}
	if len(ids) > max {
		return nil, errTooMany
	}
	for i, id := range ids {
		if id == "" || len(id) > maxIDLength { // null is "" too
			return nil, fmt.Errorf("event %d of the list is not an id of 1 to %d bytes", i, maxIDLength)
		}
	}
	return ids, nil
}

// event is an upstream event as eventgate keeps it: its JSON object as the
// upstream sent it (checked), and the user the upstream says it belongs to.
type event struct {
	JSON   json.RawMessage
	UserID string // "" if the event names none
}

// Event returns event id. An unknown event is a failNotFound error; an
// answer that is not an object, or is another event, is failMalformed.
func (u *upstream) Event(ctx context.Context, id string) (event, error) {
	const op = "getEventById"
	seg, err := pathSegment(op, id)
	if err != nil {
		return event{}, err
	}
	body, err := u.get(ctx, op, "/getEventById/"+seg, maxEventBody)
	if err != nil {
		return event{}, err
	}
	members, err := objectMembers(body)
	if err != nil {
		return event{}, &upstreamError{Op: op, Kind: failMalformed, Err: err,
			Message: "the event service sent an event that is not a JSON object"}
	}
	gotID, err := field(members, "id")
	if s, ok := jsonString(gotID); err != nil || !ok || s != id {
		return event{}, &upstreamError{Op: op, Kind: failMalformed, Err: fmt.Errorf("asked for %q, got id %.64s", id, gotID),
			Message: "the event service answered a lookup with another event"}
	}
	owner, err := field(members, "userId")
	if err != nil {
		return event{}, &upstreamError{Op: op, Kind: failMalformed, Err: err,
			Message: "the event service sent an event whose owner is ambiguous"}
	}
	kept := bytes.TrimSpace(body)
	if len(kept) != cap(body) {
		kept = bytes.Clone(kept) // no sub-slice pins the larger buffer it was read into
	}
	return event{JSON: kept, UserID: ownerID(owner)}, nil
}

// ownerID reads an event's userId: a string, or a whole number as the
// write path accepts; anything else names nobody.
func ownerID(v json.RawMessage) string {
	if s, ok := jsonString(v); ok {
		return s
	}
	if isDigits(v) {
		return string(v)
	}
	return ""
}

// newEvent is the body of the upstream's POST /addEvent.
type newEvent struct {
	ID      string `json:"id"`
	Name    string `json:"name"`
	UserID  string `json:"userId"`
	Details string `json:"details"`
}

// AddEvent stores ev upstream. It is sent once, never retried: a retry is
// the client's decision (with an Idempotency-Key, it is safe). It succeeds
// only if the upstream confirms the write: a 2xx whose body is a JSON
// object with "success": true and, if it names an id, ev's id.
func (u *upstream) AddEvent(ctx context.Context, ev newEvent) error {
	const op = "addEvent"
	payload, err := json.Marshal(ev)
	if err != nil {
		return err
	}
	body, err := u.call(ctx, op, http.MethodPost, "/addEvent", payload, maxConfirmBody)
	if err != nil {
		return err
	}
	if err := checkConfirmation(body, ev.ID); err != nil {
		return &upstreamError{Op: op, Kind: failUnconfirmed, Err: err,
			Message: "the event service did not confirm that it stored the event"}
	}
	return nil
}

// checkConfirmation returns why body does not confirm the write of event id.
func checkConfirmation(body []byte, id string) error {
	members, err := objectMembers(body)
	if err != nil {
		return err
	}
	success, err := field(members, "success")
	if err != nil {
		return err
	}
	if string(success) != "true" {
		return fmt.Errorf("success is %.20q, not true", success)
	}
	gotID, err := field(members, "id")
	if err != nil {
		return err
	}
	if s, ok := jsonString(gotID); gotID != nil && (!ok || s != id) {
		return fmt.Errorf("confirmed id %.64s, not the one sent", gotID)
	}
	return nil
}

// getArray is get for the list endpoints, whose answer must be a JSON array.
func (u *upstream) getArray(ctx context.Context, op, path string) ([]byte, error) {
	body, err := u.get(ctx, op, path, maxListBody)
	if err != nil {
		return nil, err
	}
	if t := bytes.TrimSpace(body); len(t) == 0 || t[0] != '[' || !json.Valid(t) {
		return nil, &upstreamError{Op: op, Kind: failMalformed, Err: errors.New("not a JSON array"),
			Message: "the event service sent a list that is not a JSON array"}
	}
	return body, nil
}

// get is an idempotent read, hedged as u.hedge says and retried as u.retry
// allows; hedges and retries draw on one budget, and at most one attempt of
// the read is hedged, so a read is sent at most Attempts + 1 times.
func (u *upstream) get(ctx context.Context, op, path string, limit int64) ([]byte, error) {
	var hedgeSent atomic.Bool
	return u.retry.do(ctx, func() ([]byte, error) { return u.hedged(ctx, op, path, limit, &hedgeSent) }, retryable)
}

// hedged GETs path (a read of kind op, at most limit bytes), and, if it has
// not answered after the hedge delay of op, no hedge of this read was sent
// yet (hedgeSent), a slot is free and the retry budget allows, GETs it once
// more (runHedged). Both share the first call's UPSTREAM_TIMEOUT, which
// starts when it is sent; a hedge is an attempt like any other, asked first
// whether anyone still wants it.
func (u *upstream) hedged(ctx context.Context, op, path string, limit int64, hedgeSent *atomic.Bool) ([]byte, error) {
	delay, ok := u.hedge.delay(op, time.Now())
	if !ok || hedgeSent.Load() {
		return u.call(ctx, op, http.MethodGet, path, nil, limit)
	}
	release, err := u.acquire(ctx, op)
	if err != nil {
		return nil, err
	}
	defer release()
	ctx, cancel := context.WithTimeoutCause(ctx, u.timeout, errCallTimeout)
	defer cancel() // whichever call is still running ends now
	start := func() (func(), bool) {
		release := u.tryAcquire()
		if release == nil || hedgeSent.Swap(true) || !u.retry.Budget.withdraw(time.Now()) {
			if release != nil {
				release()
			}
			return nil, false
		}
		u.metrics.count(u.metrics.hedges, labels{op, "sent"})
		return release, true
	}
	send := func() ([]byte, error) { return u.send(ctx, op, http.MethodGet, path, nil, limit) }
	body, won, err := runHedged(ctx, cancel, delay, send, start, &u.running)
	if won {
		u.metrics.count(u.metrics.hedges, labels{op, "won"})
	}
	return body, err
}

// call makes one upstream call and returns the body of a 2xx answer, at
// most limit bytes. Every other answer is an *upstreamError. It first
// waits for one of the process's slots, under ctx: UPSTREAM_TIMEOUT starts
// only once the call is sent. A write is sent only while its whole
// UPSTREAM_TIMEOUT fits in ctx's deadline, checked after that wait.
func (u *upstream) call(ctx context.Context, op, method, path string, body []byte, limit int64) ([]byte, error) {
	release, err := u.acquire(ctx, op)
	if err != nil {
		return nil, err
	}
	defer release()
	if dl, ok := ctx.Deadline(); ok && method != http.MethodGet && time.Until(dl) < u.timeout {
		return nil, &upstreamError{Op: op, Kind: failBusy, Unsent: true,
			Err: errors.New("the write's UPSTREAM_TIMEOUT no longer fits in the request's deadline")}
	}
	ctx, cancel := context.WithTimeoutCause(ctx, u.timeout, errCallTimeout)
	defer cancel()
	return u.send(ctx, op, method, path, body, limit)
}

// acquire waits under ctx for one of the process's slots for calls in
// flight, and returns the function that gives it back. Running out of ctx
// while waiting is the gateway's own overload (failBusy) or the caller
// leaving, never the upstream's fault: nothing was sent.
func (u *upstream) acquire(ctx context.Context, op string) (func(), error) {
	select {
	case u.slots <- struct{}{}:
		return func() { <-u.slots }, nil
	case <-ctx.Done():
		return nil, waitError(ctx, op)
	}
}

// tryAcquire is acquire without waiting: nil when every slot is taken.
func (u *upstream) tryAcquire() func() {
	select {
	case u.slots <- struct{}{}:
		return func() { <-u.slots }
	default:
		return nil
	}
}

// leftCall is what a waiter of a shared call of op (a flightGroup's) is
// told when its own ctx ends first: if the call was not sent yet, it waited
// for eventgate, not for the upstream.
func leftCall(op string) func(ctx context.Context, sent bool) error {
	return func(ctx context.Context, sent bool) error {
		if !sent {
			return waitError(ctx, op)
		}
		return contextError(ctx, op, ctx.Err())
	}
}

// waitError is the error of a call whose ctx ended before it was sent.
func waitError(ctx context.Context, op string) error {
	if errors.Is(context.Cause(ctx), context.DeadlineExceeded) {
		return &upstreamError{Op: op, Kind: failBusy, Unsent: true, Err: context.Cause(ctx)}
	}
	return &upstreamError{Op: op, Kind: failCanceled, Unsent: true, Err: context.Cause(ctx)}
}

// send makes one attempt, in a slot already held, under ctx, which carries
// the call's UPSTREAM_TIMEOUT; it records the attempt. An attempt that the
// context's send check (withSendCheck) refuses is not made.
func (u *upstream) send(ctx context.Context, op, method, path string, body []byte, limit int64) ([]byte, error) {
	if !maySend(ctx) {
		return nil, &upstreamError{Op: op, Kind: failCanceled, Unsent: true, Err: errNobodyWaiting}
	}
	if ctx.Err() != nil { // the caller left or ran out of time before it was sent
		return nil, waitError(ctx, op)
	}
	u.metrics.upstreamInflight.Add(1)
	defer u.metrics.upstreamInflight.Add(-1)
	start := time.Now()
	out, err := u.roundTrip(ctx, op, method, path, body, limit)
	took := time.Since(start)
	u.metrics.observe(u.metrics.upDuration, labels{op, outcome(err)}, took)
	if err == nil {
		u.hedge.observe(op, took, start.Add(took))
	}
	return out, err
}

// sendCheckKey is the context key of a send check.
type sendCheckKey struct{}

// errNobodyWaiting is the cause of an attempt not made: nobody wants it.
var errNobodyWaiting = errors.New("every caller waiting for this call has left")

// withSendCheck returns ctx with a check that every attempt made under it
// asks first: false means nobody wants the answer any more, and no attempt
// is sent. Attempts already sent are not cancelled by it: they finish, so
// that their answer can be kept.
func withSendCheck(ctx context.Context, check func() bool) context.Context {
	return context.WithValue(ctx, sendCheckKey{}, check)
}

func maySend(ctx context.Context) bool {
	check, _ := ctx.Value(sendCheckKey{}).(func() bool)
	return check == nil || check()
}

// unreplayable is the body of every GET: not nil, and without GetBody, so
// that http.Transport never re-sends a request by itself when a reused
// connection closes before answering (it would for a bodiless GET, as many
// times as it has idle connections). Every attempt that reaches the
// upstream is one this client decided to make and counted. The transport
// sees that it is empty and sends no body.
type unreplayable struct{}

func (unreplayable) Read([]byte) (int, error) { return 0, io.EOF }
func (unreplayable) Close() error             { return nil }

func (u *upstream) roundTrip(ctx context.Context, op, method, path string, body []byte, limit int64) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, method, u.base+path, bytes.NewReader(body))
	if err != nil {
		return nil, &upstreamError{Op: op, Kind: failNetwork, Err: err}
	}
	req.GetBody = nil // a write is never replayed by the transport either
	if body == nil {
		req.Body, req.ContentLength = unreplayable{}, 0
	}
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", u.userAgent)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if id := requestIDFrom(ctx); id != "" {
		req.Header.Set("X-Request-ID", id)
	}
	if trace, ok := traceFrom(ctx); ok {
		req.Header.Set("Traceparent", trace.header()) // this call's own parent id
		if trace.state != "" {
			req.Header.Set("Tracestate", trace.state)
		}
	}
	if u.authorization != "" {
		// Only ever to the base URL's host: redirects are not followed, and
		// runGateway refuses a proxy that would read it in the clear.
		req.Header.Set("Authorization", u.authorization)
	}

	resp, err := u.client.Do(req)
	if err != nil {
		return nil, contextError(ctx, op, err)
	}
	defer resp.Body.Close()

	s := resp.StatusCode
	if s < 200 || s > 299 {
		// Drain a little, so a short error answer leaves the connection
		// reusable; the rest of the body is never read.
		io.CopyN(io.Discard, resp.Body, 4<<10)
	}
	switch {
	case s >= 200 && s <= 299:
		return u.readBody(ctx, op, method, resp, limit)
	case s == http.StatusNotFound:
		return nil, &upstreamError{Op: op, Kind: failNotFound, Status: s}
	case s == http.StatusServiceUnavailable || s == http.StatusTooManyRequests:
		return nil, &upstreamError{Op: op, Kind: failUnavailable, Status: s,
			RetryAfter: parseRetryAfter(resp.Header.Get("Retry-After"), time.Now(), u.maxRetryAfter)}
	case s >= 300 && s <= 399:
		return nil, &upstreamError{Op: op, Kind: failRedirect, Status: s,
			Message: fmt.Sprintf("the event service answered with a redirect (status %d), which this gateway does not follow", s)}
	case s >= 400 && s <= 499:
		return nil, &upstreamError{Op: op, Kind: failRejected, Status: s}
	}
	return nil, &upstreamError{Op: op, Kind: failStatus, Status: s}
}

// readBody reads a 2xx answer's body, at most limit bytes, under ctx (the
// call's deadline). A body the upstream declares too large is refused
// before it is read. Before reading, the bytes it may take (its declared
// length, else limit) are reserved in the process's reads pool, and given
// back once it is read: a body that stalls one byte short holds no memory
// that is not counted. One of declared length gets exactly that buffer;
// one of unknown length is copied to a buffer of its size, so what the
// cache keeps is what it counts.
func (u *upstream) readBody(ctx context.Context, op, method string, resp *http.Response, limit int64) ([]byte, error) {
	tooLarge := &upstreamError{Op: op, Kind: failTooLarge, Status: resp.StatusCode,
		Err:     fmt.Errorf("answer larger than %d bytes", limit),
		Message: fmt.Sprintf("the event service sent an answer larger than this gateway accepts (%s)", formatBytes(limit))}
	if resp.ContentLength > limit {
		return nil, tooLarge
	}
	want := limit + limit/2 // the last doubling holds the old buffer and the new
	if resp.ContentLength >= 0 {
		want = resp.ContentLength
	}
	got, waited, err := u.reads.acquire(ctx, want)
	if err != nil {
		if errors.Is(context.Cause(ctx), errCallTimeout) {
			// UPSTREAM_TIMEOUT passed while eventgate waited for memory:
			// its own overload, not the upstream's slowness.
			return nil, waitedOut(op, method)
		}
		return nil, contextError(ctx, op, err)
	}
	defer u.reads.release(got)
	var data []byte
	if resp.ContentLength >= 0 {
		data = make([]byte, resp.ContentLength)
		_, err = io.ReadFull(resp.Body, data)
	} else {
		data, err = readCapped(resp.Body, limit+1)
		if int64(len(data)) > limit {
			return nil, tooLarge
		}
		if cap(data) != len(data) {
			data = bytes.Clone(data)
		}
	}
	if err != nil && waited && errors.Is(context.Cause(ctx), errCallTimeout) {
		// The time ran out after eventgate waited for memory to read the
		// body in: part of the wait was its own, so it blames nobody.
		return nil, waitedOut(op, method)
	}
	if err != nil {
		return nil, contextError(ctx, op, err)
	}
	return data, nil
}

// waitedOut is the error of a call whose answer could not be read in time
// because eventgate waited for memory: its own overload, never a fault of
// the upstream. A read is failBusy (503: try again). A write was sent and
// may be stored, so it is failDeadline (504: outcome unknown, retry with
// the same Idempotency-Key), never a "busy" that would say it was not sent.
func waitedOut(op, method string) error {
	if method != http.MethodGet {
		return &upstreamError{Op: op, Kind: failDeadline, Err: errors.New("UPSTREAM_TIMEOUT passed while the answer waited for memory")}
	}
	return &upstreamError{Op: op, Kind: failBusy, Err: errMemoryBusy}
}

// readCapped reads r to its end or to max bytes, in a buffer that doubles
// from 4 KiB but never past max: it never holds more than max, plus half
// of max while it grows.
func readCapped(r io.Reader, max int64) ([]byte, error) {
	buf := make([]byte, 0, min(4<<10, max))
	for {
		n, err := r.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		switch {
		case err == io.EOF:
			return buf, nil
		case err != nil:
			return buf, err
		case int64(len(buf)) == max:
			return buf, nil
		case len(buf) == cap(buf):
			grown := make([]byte, len(buf), min(2*int64(cap(buf)), max))
			copy(grown, buf)
			buf = grown
		}
	}
}

// contextError classifies err from a call made under ctx: a timeout if
// UPSTREAM_TIMEOUT passed, the request's deadline if that passed first,
// cancelled if the caller went away, else a network error.
func contextError(ctx context.Context, op string, err error) error {
	switch cause := context.Cause(ctx); {
	case errors.Is(cause, errCallTimeout):
		return &upstreamError{Op: op, Kind: failTimeout, Err: cause}
	case errors.Is(cause, context.DeadlineExceeded):
		return &upstreamError{Op: op, Kind: failDeadline, Err: cause}
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
		return "", &upstreamError{Op: op, Kind: failMalformed, Err: fmt.Errorf("unusable id %q", id),
			Message: "the event service listed an id that cannot be looked up"}
	}
	return url.PathEscape(id), nil
}

// parseRetryAfter reads a Retry-After header, in seconds or as an HTTP
// date, as of now. A value it can read is kept within [1s, ceiling], so
// that neither a past date nor an absurd number reaches a client (a number
// too large for any integer type is the ceiling too); anything else
// (absent, garbage) is zero.
func parseRetryAfter(v string, now time.Time, ceiling time.Duration) time.Duration {
	v = strings.TrimSpace(v)
	var d time.Duration
	if isDigits([]byte(v)) {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil || n > uint64(ceiling/time.Second) {
			return ceiling // too large for 64 bits, or checked before multiplying: 2^63 ns is only 292 years
		}
		d = time.Duration(n) * time.Second
	} else if t, err := http.ParseTime(v); err == nil {
		d = t.Sub(now)
	} else {
		return 0
	}
	return min(ceiling, max(d, time.Second))
}

// outcome is the one word for how an upstream call ended, the label of
// /metrics: "ok" or its failure kind.
func outcome(err error) string {
	var ue *upstreamError
	switch {
	case err == nil:
		return "ok"
	case errors.As(err, &ue):
		return string(ue.Kind)
	}
	return "error"
}

// formatBytes writes n as KiB or MiB when it is a whole number of them.
func formatBytes(n int64) string {
	switch {
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%d MiB", n>>20)
	case n >= 1<<10 && n%(1<<10) == 0:
		return fmt.Sprintf("%d KiB", n>>10)
	}
	return fmt.Sprintf("%d bytes", n)
}
