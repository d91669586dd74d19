package main

import (
	"bytes"
	"fmt"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
)

// lockedBuffer is an io.Writer safe for the log writer's goroutine and
// the test to share; it counts the writes it is given.
type lockedBuffer struct {
	mu     sync.Mutex
	b      bytes.Buffer
	writes int
	gate   chan struct{} // if set, each write waits for a token
}

func (lb *lockedBuffer) Write(p []byte) (int, error) {
	if lb.gate != nil {
		<-lb.gate
	}
	lb.mu.Lock()
	defer lb.mu.Unlock()
	lb.writes++
	return lb.b.Write(p)
}

func (lb *lockedBuffer) String() string {
	lb.mu.Lock()
	defer lb.mu.Unlock()
	return lb.b.String()
}

// TestLogLinesComeOutWholeInOrderAndTogether: lines from many writers come
// out whole, each writer's in its order, in fewer writes than lines; and
// one line alone comes out without waiting for more.
func TestLogLinesComeOutWholeInOrderAndTogether(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		out := &lockedBuffer{}
		l := newLogWriter(out)
		l.Write([]byte("first\n"))
		synctest.Wait()
		if got := out.String(); got != "first\n" {
			t.Errorf("one line, before Close: %q; want it out at once", got)
		}
		var wg sync.WaitGroup
		for w := range 8 {
			wg.Go(func() {
				for i := range 1000 {
					l.Write(fmt.Appendf(nil, "writer %d line %04d %s\n", w, i, strings.Repeat("x", 100)))
				}
			})
		}
		wg.Wait()
		l.Close()
		next := map[string]int{}
		lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")[1:]
		for _, line := range lines {
			var w, i int
			if _, err := fmt.Sscanf(line, "writer %d line %d", &w, &i); err != nil || len(line) != len("writer 0 line 0000 ")+100 {
				t.Fatalf("a line cut or mixed: %q", line)
			}
			if key := fmt.Sprint(w); i != next[key] {
				t.Fatalf("writer %d: line %d after %d", w, i, next[key]-1)
			}
			next[fmt.Sprint(w)]++
		}
		if len(lines) != 8000 {
			t.Errorf("%d lines out; want 8000", len(lines))
		}
		t.Logf("%d lines in %d writes", len(lines)+1, out.writes)
	})
}

// TestAStuckLogOutputHoldsLittle: when the output does not take what it
// is given, at most maxPending bytes wait; the next line's writer waits
// too, as it would with no buffer, and nothing is lost once it moves.
func TestAStuckLogOutputHoldsLittle(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		out := &lockedBuffer{gate: make(chan struct{})}
		l := newLogWriter(out)
		line := []byte(strings.Repeat("y", 64<<10-1) + "\n")
		l.Write(line) // taken by the goroutine, which is now stuck in out
		synctest.Wait()
		for range maxPending / len(line) {
			l.Write(line)
		}
		blocked := make(chan struct{})
		go func() {
			l.Write(line) // past maxPending: waits for the output
			close(blocked)
		}()
		synctest.Wait()
		select {
		case <-blocked:
			t.Fatal("a line past maxPending was buffered; want its writer to wait")
		default:
		}
		l.mu.Lock()
		held := len(l.pending)
		l.mu.Unlock()
		if held > maxPending {
			t.Errorf("%d bytes waiting; want at most %d", held, maxPending)
		}
		close(out.gate) // the output moves again
		<-blocked
		l.Close()
		if got, want := len(out.String()), (maxPending/len(line)+2)*len(line); got != want {
			t.Errorf("%d bytes out; want all %d", got, want)
		}
	})
}
