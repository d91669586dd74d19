package main

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"log/slog"
	"net/http"
	"path"
	"runtime/debug"
	"strings"
	"time"
)

type ctxKey int

const (
	requestIDKey ctxKey = iota
	loggerKey
)

// requestIDFrom returns the request id stored in ctx, or "".
func requestIDFrom(ctx context.Context) string {
	id, _ := ctx.Value(requestIDKey).(string)
	return id
}

// loggerFrom returns the request's logger, which carries its request id.
func loggerFrom(ctx context.Context) *slog.Logger {
	if l, ok := ctx.Value(loggerKey).(*slog.Logger); ok {
		return l
	}
	return slog.Default()
}

// maxRequestIDLength bounds a client's X-Request-ID, which goes into logs
// and upstream headers.
const maxRequestIDLength = 128

// withMiddleware wraps the mux in what every request passes through, in
// order: security headers, request id and logger, access log and metrics,
// panic recovery, the request deadline, and the canonical-path check.
func withMiddleware(logger *slog.Logger, cfg config, m *metrics, mux http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		h := w.Header()
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Cache-Control", "no-store")

		id := r.Header.Get("X-Request-ID")
		if id == "" || len(id) > maxRequestIDLength || !printableASCII(id) {
			id = rand.Text()
		}
		h.Set("X-Request-ID", id)
		reqLogger := logger.With("request_id", id)
		ctx := context.WithValue(r.Context(), requestIDKey, id)
		ctx = context.WithValue(ctx, loggerKey, reqLogger)
		ctx, cancel := context.WithTimeout(ctx, cfg.RequestTimeout)
		defer cancel()
		r = r.WithContext(ctx)

		rec := &statusRecorder{ResponseWriter: w}
		defer func() {
			// r.Pattern is set by the mux on this same *Request.
			route := r.Pattern
			if route == "" || route == "/" {
				route = "unmatched"
			}
			d := time.Since(start)
			m.observeRequest(route, rec.status(), d)
			reqLogger.LogAttrs(ctx, slog.LevelInfo, "request",
				slog.String("method", r.Method),
				slog.String("route", route),
				slog.Int("status", rec.status()),
				slog.Duration("duration", d),
			)
		}()
		defer recoverPanic(rec, r)

		if r.RequestURI == "*" {
			// "OPTIONS *" asks about the server as a whole (RFC 9110); no
			// other method may use that target. ServeMux would answer both
			// with an empty body.
			if r.Method != http.MethodOptions {
				writeError(rec, r, errorf(http.StatusBadRequest, "the request target * is only for OPTIONS"))
				return
			}
			h.Set("Allow", "GET, HEAD, POST, OPTIONS")
			encode(rec, http.StatusOK, map[string][]string{"methods": {"GET", "HEAD", "POST", "OPTIONS"}})
			return
		}

		if r.URL.Path != path.Clean(r.URL.Path) || r.URL.Path == "" {
			// ServeMux would answer an unclean path ("/a/../b") with a
			// redirect; a gateway answers it as the bad input it is.
			writeError(rec, r, errorf(http.StatusBadRequest, "path %q is not canonical", r.URL.Path))
			return
		}
		mux.ServeHTTP(rec, r)
	})
}

// recoverPanic turns a panic in a handler into a logged 500: the client gets
// a JSON error, never a stack. http.ErrAbortHandler is re-raised, because it
// is net/http's way to drop a connection on purpose.
func recoverPanic(w *statusRecorder, r *http.Request) {
	v := recover()
	if v == nil {
		return
	}
	if v == http.ErrAbortHandler {
		panic(v)
	}
	loggerFrom(r.Context()).ErrorContext(r.Context(), "handler panicked",
		"panic", v, "stack", string(debug.Stack()))
	if w.code == 0 {
		writeError(w, r, errorf(http.StatusInternalServerError, "internal error"))
	}
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

// statusRecorder remembers the status a handler wrote, for logs and metrics.
type statusRecorder struct {
	http.ResponseWriter
	code int
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
	return s.ResponseWriter.Write(b)
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
