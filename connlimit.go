package main

import (
	"net"
	"net/http"
	"sync"
	"time"
)

// connLimiter is a net.Listener that keeps at most max client connections
// open, so that neither memory nor file descriptors run out however many a
// client opens. Past the cap, a new connection takes the place of the one
// idle longest, if any is idle (a keep-alive connection costs its client
// only a new dial); if none is, the new one is closed at once, never
// queued: its client sees a refusal it can retry, not a wait.
//
// The server must report connection states to track (http.Server.ConnState),
// which is how the limiter knows which connections are idle.
type connLimiter struct {
	net.Listener
	max     int
	metrics *metrics // may be nil

	mu    sync.Mutex                // protects conns
	conns map[*limitedConn]struct{} // open connections
}

// limitedConn is a connection the limiter counts until it is closed.
type limitedConn struct {
	net.Conn
	l         *connLimiter
	idleSince time.Time // zero unless idle between requests; guarded by l.mu
	once      sync.Once
}

func newConnLimiter(inner net.Listener, max int, m *metrics) *connLimiter {
	return &connLimiter{Listener: inner, max: max, metrics: m, conns: map[*limitedConn]struct{}{}}
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
		if len(l.conns) >= l.max {
			victim = l.longestIdle()
			if victim == nil {
				l.mu.Unlock()
				c.Close()
				l.metrics.connectionRefused()
				continue
			}
			l.forget(victim)
		}
		lc := &limitedConn{Conn: c, l: l}
		l.conns[lc] = struct{}{}
		l.metrics.connectionsOpen(len(l.conns))
		l.mu.Unlock()
		if victim != nil {
			victim.Conn.Close() // the server sees its idle connection end
			l.metrics.idleConnectionClosed()
		}
		return lc, nil
	}
}

// longestIdle returns the connection idle longest, or nil. l.mu must be held.
func (l *connLimiter) longestIdle() *limitedConn {
	var oldest *limitedConn
	for c := range l.conns {
		if !c.idleSince.IsZero() && (oldest == nil || c.idleSince.Before(oldest.idleSince)) {
			oldest = c
		}
	}
	return oldest
}

// forget stops counting c. l.mu must be held.
func (l *connLimiter) forget(c *limitedConn) {
	if _, ok := l.conns[c]; ok {
		delete(l.conns, c)
		l.metrics.connectionsOpen(len(l.conns))
	}
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
		lc.idleSince = time.Now()
	case http.StateActive:
		lc.idleSince = time.Time{}
	case http.StateHijacked: // no longer the server's; closing is counted by Close
		l.forget(lc)
	}
}

// Open returns how many connections are open.
func (l *connLimiter) Open() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.conns)
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
