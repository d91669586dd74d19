package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"eventgate/mock"
)

// handlerTransport is an in-memory http.RoundTripper that serves each
// request by calling h directly. With no sockets, tests can run inside a
// testing/synctest bubble, where the mock's delays take no real time. A
// handler that panics with http.ErrAbortHandler (the mock dropping a
// connection) becomes a network error, as it would be over TCP.
type handlerTransport struct {
	h     http.Handler
	calls atomic.Int64 // requests that reached h
}

func (t *handlerTransport) RoundTrip(req *http.Request) (resp *http.Response, err error) {
	t.calls.Add(1)
	defer func() {
		if v := recover(); v != nil {
			if v != http.ErrAbortHandler {
				panic(v)
			}
			resp, err = nil, errors.New("connection reset by peer")
		}
	}()
	rec := httptest.NewRecorder()
	t.h.ServeHTTP(rec, req)
	if err := req.Context().Err(); err != nil {
		return nil, err
	}
	return rec.Result(), nil
}

// testConfig is the default configuration, as if no variable were set,
// but with hedging off: tests of the other mechanisms count upstream calls
// and time them exactly. The hedging tests turn it on.
func testConfig(t testing.TB) config {
	t.Helper()
	cfg, err := loadConfig(func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	cfg.HedgeDelay = -1
	return cfg
}

// testGateway is eventgate wired as run wires it, over an in-memory upstream.
type testGateway struct {
	handler   http.Handler
	transport *handlerTransport
	breaker   *breaker
	pacing    *admission
	cache     *eventCache
	metrics   *metrics
	ready     *atomic.Bool
	cfg       config
	close     func() // ends the gateway's goroutines and idle connections; also done at cleanup
}

// newTestGateway returns eventgate in front of upstream, with the default
// configuration as changed by edit (if not nil). Its goroutines end when
// the test ends.
func newTestGateway(t testing.TB, upstream http.Handler, edit func(*config)) *testGateway {
	t.Helper()
	tr := &handlerTransport{h: upstream}
	g := newGatewayAt(t, "http://upstream.test", tr, edit)
	g.transport = tr
	return g
}

// newGatewayAt returns eventgate in front of the upstream at baseURL,
// reached through transport (nil: the production transport, over TCP).
func newGatewayAt(t testing.TB, baseURL string, transport http.RoundTripper, edit func(*config)) *testGateway {
	t.Helper()
	cfg := testConfig(t)
	if edit != nil {
		edit(&cfg)
	}
	logger := slog.New(slog.DiscardHandler)
	s := wire(cfg, logger, baseURL, transport)
	closeOnce := sync.OnceFunc(s.Close)
	t.Cleanup(closeOnce)
	return &testGateway{
		handler: newServer(logger, cfg, s), breaker: s.breaker, pacing: s.pacing, cache: s.loader.Cache,
		metrics: s.metrics, ready: s.ready, cfg: cfg, close: closeOnce,
	}
}

func quietMock() *mock.Handler { return mock.New(mock.Options{}) }

// get serves GET path and returns the recorded answer.
func (g *testGateway) get(path string) *httptest.ResponseRecorder {
	return g.serve(httptest.NewRequest(http.MethodGet, path, nil))
}

// post serves POST path with a JSON body.
func (g *testGateway) post(path, body string, header ...string) *httptest.ResponseRecorder {
	req := httptest.NewRequest(http.MethodPost, path, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	return g.serve(req)
}

func (g *testGateway) serve(req *http.Request) *httptest.ResponseRecorder {
	rec := httptest.NewRecorder()
	g.handler.ServeHTTP(rec, req)
	return rec
}

// errorBody decodes an error answer, failing the test if it is not the
// JSON error every error answer is.
func errorBody(t *testing.T, rec *httptest.ResponseRecorder) string {
	t.Helper()
	if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type = %q; want application/json", ct)
	}
	var body struct {
		Error string `json:"error"`
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil || body.Error == "" {
		t.Fatalf("body %q is not {\"error\": \"...\"}", rec.Body.String())
	}
	return body.Error
}

// decodeEvents decodes a JSON array of events.
func decodeEvents(t *testing.T, body io.Reader) []mock.Event {
	t.Helper()
	var events []mock.Event
	if err := json.NewDecoder(body).Decode(&events); err != nil {
		t.Fatalf("decoding events: %v", err)
	}
	return events
}

// checkGoroutines fails the test if, at its end, more goroutines exist than
// at its start, once those that are ending have had a moment to end.
func checkGoroutines(t *testing.T) {
	t.Helper()
	before := runtime.NumGoroutine()
	t.Cleanup(func() {
		deadline := time.Now().Add(5 * time.Second)
		for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
			runtime.Gosched() // goroutines that were told to end need to be scheduled to end
			time.Sleep(time.Millisecond)
		}
		if n := runtime.NumGoroutine(); n > before {
			buf := make([]byte, 1<<16)
			t.Errorf("%d goroutines at the end, %d at the start:\n%s", n, before, buf[:runtime.Stack(buf, true)])
		}
	})
}

// pipeListener is a net.Listener of in-memory connections (net.Pipe). An
// http.Server serves them as it serves TCP, deadlines included, so a test
// inside a synctest bubble can drive a real server byte by byte on the
// fake clock.
type pipeListener struct {
	conns  chan net.Conn
	closed chan struct{}
	once   sync.Once
}

func newPipeListener() *pipeListener {
	return &pipeListener{conns: make(chan net.Conn), closed: make(chan struct{})}
}

func (l *pipeListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

func (l *pipeListener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return nil
}

func (l *pipeListener) Addr() net.Addr { return pipeAddr{} }

// dial opens a connection to the server and returns the client's end.
func (l *pipeListener) dial() net.Conn {
	client, server := net.Pipe()
	l.conns <- server
	return client
}

type pipeAddr struct{}

func (pipeAddr) Network() string { return "pipe" }
func (pipeAddr) String() string  { return "pipe" }

// servePipes serves handler with the server run builds, on the listener
// wrap returns for a pipe listener (wrap nil: the pipe listener itself),
// until the test ends.
func servePipes(t *testing.T, cfg config, handler http.Handler, wrap func(net.Listener) net.Listener) *pipeListener {
	t.Helper()
	pl := newPipeListener()
	var l net.Listener = pl
	if wrap != nil {
		l = wrap(pl)
	}
	srv := newHTTPServer(cfg, handler, slog.New(slog.DiscardHandler))
	if cl, ok := l.(*connLimiter); ok {
		cl.attach(srv)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.Serve(l)
	}()
	t.Cleanup(func() {
		srv.Close()
		<-done
	})
	return pl
}

// exchange writes head on c, then, after wait, tail; meanwhile it reads the
// answer. It returns the answer's status code and body (0 if none came),
// and how long after the start the answer arrived.
func exchange(c net.Conn, head string, wait time.Duration, tail string) (int, string, time.Duration) {
	type answer struct {
		code int
		body string
		at   time.Duration
	}
	start := time.Now()
	got := make(chan answer, 1)
	go func() {
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			got <- answer{at: time.Since(start)}
			return
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		got <- answer{resp.StatusCode, string(body), time.Since(start)}
	}()
	io.WriteString(c, head)
	if tail != "" {
		time.Sleep(wait)
		io.WriteString(c, tail) // fails once the server has given up: that is fine
	}
	a := <-got
	c.Close()
	return a.code, a.body, a.at
}

// TestMain runs this test binary as eventgate itself (main, with the
// arguments in EVENTGATE_ARGS) when EVENTGATE_RUN_MAIN=1: tests and
// benchmarks that need a real process of their own, with no build step.
func TestMain(m *testing.M) {
	if os.Getenv("EVENTGATE_RUN_MAIN") == "1" {
		os.Args = append([]string{"eventgate", "-env-file="}, strings.Fields(os.Getenv("EVENTGATE_ARGS"))...)
		main()
		os.Exit(0)
	}
	// Goroutines that fail on purpose in tests log their stack through the
	// default logger: not into the test's output.
	slog.SetDefault(slog.New(slog.DiscardHandler))
	os.Exit(m.Run())
}

// startProcess runs eventgate in a process of its own (see TestMain) with
// the arguments and environment given and PORT=0, waits until it listens,
// and returns its base URL; the process is stopped when tb ends.
func startProcess(tb testing.TB, args string, env ...string) string {
	tb.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(append(os.Environ(), "EVENTGATE_RUN_MAIN=1", "EVENTGATE_ARGS="+args, "PORT=0", "SHUTDOWN_DRAIN=0s"), env...)
	logs := newLogWatcher()
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
	})
	<-logs.started
	m := regexp.MustCompile(`addr=\S*?:(\d+)`).FindStringSubmatch(logs.String())
	if m == nil {
		tb.Fatalf("no address in the log of %s:\n%s", args, logs)
	}
	return "http://127.0.0.1:" + m[1]
}

// noRetry is a retry policy that makes each call once.
func noRetry() retryPolicy {
	return retryPolicy{Attempts: 1, Budget: newRetryBudget(0, 0, time.Second), Jitter: func() float64 { return 0 }}
}

// testUpstream is newUpstream with what a test leaves out filled in: no
// retries, no hedges, a reads pool that never runs short, metrics nobody
// reads, and Retry-After held to a minute.
func testUpstream(o upstreamOptions) *upstream {
	if o.Metrics == nil {
		o.Metrics = newMetrics()
	}
	if o.Retry.Budget == nil {
		o.Retry = noRetry()
	}
	if o.Hedge == nil {
		o.Hedge = newHedgePolicy(-1, o.Timeout)
	}
	if o.Reads == nil {
		o.Reads = newMemoryPool(1 << 40)
	}
	if o.MaxRetryAfter == 0 {
		o.MaxRetryAfter = time.Minute
	}
	return newUpstream(o)
}

// unbounded is a memory account that is never short.
func unbounded() *memoryAccount { return newMemoryPool(1 << 40).account(0) }
