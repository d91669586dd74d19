package main

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
)

// errGoexit is what the waiters of a goroutine that called runtime.Goexit
// are told: it neither returned nor panicked.
var errGoexit = errors.New("goroutine exited by runtime.Goexit")

// guard runs fn, on the goroutine that calls it, so that neither a panic
// nor runtime.Goexit in fn ends the process or leaves anyone waiting: either
// is logged with what names the goroutine, and onFail (if not nil) gets an
// error to hand to whoever waits for fn. Unlike x/sync/singleflight it
// never re-panics: a panic re-raised on a goroutine eventgate started would
// end the process. Every goroutine eventgate starts runs its work in guard.
func guard(ctx context.Context, what string, fn func(), onFail func(error)) {
	returned := false
	defer func() {
		if returned {
			return
		}
		v := recover() // nil for runtime.Goexit, which cannot be stopped
		err := errGoexit
		if v != nil {
			err = fmt.Errorf("%s panicked: %v", what, v)
		}
		loggerFrom(ctx).ErrorContext(ctx, "goroutine failed", "in", what, "err", err, "stack", string(debug.Stack()))
		if onFail != nil {
			onFail(err)
		}
	}()
	fn()
	returned = true
}
