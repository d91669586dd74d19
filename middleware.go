package main

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"log/slog"
	"net/http"
	"path"
	"runtime/debug"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// Small adapters that every request passes through. newServer composes
// them in one visible order; each does one thing.

// middleware is an adapter around a handler.
type middleware func(http.Handler) http.Handler

// chain wraps h in mws, the first outermost: chain(h, a, b) is a(b(h)).
func chain(h http.Handler, mws ...middleware) http.Handler {
	for i := len(mws) - 1; i >= 0; i-- {
		h = mws[i](h)
	}
	return h
}

// withServingMark tells the connection cap while this request is served:
// from its handler's start to its end, its connection is not one to close
// to make room. After it, net/http may still wait for a body the handler
// did not read (Go reads up to 256 KiB of it before answering), which is
// the client's time, not the gateway's.
//
// An HTTP/2 request its client cancels (a stream reset) is counted against
// its connection, which is closed past streamResetsAllowed (rapid reset:
// each would cost a handler and perhaps an upstream call).
//
// Past MAX_CONNECTIONS requests served at once (only HTTP/2's streams can
// get there), a request is answered 503 at once (startServing).
func withServingMark(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !startServing(r.Context()) {
			writeError(w, r, errBusy)
			return
		}
		defer markServing(r.Context(), false)
		next.ServeHTTP(w, r)
		if r.ProtoMajor == 2 && errors.Is(context.Cause(r.Context()), context.Canceled) {
			streamReset(r.Context(), time.Now())
		}
	})
}

// writeStallTimeout is how long one write of an answer may wait for the
// client to read: a client that keeps reading gets the whole answer however
// large; one that stops reading for this long is cut off.
const writeStallTimeout = 10 * time.Second

// writeChunk is the most written under one deadline, so that a large answer
// is written as many writes, each with its own deadline.
const writeChunk = 64 << 10

// withWriteDeadline gives every write of the answer its own deadline,
// writeStallTimeout from when it starts (within a second: the deadline is
// moved only once it is a second old, as an answer of many small pieces
// would otherwise move it for each), in pieces of at most writeChunk.
func withWriteDeadline(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		next.ServeHTTP(&deadlineWriter{ResponseWriter: w, rc: http.NewResponseController(w)}, r)
	})
}

// deadlineWriter is the ResponseWriter of withWriteDeadline.
type deadlineWriter struct {
	http.ResponseWriter
	rc  *http.ResponseController
	set time.Time // when the deadline was last moved
}

func (d *deadlineWriter) Write(p []byte) (int, error) {
	written := 0
	for len(p) > 0 {
		n := min(len(p), writeChunk)
		if now := time.Now(); now.Sub(d.set) >= time.Second {
			d.rc.SetWriteDeadline(now.Add(writeStallTimeout))
			d.set = now
		}
		m, err := d.ResponseWriter.Write(p[:n])
		written += m
		if err != nil {
			return written, err
		}
		p = p[n:]
	}
	return written, nil
}

// Unwrap lets http.ResponseController reach the underlying writer.
func (d *deadlineWriter) Unwrap() http.ResponseWriter { return d.ResponseWriter }

// withDrainClose makes every answer close its connection once ready is
// false (the drain has begun), so that a client holding a keep-alive
// connection dials again and reaches an instance that is not leaving. Idle
// connections are left open, to be closed when the drain ends: closing one
// now could race a request its client is sending on it (a load balancer
// answers that with an error).
func withDrainClose(ready *atomic.Bool) middleware {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if !ready.Load() {
				w.Header().Set("Connection", "close")
			}
			next.ServeHTTP(w, r)
		})
	}
}

// withSecurityHeaders marks every answer as not to be sniffed or stored.
func withSecurityHeaders(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Content-Type-Options", "nosniff")
		w.Header().Set("Cache-Control", "no-store")
		next.ServeHTTP(w, r)
	})
}

// maxRequestIDLength bounds a client's X-Request-ID, which goes into logs
// and upstream headers.
const maxRequestIDLength = 128

// withRequestScope gives the request an id (the client's X-Request-ID if
// it is short visible ASCII, else a new one) and a trace (the client's
// traceparent continued if valid, else a new one), echoes both
// (X-Request-Id, traceresponse), and puts them and a logger that carries
// the id in the request's context.
func withRequestScope(logger *slog.Logger) middleware {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			id := r.Header.Get("X-Request-Id") // canonical: Get need not copy the key
			if id == "" || len(id) > maxRequestIDLength || !printableASCII(id) {
				id = rand.Text()
			}
			w.Header().Set("X-Request-Id", id) // canonical already: Set need not copy the key
			trace := parseTraceContext(r.Header.Values("Traceparent"), r.Header.Values("Tracestate"))
			w.Header().Set("Traceresponse", trace.header())
			next.ServeHTTP(w, r.WithContext(withRequest(r.Context(), id, trace, logger)))
		})
	}
}

// withDeadline bounds the whole request, fan-out included.
func withDeadline(d time.Duration) middleware {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			ctx, cancel := context.WithTimeout(r.Context(), d)
			defer cancel()
			next.ServeHTTP(w, r.WithContext(ctx))
		})
	}
}

