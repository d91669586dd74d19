package main

import (
	"context"
	"errors"
	"runtime"
	"strings"
	"testing"
)

// TestGuardTurnsPanicsAndGoexitIntoErrors: a function that returns is left
// alone; one that panics, or calls runtime.Goexit, is an error for onFail,
// and its goroutine ends without ending the process.
func TestGuardTurnsPanicsAndGoexitIntoErrors(t *testing.T) {
	run := func(fn func()) (failed error, called bool) {
		done := make(chan struct{})
		go func() {
			defer close(done)
			guard(context.Background(), "test", fn, func(err error) { failed, called = err, true })
		}()
		<-done
		return failed, called
	}
	if _, called := run(func() {}); called {
		t.Error("a function that returned was reported as failed")
	}
	if err, _ := run(func() { panic("on purpose") }); err == nil || !strings.Contains(err.Error(), "on purpose") {
		t.Errorf("a panic gave %v; want an error naming it", err)
	}
	if err, _ := run(runtime.Goexit); !errors.Is(err, errGoexit) {
		t.Errorf("runtime.Goexit gave %v; want errGoexit", err)
	}
}
