package main

// The request-scoped values every layer reads: the request id and the
// logger that carries it. They sit at the bottom, so that the upstream
// client and the fan-out can log with the request's id without reaching up
// into the middleware.

import (
	"context"
	"log/slog"
)

// ctxKey keys this package's context values.
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

// withRequest returns ctx carrying the request's id and logger.
func withRequest(ctx context.Context, id string, logger *slog.Logger) context.Context {
	ctx = context.WithValue(ctx, requestIDKey, id)
	return context.WithValue(ctx, loggerKey, logger)
}
