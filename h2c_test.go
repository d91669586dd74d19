package main

import (
	"context"
	"encoding/binary"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"testing/synctest"
	"time"
)

// h2cClient is an HTTP/2 client with prior knowledge, without TLS, that
// dials l.
func h2cClient(l *pipeListener) *http.Client {
	p := new(http.Protocols)
	p.SetUnencryptedHTTP2(true)
	return &http.Client{Transport: &http.Transport{
		Protocols:   p,
		DialContext: func(context.Context, string, string) (net.Conn, error) { return l.dial(), nil },
	}}
}

// TestH2CIsServedBesideHTTP1: a client speaking HTTP/2 with prior
// knowledge gets the same answers as one speaking HTTP/1.1.
func TestH2CIsServedBesideHTTP1(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := newTestGateway(t, quietMock(), nil)
		l := servePipes(t, g.cfg, g.handler, nil)
		client := h2cClient(l)
		defer client.CloseIdleConnections()
		resp, err := client.Get("http://x/getEventsByUserId/1")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.ProtoMajor != 2 || resp.StatusCode != 200 || resp.Header.Get("X-Request-Id") == "" || !strings.HasPrefix(string(body), "[") {
			t.Errorf("over h2c: %s %d, X-Request-Id %q, body %.40q; want HTTP/2 200 with the user's events", resp.Proto, resp.StatusCode, resp.Header.Get("X-Request-Id"), body)
		}
	})
}

// TestH2CLimitsHoldPerStream: over h2c, a write whose body never comes is
// 408 at the same moment as over HTTP/1.1 (REQUEST_TIMEOUT less
// UPSTREAM_TIMEOUT) and is never sent upstream; headers over 16 KiB are
// refused, and reach nothing.
func TestH2CLimitsHoldPerStream(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := newTestGateway(t, quietMock(), nil)
		l := servePipes(t, g.cfg, g.handler, nil)
		client := h2cClient(l)
		defer client.CloseIdleConnections()
		never, _ := io.Pipe()
		req, _ := http.NewRequest("POST", "http://x/addEvent", never)
		req.ContentLength = 30
		req.Header.Set("Content-Type", "application/json")
		start := time.Now()
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if took := time.Since(start); resp.StatusCode != 408 || took != g.cfg.RequestTimeout-g.cfg.UpstreamTimeout {
			t.Errorf("a body never sent over h2c: %d after %v; want 408 after %v", resp.StatusCode, took, g.cfg.RequestTimeout-g.cfg.UpstreamTimeout)
		}

		req, _ = http.NewRequest("GET", "http://x/getUsers", nil)
		req.Header.Set("X-Big", strings.Repeat("a", 20<<10))
		if resp, err := client.Do(req); err == nil {
			resp.Body.Close()
			if resp.StatusCode != 431 {
				t.Errorf("20 KiB of headers over h2c = %d; want 431 (or the client refusing to send them)", resp.StatusCode)
			}
		}
		if n := g.transport.calls.Load(); n != 0 {
			t.Errorf("%d upstream calls; want none", n)
		}
	})
}

// h2cFrame is one HTTP/2 frame: its 9-byte header, then payload.
func h2cFrame(typ, flags byte, stream uint32, payload []byte) string {
	h := make([]byte, 9, 9+len(payload))
	h[0], h[1], h[2] = byte(len(payload)>>16), byte(len(payload)>>8), byte(len(payload))
	h[3], h[4] = typ, flags
	binary.BigEndian.PutUint32(h[5:], stream)
	return string(append(h, payload...))
}

// hpackLiterals encodes headers as HPACK literals without indexing, with
// no Huffman coding (every name and value under 127 bytes).
func hpackLiterals(kv ...string) []byte {
	var b []byte
	for i := 0; i+1 < len(kv); i += 2 {
		b = append(b, 0, byte(len(kv[i])))
		b = append(b, kv[i]...)
		b = append(b, byte(len(kv[i+1])))
		b = append(b, kv[i+1]...)
	}
	return b
}

