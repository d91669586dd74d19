package main

import (
	"container/list"
	"context"
	"net"
	"net/http"
	"sync"
	"time"
)

// connLimiter is a net.Listener that keeps at most max client connections
// open, so that neither memory nor file descriptors run out however many a
// client opens. Past the cap, a new connection takes the place of the one
// that has waited longest without a request being served: idle between
// requests, open without having completed a request's headers, waiting for
// a request's body, or done with its handler (a keep-alive connection costs
// its client only a new dial; one that never finishes its headers or its
// body is what a client holding the cap would open). If
// every connection is being served, the new one is closed at once, never
// queued: its client sees a refusal it can retry, not a wait.
//
// The connections that may make room are kept in the order they became so,
// so that finding the one to close costs the same whatever the number open.
// attach wires the limiter into the server: its connection states, and the
// request contexts through which markServing learns that a request's headers
// are complete.
type connLimiter struct {
	net.Listener
	max     int
	metrics *metrics

	mu        sync.Mutex // protects the fields below and every limitedConn's element
	open      int        // connections counted
	served    int        // requests being served, on every connection
	evictable list.List  // of *limitedConn not being served, longest waiting first
}

// limitedConn is a connection the limiter counts until it is closed.
type limitedConn struct {
	net.Conn
	l       *connLimiter
	counted bool          // guarded by l.mu
	serving int           // requests being served on it (HTTP/2: streams); guarded by l.mu
	resets  []time.Time   // HTTP/2 streams its client cancelled, within resetWindow; guarded by l.mu
	waiting *list.Element // in l.evictable, or nil while a request is served; guarded by l.mu
	once    sync.Once
}

func newConnLimiter(inner net.Listener, max int, m *metrics) *connLimiter {
	return &connLimiter{Listener: inner, max: max, metrics: m}
}

// attach makes srv report to l: which connections are idle, and, through
// each request's context, which one a request is being served on.
func (l *connLimiter) attach(srv *http.Server) {
	srv.ConnState = l.track
	srv.ConnContext = func(ctx context.Context, c net.Conn) context.Context {
		if lc, ok := c.(*limitedConn); ok {
			return context.WithValue(ctx, limitedConnKey{}, lc)
		}
		return ctx
	}
}

type limitedConnKey struct{}

// markServing records that a request on the connection of ctx starts
// being served (true) or stops (false): from when its handler starts to
// when it returns, except while the handler waits for the client's body.
// A connection on which no request is being served (HTTP/2: no stream) may
// be closed to make room, the one that has waited longest first, so a
// client that never finishes its headers or its body holds no place; one
// that stops being served goes to the back of the line.
func markServing(ctx context.Context, serving bool) {
	lc, ok := ctx.Value(limitedConnKey{}).(*limitedConn)
	if !ok {
		return
	}
	lc.l.mu.Lock()
	defer lc.l.mu.Unlock()
	lc.l.setServing(lc, serving)
}

// startServing is markServing(ctx, true) for a request's start, which it
// refuses (false) while as many requests are being served as connections
// are allowed (MAX_CONNECTIONS). Over HTTP/1.1 that cannot happen; over
// HTTP/2 each connection may carry many streams, and 4,096 connections of
// 100 streams would otherwise be 409,600 handlers at once, each with its
// goroutine and buffers. Requests waiting for their client's body are not
// being served, and do not count.
func startServing(ctx context.Context) bool {
	lc, ok := ctx.Value(limitedConnKey{}).(*limitedConn)
	if !ok {
		return true
	}
	lc.l.mu.Lock()
	defer lc.l.mu.Unlock()
	if lc.l.served >= lc.l.max {
		return false
	}
	lc.l.setServing(lc, true)
	return true
}

// setServing counts a request on c as starting or stopping being served.
// l.mu must be held.
func (l *connLimiter) setServing(c *limitedConn, serving bool) {
	if serving {
		c.serving++
		l.served++
		l.setWaiting(c, false)
		return
	}
	c.serving--
	l.served--
	if c.serving == 0 {
		l.setWaiting(c, false)
		l.setWaiting(c, true)
	}
}

