package main

import (
	"context"
	"io"
	"sync"
)

// logWriter puts log lines on their way without a write(2) each: a line is
// appended to a buffer and one goroutine writes whatever has gathered, so
// that at one request a line comes out at once, and at 20,000 requests a
// second the lines that arrive while a write is under way go out together
// in the next one. Lines stay whole and in order. When maxPending bytes
// wait (the output is stuck), the next line's writer waits for room, as it
// would wait for the output without the buffer: memory stays bounded.
// Close writes what is left and ends the goroutine.
type logWriter struct {
	out    io.Writer
	output sync.Mutex // held while writing to out, so that batches keep their order

	mu      sync.Mutex    // protects the fields below
	pending []byte        // lines not yet given to out
	spare   []byte        // the last batch's buffer, for reuse
	room    chan struct{} // closed when pending was taken: writers waiting for room go on
	closed  bool          // Close was called, or the goroutine ended: writers write themselves

	wake chan struct{} // one token: there is something to write
	done chan struct{} // closed when the goroutine has ended
}

// maxPending bounds the bytes waiting for the output.
const maxPending = 1 << 20

func newLogWriter(out io.Writer) *logWriter {
	l := &logWriter{out: out, wake: make(chan struct{}, 1), done: make(chan struct{})}
	go guard(context.Background(), "log writer", l.loop, nil)
	return l
}

// Write takes one line (the log handlers write each record whole, once).
func (l *logWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	for !l.closed && len(l.pending) > 0 && len(l.pending)+len(p) > maxPending {
		if l.room == nil {
			l.room = make(chan struct{})
		}
		room := l.room
		l.mu.Unlock()
		<-room
		l.mu.Lock()
	}
	l.pending = append(l.pending, p...)
	closed := l.closed
	l.mu.Unlock()
	if closed {
		<-l.done // no goroutine writes any more: this writer does
		l.flush()
		return len(p), nil
	}
	select {
	case l.wake <- struct{}{}:
	default: // a wake-up is due already
	}
	return len(p), nil
}

// loop writes what has gathered each time it is woken, until Close. If it
// fails, writers write for themselves.
func (l *logWriter) loop() {
	defer func() {
		l.mu.Lock()
		l.closed = true
		l.release()
		l.mu.Unlock()
		close(l.done)
	}()
	for range l.wake {
		l.flush()
		l.mu.Lock()
		closed := l.closed
		l.mu.Unlock()
		if closed {
			return
		}
	}
}

// flush writes the pending lines.
func (l *logWriter) flush() {
	l.output.Lock()
	defer l.output.Unlock()
	l.mu.Lock()
	batch := l.pending
	l.pending, l.spare = l.spare[:0], nil
	l.release()
	l.mu.Unlock()
	if len(batch) == 0 {
		return
	}
	l.out.Write(batch) // an error here has nowhere better to go
	l.mu.Lock()
	if l.spare == nil && cap(batch) <= maxPending {
		l.spare = batch[:0]
	}
	l.mu.Unlock()
}

// release lets writers waiting for room go on; l.mu is held.
func (l *logWriter) release() {
	if l.room != nil {
		close(l.room)
		l.room = nil
	}
}

// Close writes what is left and ends the goroutine; lines written after it
// are written by their writers.
func (l *logWriter) Close() {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		<-l.done
		return
	}
	l.closed = true
	l.release()
	l.mu.Unlock()
	select {
	case l.wake <- struct{}{}:
	default:
	}
	<-l.done
	l.flush()
}
