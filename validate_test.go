package main

import (
	"fmt"
	"io"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

// TestSlowWriteBodiesAreNotTheUpstreamsFault sends POST /addEvent over real
// server connections whose bodies' last byte arrives late, with the default
// REQUEST_TIMEOUT (10s) and UPSTREAM_TIMEOUT (2s): a body complete while 2s
// are left is sent and stored; a later one is answered 408 at the 8s mark
// and never sent. The breaker counts none of it, so an honest write after
// them succeeds.
func TestSlowWriteBodiesAreNotTheUpstreamsFault(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m := quietMock()
		g := newTestGateway(t, m, nil)
		l := servePipes(t, g.cfg, g.handler, nil)
		write := func(name string, lastByteAt time.Duration) (int, string, time.Duration) {
			body := fmt.Sprintf(`{"name": %q, "userId": "1"}`, name)
			head := fmt.Sprintf("POST /addEvent HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", len(body), body[:len(body)-1])
			return exchange(l.dial(), head, lastByteAt, body[len(body)-1:])
		}

		tests := []struct {
			name       string
			lastByteAt time.Duration
			want       int
		}{
			{"in time", 7900 * time.Millisecond, 200},
			{"just too late", 8100 * time.Millisecond, 408},
			{"at the request deadline", 9990 * time.Millisecond, 408},
			{"after it", 11 * time.Second, 408},
		}
		codes := make([]int, len(tests))
		bodies := make([]string, len(tests))
		answeredAt := make([]time.Duration, len(tests))
		var wg sync.WaitGroup
		for i, tt := range tests {
			wg.Go(func() { codes[i], bodies[i], answeredAt[i] = write(tt.name, tt.lastByteAt) })
		}
		wg.Wait()
		for i, tt := range tests {
			_, stored := m.Event(addedID(bodies[i]))
			if codes[i] != tt.want || (tt.want == 200) != stored {
				t.Errorf("body completed at %v = %d %q, stored %v; want %d", tt.lastByteAt, codes[i], bodies[i], stored, tt.want)
			}
			if tt.want == 408 && answeredAt[i] != 8*time.Second {
				t.Errorf("body completed at %v answered after %v; want 8s, as soon as it could no longer be sent in time", tt.lastByteAt, answeredAt[i])
			}
		}
		if n := g.transport.calls.Load(); n != 1 {
			t.Errorf("the upstream received %d writes; want 1, the one in time", n)
		}
		if s := g.breaker.Snapshot(); s.State != "closed" || s.FailuresInWindow != 0 {
			t.Errorf("breaker %s with %d faults; want closed with none: slow clients are not the upstream's fault", s.State, s.FailuresInWindow)
		}
		if code, body, _ := write("honest", 0); code != 200 {
			t.Errorf("an honest write after the slow ones = %d %q; want 200", code, body)
		}
	})
}

// slowReader returns its text after a wait, as a client trickling a body.
type slowReader struct {
	wait time.Duration
	r    io.Reader
}

func (s *slowReader) Read(p []byte) (int, error) {
	time.Sleep(s.wait)
	s.wait = 0
	return s.r.Read(p)
}

// TestLateBodyWithoutAReadDeadline covers a connection that cannot take a
// read deadline: a body that has arrived with less than UPSTREAM_TIMEOUT
// left is still refused, with no upstream call.
func TestLateBodyWithoutAReadDeadline(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := newTestGateway(t, quietMock(), func(c *config) { c.RequestTimeout = 3 * time.Second })
		req := httptest.NewRequest("POST", "/addEvent", &slowReader{wait: 1500 * time.Millisecond, r: strings.NewReader(`{"name": "x", "userId": "1"}`)})
		req.Header.Set("Content-Type", "application/json")
		rec := g.serve(req)
		if rec.Code != 408 || g.transport.calls.Load() != 0 {
			t.Errorf("body complete with 1.5s of REQUEST_TIMEOUT=3s left = %d %q after %d upstream calls; want 408 and none", rec.Code, rec.Body, g.transport.calls.Load())
		}
		if s := g.breaker.Snapshot(); s.FailuresInWindow != 0 {
			t.Errorf("breaker counted %d faults; want none", s.FailuresInWindow)
		}
	})
}