// h2cStalls are how an HTTP/2 client holds a connection without finishing
// a request: the connection preface and a SETTINGS frame, then headers cut
// short (no END_HEADERS, and no CONTINUATION ever), or a write's headers
// whose body never comes.
var h2cStalls = map[string]string{
	"h2c: headers cut short": "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + h2cFrame(0x4, 0, 0, nil) +
		h2cFrame(0x1, 0, 1, hpackLiterals(":method", "GET", ":scheme", "http")),
	"h2c: a write's body never sent": "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + h2cFrame(0x4, 0, 0, nil) +
		h2cFrame(0x1, 0x4, 1, hpackLiterals(":method", "POST", ":scheme", "http", ":authority", "x", ":path", "/addEvent",
			"authorization", "Bearer right", "content-type", "application/json", "content-length", "30")),
}

// TestAnHTTP2ConnectionIsServedWhileAnyStreamIs: with two streams served
// on one connection, the end of one leaves the connection out of those
// that may be closed to make room; the end of both puts it back.
func TestAnHTTP2ConnectionIsServedWhileAnyStreamIs(t *testing.T) {
	pl := newPipeListener()
	l := newConnLimiter(pl, 10, newMetrics())
	go pl.dial()
	c, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	lc := c.(*limitedConn)
	ctx := context.WithValue(t.Context(), limitedConnKey{}, lc)
	evictable := func() bool {
		l.mu.Lock()
		defer l.mu.Unlock()
		return lc.waiting != nil
	}
	markServing(ctx, true)
	markServing(ctx, true)
	markServing(ctx, false)
	if evictable() {
		t.Error("a connection with one of its two streams still served may be closed to make room")
	}
	markServing(ctx, false)
	if !evictable() {
		t.Error("a connection with no stream served may not be closed to make room")
	}
}

// TestH2CBuffersLittleOfABodyNobodyReads: a client may have at most a
// write's worth (64 KiB, the stream's flow-control window) of a body sent
// and unread, not Go's default of a megabyte: sending 96 KiB to a handler
// that reads nothing is a flow-control error of that stream.
func TestH2CBuffersLittleOfABodyNobodyReads(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		block := make(chan struct{})
		defer close(block)
		g := newTestGateway(t, quietMock(), nil)
		handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { <-block }) // reads nothing
		l := servePipes(t, g.cfg, handler, nil)
		c := l.dial()
		defer c.Close()
		refused := make(chan bool, 1)
		go func() { // the server's frames: a RST_STREAM of stream 1, or a GOAWAY, with FLOW_CONTROL_ERROR (3)?
			defer close(refused)
			for {
				head := make([]byte, 9)
				if _, err := io.ReadFull(c, head); err != nil {
					return
				}
				payload := make([]byte, int(head[0])<<16|int(head[1])<<8|int(head[2]))
				if _, err := io.ReadFull(c, payload); err != nil {
					return
				}
				switch typ := head[3]; {
				case typ == 0x3 && binary.BigEndian.Uint32(payload) == 3, typ == 0x7 && binary.BigEndian.Uint32(payload[4:]) == 3:
					refused <- true
					return
				}
			}
		}()
		io.WriteString(c, "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"+h2cFrame(0x4, 0, 0, nil)+
			h2cFrame(0x1, 0x4, 1, hpackLiterals(":method", "POST", ":scheme", "http", ":authority", "x", ":path", "/addEvent")))
		for range 6 { // 96 KiB
			if _, err := io.WriteString(c, h2cFrame(0x0, 0, 1, make([]byte, 16<<10))); err != nil {
				break
			}
		}
		synctest.Wait()
		c.Close() // whatever the server said has been read
		if !<-refused {
			t.Error("96 KiB of a body nobody reads was taken; want a flow-control error past 64 KiB")
		}
	})
}

// h2cSettings is the connection preface and a SETTINGS frame that opens the
// client's stream window as wide as HTTP/2 allows, and its connection
// window too: flow control never holds the gateway back.
var h2cSettings = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" +
	h2cFrame(0x4, 0, 0, []byte{0, 4, 0x7f, 0xff, 0xff, 0xff}) + // SETTINGS_INITIAL_WINDOW_SIZE = 2^31-1
	h2cFrame(0x8, 0, 0, []byte{0x7f, 0xff, 0x00, 0x00}) // WINDOW_UPDATE on the connection

// h2cGet is a HEADERS frame of a GET of path on stream id, ending it.
func h2cGet(id uint32, path string) string {
	return h2cFrame(0x1, 0x5, id, hpackLiterals(":method", "GET", ":scheme", "http", ":authority", "x", ":path", path))
}

