package main

import (
	"bufio"
	"io"
	"maps"
	"net"
	"net/http"
	"strings"
	"testing"
	"testing/synctest"
	"time"
)

// keepAlive is a client connection that sends requests one after another.
type keepAlive struct {
	c net.Conn
	r *bufio.Reader
}

// get sends GET path and returns the answer's status, 0 if the connection
// was closed instead.
func (k *keepAlive) get(path string) int {
	if _, err := io.WriteString(k.c, "GET "+path+" HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		return 0
	}
	resp, err := http.ReadResponse(k.r, nil)
	if err != nil {
		return 0
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// capped serves a gateway whose GET /getUsers waits until release is
// closed, behind a connection cap of 2, on pipes; dial opens a keep-alive
// client connection that ends with the test.
func capped(t *testing.T) (g *testGateway, dial func() *keepAlive, release chan struct{}) {
	release = make(chan struct{})
	m := quietMock()
	g = newTestGateway(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/getUsers" {
			<-release
		}
		m.ServeHTTP(w, r)
	}), nil)
	l := servePipes(t, g.cfg, g.handler, func(inner net.Listener) net.Listener { return newConnLimiter(inner, 2, g.metrics) })
	dial = func() *keepAlive {
		c := l.dial()
		t.Cleanup(func() { c.Close() })
		return &keepAlive{c, bufio.NewReader(c)}
	}
	return g, dial, release
}

// wantMetrics checks that /metrics holds each of the lines given.
func wantMetrics(t *testing.T, g *testGateway, lines ...string) {
	t.Helper()
	text := g.get("/metrics").Body.String()
	for _, want := range lines {
		if !strings.Contains(text, want+"\n") {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}

// TestConnectionCapRefusesWhenAllAreBusy: with the cap's two connections
// busy, a third is closed at once, and the busy ones are still answered.
func TestConnectionCapRefusesWhenAllAreBusy(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g, dial, release := capped(t)
		a, b := dial(), dial()
		codes := make(chan int, 2)
		go func() { codes <- a.get("/getUsers") }()
		go func() { codes <- b.get("/getUsers") }()
		synctest.Wait()

		start := time.Now()
		if _, err := dial().r.ReadByte(); err != io.EOF || time.Since(start) != 0 {
			t.Errorf("a third connection read %v after %v; want it closed at once (EOF)", err, time.Since(start))
		}
		close(release)
		if c1, c2 := <-codes, <-codes; c1 != 200 || c2 != 200 {
			t.Errorf("the two busy connections were answered %d and %d; want 200", c1, c2)
		}
		wantMetrics(t, g, "eventgate_client_connections_refused_total 1", "eventgate_client_connections 2")
	})
}

// TestConnectionCapMakesRoomFromTheIdlest: at the cap with both connections
// idle, a newcomer takes the place of the one idle longest; a connection its
// client closes frees its place without closing anyone else's.
func TestConnectionCapMakesRoomFromTheIdlest(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g, dial, release := capped(t)
		close(release)
		a, b := dial(), dial()
		a.get("/health")
		time.Sleep(time.Second)
		b.get("/health") // now a has been idle longer
		time.Sleep(time.Second)

		newcomer := dial()
		if code := newcomer.get("/health"); code != 200 {
			t.Errorf("a new connection at the cap with two idle = %d; want 200", code)
		}
		if code := a.get("/health"); code != 0 {
			t.Errorf("the connection idle longest answered %d; want it closed to make room", code)
		}
		if code := b.get("/health"); code != 200 {
			t.Errorf("the other idle connection = %d; want it kept", code)
		}

		newcomer.c.Close()
		synctest.Wait()
		if code := dial().get("/health"); code != 200 {
			t.Errorf("a new connection after one closed = %d; want 200", code)
		}
		if code := b.get("/health"); code != 200 {
			t.Errorf("b after a connection closed and another opened = %d; want it kept", code)
		}
		wantMetrics(t, g, "eventgate_client_connections_idle_closed_total 1", "eventgate_client_connections_refused_total 0")
	})
}

func TestFitToFileLimit(t *testing.T) {
	tests := []struct {
		conns, inflight, perCall int
		nofile                   uint64
		wantConns                int
		wantInflight             int
		lowered                  bool
	}{
		{10000, 4000, 1, 20000, 10000, 4000, false}, // this machine: fits
		{10000, 4000, 2, 20000, 10000, 4000, false}, // with the embedded mock too
		{10000, 4000, 1, 12064, 8000, 4000, true},   // clients give way first
		{10000, 4000, 2, 16064, 8000, 4000, true},   // … counting both ends of the mock's connections
		{10000, 4000, 2, 12064, 6000, 3000, true},   // then the upstream bound
		{10000, 4000, 1, 1024, 480, 480, true},      // a container's 1024: half each
		{100, 50, 1, 1024, 100, 50, false},
	}
	for _, tt := range tests {
		c, i, lowered := fitToFileLimit(tt.conns, tt.inflight, tt.perCall, tt.nofile)
		if c != tt.wantConns || i != tt.wantInflight || lowered != tt.lowered {
			t.Errorf("fitToFileLimit(%d, %d, %d, %d) = %d, %d, %v; want %d, %d, %v", tt.conns, tt.inflight, tt.perCall, tt.nofile, c, i, lowered, tt.wantConns, tt.wantInflight, tt.lowered)
		}
		if uint64(c+i*tt.perCall+fdReserve) > tt.nofile {
			t.Errorf("fitToFileLimit(%d, %d, %d, %d) = %d + %d×%d: more than the limit with the reserve", tt.conns, tt.inflight, tt.perCall, tt.nofile, c, i, tt.perCall)
		}
	}
}

// TestConnectionCapClosesUnfinishedRequests: a client holds the whole cap
// of 10 with connections that never finish a request: headers cut short, or
// headers complete with a body declared and never sent (a write, a read,
// with or without the token a write needs); it opens two more before each
// honest request. Each new connection takes the place of the oldest
// unfinished one, and every honest request is answered.
func TestConnectionCapClosesUnfinishedRequests(t *testing.T) {
	stalls := map[string]string{
		"headers cut short":             "GET /health HTTP/1.1\r\nHo",
		"a write's body never sent":     "POST /addEvent HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer right\r\nContent-Type: application/json\r\nContent-Length: 30\r\n\r\n",
		"a read with a body never sent": "GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: 30\r\n\r\n",
		"a write refused for its token": "POST /addEvent HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer wrong\r\nContent-Length: 30\r\n\r\n",
	}
	maps.Copy(stalls, h2cStalls)
	for name, stalled := range stalls {
		t.Run(name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				g := newTestGateway(t, quietMock(), func(c *config) { c.APIToken = "right" })
				l := servePipes(t, g.cfg, g.handler, func(inner net.Listener) net.Listener { return newConnLimiter(inner, 10, g.metrics) })
				stall := func() {
					c := l.dial()
					t.Cleanup(func() { c.Close() })
					go func() {
						io.WriteString(c, stalled) // and never the rest
						io.Copy(io.Discard, c)
					}()
					synctest.Wait()
				}
				for range 10 {
					stall()
				}
				answered := 0
				for range 20 {
					stall()
					stall()
					c := l.dial()
					k := &keepAlive{c, bufio.NewReader(c)}
					if k.get("/health") == 200 {
						answered++
					}
					c.Close()
					synctest.Wait()
				}
				if answered != 20 {
					t.Errorf("%d of 20 honest requests answered with the cap held by unfinished requests; want 20", answered)
				}
			})
		})
	}
}