// streamResetsAllowed is how many HTTP/2 requests a client may cancel
// (RST_STREAM) on one connection within resetWindow: a client that asks
// and cancels faster than that (rapid reset, CVE-2023-44487) loses the
// connection. Browsers cancel a few when a page is left.
const (
	streamResetsAllowed = 100
	resetWindow         = 10 * time.Second
)

// streamReset counts a request its client cancelled on the connection of
// ctx, at now, and closes the connection once there are more than
// streamResetsAllowed within resetWindow.
func streamReset(ctx context.Context, now time.Time) {
	lc, ok := ctx.Value(limitedConnKey{}).(*limitedConn)
	if !ok {
		return
	}
	lc.l.mu.Lock()
	cutoff := now.Add(-resetWindow)
	for len(lc.resets) > 0 && !lc.resets[0].After(cutoff) {
		lc.resets = lc.resets[1:]
	}
	lc.resets = append(lc.resets, now)
	tooMany := len(lc.resets) > streamResetsAllowed
	lc.l.mu.Unlock()
	if tooMany {
		lc.Close()
	}
}

// Accept returns the next connection that fits under the cap.
func (l *connLimiter) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		l.mu.Lock()
		var victim *limitedConn
		if l.open >= l.max {
			front := l.evictable.Front()
			if front == nil {
				l.mu.Unlock()
				c.Close()
				l.metrics.clientRefused.Add(1)
				continue
			}
			victim = front.Value.(*limitedConn)
			l.forget(victim)
		}
		lc := &limitedConn{Conn: c, l: l, counted: true}
		l.open++
		l.setWaiting(lc, true)
		l.metrics.clientConns.Store(int64(l.open))
		l.mu.Unlock()
		if victim != nil {
			victim.Conn.Close() // the server sees its connection end
			l.metrics.clientIdleEvicted.Add(1)
		}
		return lc, nil
	}
}

// setWaiting puts c at the back of the evictable list, or takes it out.
// l.mu must be held.
func (l *connLimiter) setWaiting(c *limitedConn, waiting bool) {
	switch {
	case waiting && c.waiting == nil && c.counted:
		c.waiting = l.evictable.PushBack(c)
	case !waiting && c.waiting != nil:
		l.evictable.Remove(c.waiting)
		c.waiting = nil
	}
}

// forget stops counting c. l.mu must be held.
func (l *connLimiter) forget(c *limitedConn) {
	if !c.counted {
		return
	}
	l.setWaiting(c, false)
	c.counted = false
	l.open--
	l.metrics.clientConns.Store(int64(l.open))
}

// track is the server's ConnState hook.
func (l *connLimiter) track(c net.Conn, state http.ConnState) {
	lc, ok := c.(*limitedConn)
	if !ok {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	switch state {
	case http.StateIdle:
		if lc.serving == 0 {
			l.setWaiting(lc, false) // to the back: it has waited no time yet
			l.setWaiting(lc, true)
		}
	case http.StateHijacked: // no longer the server's; closing is counted by Close
		l.forget(lc)
	}
}

func (c *limitedConn) Close() error {
	c.once.Do(func() {
		c.l.mu.Lock()
		c.l.forget(c)
		c.l.mu.Unlock()
	})
	return c.Conn.Close()
}

// fdReserve is the file descriptors kept for everything but connections:
// the listener, logs, the embedded mock's own, the runtime.
const fdReserve = 64

// fitToFileLimit returns the client connection cap and the upstream
// in-flight bound to use so that both fit, with fdReserve, within nofile
// file descriptors. Each upstream call in flight holds at most one
// connection (the transport's MaxConnsPerHost), which costs fdsPerCall
// descriptors: 1, or 2 when the upstream is the embedded mock, whose end of
// the connection is in this process too. If they do not fit as configured,
// clients keep what the upstream bound leaves, but at least half, and the
// upstream bound gets the rest. lowered reports a change.
func fitToFileLimit(maxConns, maxInflight, fdsPerCall int, nofile uint64) (conns, inflight int, lowered bool) {
	budget := int(min(nofile, 1<<30)) - fdReserve
	if maxConns+maxInflight*fdsPerCall <= budget {
		return maxConns, maxInflight, false
	}
	conns = max(1, min(maxConns, max(budget-maxInflight*fdsPerCall, budget/2)))
	inflight = max(1, min(maxInflight, (budget-conns)/fdsPerCall))
	return conns, inflight, true
}