// withAccessLog logs one line per request to logger, and counts it in m,
// by route pattern and status. The line names the request id, the method
// (at most maxLoggedMethod bytes of it),
// the route pattern, the path (at most maxLoggedPath bytes of it: it is the
// client's), the client's address as the socket says (a proxy in front
// shows as itself: X-Forwarded-For is the client's word, and not trusted),
// the status, the bytes of the body written, and the duration in seconds
// (a number in JSON). It must sit outside every adapter that could answer
// (recovery included), and inside those that replace the request, because
// the mux sets the pattern on the *Request it is given.
func withAccessLog(logger *slog.Logger, m *metrics) middleware {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			start := time.Now()
			rec := &statusRecorder{ResponseWriter: w}
			next.ServeHTTP(rec, r)
			route := r.Pattern
			if route == "" || route == "/" {
				route = "unmatched"
			}
			d := time.Since(start)
			m.count(m.requests, labels{route, strconv.Itoa(rec.status())})
			m.observe(m.reqDuration, labels{route}, d)
			logAccess(r.Context(), logger, &accessLine{
				time:      start.Add(d), // now, without asking the clock again
				requestID: requestIDFrom(r.Context()),
				traceID:   traceIDFrom(r.Context()),
				method:    cut(r.Method, maxLoggedMethod),
				route:     route,
				path:      cut(r.URL.Path, maxLoggedPath),
				client:    r.RemoteAddr,
				status:    rec.status(),
				bytes:     bodyBytes(r, rec),
				duration:  d,
			})
		})
	}
}

// withRecovery turns a panic in a handler into a logged 500: the client
// gets a JSON error, never a stack. http.ErrAbortHandler is re-raised,
// because it is net/http's way to drop a connection on purpose.
func withRecovery(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec, ok := w.(*statusRecorder)
		if !ok {
			rec = &statusRecorder{ResponseWriter: w}
		}
		defer func() {
			v := recover()
			if v == nil {
				return
			}
			if v == http.ErrAbortHandler {
				panic(v)
			}
			loggerFrom(r.Context()).ErrorContext(r.Context(), "handler panicked",
				"panic", v, "stack", string(debug.Stack()))
			if rec.code == 0 {
				writeError(rec, r, errorf(http.StatusInternalServerError, "internal error"))
			}
		}()
		next.ServeHTTP(rec, r)
	})
}

// withStarTarget answers the request target "*": "OPTIONS *" asks about the
// server as a whole (RFC 9110), and no other method may use it. ServeMux
// would answer both with an empty body.
func withStarTarget(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.RequestURI != "*":
			next.ServeHTTP(w, r)
		case r.Method != http.MethodOptions:
			writeError(w, r, errorf(http.StatusBadRequest, "the request target * is only for OPTIONS"))
		default:
			w.Header().Set("Allow", "GET, HEAD, POST, OPTIONS")
			encode(w, http.StatusOK, map[string][]string{"methods": {"GET", "HEAD", "POST", "OPTIONS"}})
		}
	})
}

// withCanonicalPath refuses a path that is not clean ("/a/../b"), which
// ServeMux would answer with a redirect: a gateway answers it as the bad
// input it is.
func withCanonicalPath(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != path.Clean(r.URL.Path) || r.URL.Path == "" {
			writeError(w, r, errorf(http.StatusBadRequest, "path %q is not canonical", r.URL.Path))
			return
		}
		next.ServeHTTP(w, r)
	})
}

// requireToken protects next with a bearer token when token is not empty.
// The scheme is case-insensitive (RFC 9110). The token is compared by its
// SHA-256, in constant time, so neither timing nor an early length check
// can reveal the token or its length.
func requireToken(token string, next http.Handler) http.Handler {
	if token == "" {
		return next
	}
	want := sha256.Sum256([]byte(token))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		scheme, credential, _ := strings.Cut(r.Header.Get("Authorization"), " ")
		got := sha256.Sum256([]byte(strings.TrimSpace(credential)))
		if subtle.ConstantTimeCompare(got[:], want[:]) != 1 || !strings.EqualFold(scheme, "Bearer") {
			w.Header().Set("WWW-Authenticate", `Bearer realm="eventgate"`)
			writeError(w, r, errorf(http.StatusUnauthorized, "a valid bearer token is required to add events"))
			return
		}
		next.ServeHTTP(w, r)
	})
}

// bodyBytes is the bytes of the body sent: none for HEAD, whose body
// net/http drops while telling the handler it was written.
func bodyBytes(r *http.Request, rec *statusRecorder) int64 {
	if r.Method == http.MethodHead {
		return 0
	}
	return rec.bytes
}

// maxLoggedPath and maxLoggedMethod bound the path and the method in a
// request's log line: both are the client's, and net/http takes a method
// of any length within its header limit (16 KB).
const (
	maxLoggedPath   = 256
	maxLoggedMethod = 32
)

// cut returns s, or its first max bytes and "…" if it is longer.
func cut(s string, max int) string {
	if len(s) <= max {
		return s
	}
	return s[:max] + "…"
}

// statusRecorder remembers the status a handler wrote and the bytes of
// the body, for logs and metrics.
type statusRecorder struct {
	http.ResponseWriter
	code  int
	bytes int64
}

func (s *statusRecorder) WriteHeader(code int) {
	if s.code == 0 {
		s.code = code
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusRecorder) Write(b []byte) (int, error) {
	if s.code == 0 {
		s.code = http.StatusOK
	}
	n, err := s.ResponseWriter.Write(b)
	s.bytes += int64(n)
	return n, err
}

// status is the status written, 200 if the handler wrote nothing.
func (s *statusRecorder) status() int {
	if s.code == 0 {
		return http.StatusOK
	}
	return s.code
}

// Unwrap lets http.ResponseController reach the underlying writer.
func (s *statusRecorder) Unwrap() http.ResponseWriter { return s.ResponseWriter }
