package main

// The request-scoped values every layer reads: the request id, its trace
// and the logger that carries the id. They sit at the bottom, so that the upstream
// client and the fan-out can log with the request's id without reaching up
// into the middleware.

import (
	"context"
	"log/slog"
	"sync"
)

// requestScopeKey keys the *requestScope of a request's context.
type requestScopeKey struct{}

// requestScope is what a request's context carries. The logger with the
// request id is made on first use: most requests log only their access
// line, which names the id itself, and slog's With costs an allocation and
// the formatting of the id.
type requestScope struct {
	id     string
	trace  traceContext
	base   *slog.Logger
	once   sync.Once
	logger *slog.Logger // base with request_id, once made
}

// requestIDFrom returns the request id stored in ctx, or "".
func requestIDFrom(ctx context.Context) string {
	if s, ok := ctx.Value(requestScopeKey{}).(*requestScope); ok {
		return s.id
	}
	return ""
}

// loggerFrom returns the request's logger, which carries its request id.
func loggerFrom(ctx context.Context) *slog.Logger {
	s, ok := ctx.Value(requestScopeKey{}).(*requestScope)
	if !ok {
		return slog.Default()
	}
	s.once.Do(func() { s.logger = s.base.With("request_id", s.id) })
	return s.logger
}

// traceFrom returns the trace of the request of ctx, if it has one.
func traceFrom(ctx context.Context) (traceContext, bool) {
	s, ok := ctx.Value(requestScopeKey{}).(*requestScope)
	if !ok {
		return traceContext{}, false
	}
	return s.trace, true
}

// withRequest returns ctx carrying the request's id, its trace, and a
// logger that adds the id to base.
func withRequest(ctx context.Context, id string, trace traceContext, base *slog.Logger) context.Context {
	return context.WithValue(ctx, requestScopeKey{}, &requestScope{id: id, trace: trace, base: base})
}

// traceIDFrom returns the trace id of the request of ctx, or "".
func traceIDFrom(ctx context.Context) string {
	t, _ := traceFrom(ctx)
	return t.traceID
}