// limitedPipes serves g on pipes behind a connection cap of max, and
// returns the listener and the number of connections the cap counts now.
func limitedPipes(t *testing.T, g *testGateway, max int) (*pipeListener, func() int) {
	var limiter *connLimiter
	l := servePipes(t, g.cfg, g.handler, func(inner net.Listener) net.Listener {
		limiter = newConnLimiter(inner, max, g.metrics)
		return limiter
	})
	return l, func() int {
		limiter.mu.Lock()
		defer limiter.mu.Unlock()
		return limiter.open
	}
}

// TestAnH2CClientThatStopsReadingIsCutOff: a client that asks for answers
// and never reads its socket (so no stream's reset can reach it either) is
// cut off once nothing could be written to it for writeStallTimeout, and
// leaves no connection and no handler behind.
func TestAnH2CClientThatStopsReadingIsCutOff(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := newTestGateway(t, quietMock(), nil)
		l, openConns := limitedPipes(t, g, 10)
		c := l.dial()
		defer c.Close()
		go func() {
			io.WriteString(c, h2cSettings)
			for id := uint32(1); id < 40; id += 2 {
				io.WriteString(c, h2cGet(id, "/metrics"))
			}
		}() // and never a read
		time.Sleep(time.Second)
		synctest.Wait()
		if open := openConns(); open != 1 {
			t.Fatalf("%d connections open while the client stalls; want its 1", open)
		}
		time.Sleep(writeStallTimeout + time.Second)
		synctest.Wait()
		if open := openConns(); open != 0 {
			t.Errorf("%d connections still open %v after the client stopped reading; want 0", open, writeStallTimeout+2*time.Second)
		}
	})
}

// TestRapidResetClosesTheConnection: a client that opens streams and
// cancels them at once (CVE-2023-44487) loses its connection after
// streamResetsAllowed of them; a few cancellations do not.
func TestRapidResetClosesTheConnection(t *testing.T) {
	for _, tt := range []struct {
		resets     int
		wantClosed bool
	}{{10, false}, {streamResetsAllowed + 20, true}} {
		synctest.Test(t, func(t *testing.T) {
			g := newTestGateway(t, hangingUpstream(), nil)
			l, openConns := limitedPipes(t, g, 10)
			c := l.dial()
			defer c.Close()
			go io.Copy(io.Discard, c)
			io.WriteString(c, h2cSettings)
			for i := range tt.resets {
				id := uint32(2*i + 1)
				io.WriteString(c, h2cGet(id, "/getEventsByUserId/1"))
				synctest.Wait()                                                                        // its handler waits for the upstream
				if _, err := io.WriteString(c, h2cFrame(0x3, 0, id, []byte{0, 0, 0, 8})); err != nil { // RST_STREAM CANCEL
					break // closed
				}
				synctest.Wait()
			}
			if open := openConns(); (open == 0) != tt.wantClosed {
				t.Errorf("after %d streams opened and cancelled: %d connections open; want closed: %v", tt.resets, openConns(), tt.wantClosed)
			}
		})
	}
}

// TestStreamsServedAtOnceAreBoundedByTheConnectionCap: with MAX_CONNECTIONS
// 2, one HTTP/2 connection gets two requests served at once, as two
// HTTP/1.1 connections would, and a third at once is 503 busy, not a
// third handler.
func TestStreamsServedAtOnceAreBoundedByTheConnectionCap(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := newTestGateway(t, hangingUpstream(), nil)
		l, _ := limitedPipes(t, g, 2)
		client := h2cClient(l)
		defer client.CloseIdleConnections()
		codes := make(chan int, 3)
		get := func() {
			resp, err := client.Get("http://x/getUsers")
			if err != nil {
				codes <- 0
				return
			}
			resp.Body.Close()
			codes <- resp.StatusCode
		}
		go get()
		go get()
		synctest.Wait() // both are served, waiting for the upstream
		go get()
		if code := <-codes; code != 503 {
			t.Errorf("a third request served at once = %d; want 503 at once", code)
		}
		for range 2 {
			if code := <-codes; code != 504 {
				t.Errorf("a request served, the upstream hanging = %d; want 504 at the deadline", code)
			}
		}
	})
}
