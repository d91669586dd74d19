package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// logWatcher collects run's log output and closes started when the
// listening line appears, so a test knows when the server accepts requests.
type logWatcher struct {
	mu      sync.Mutex
	buf     bytes.Buffer
	changed chan struct{} // closed and replaced on every write
	started chan struct{}
	once    sync.Once
}

func newLogWatcher() *logWatcher {
	return &logWatcher{started: make(chan struct{}), changed: make(chan struct{})}
}

func (l *logWatcher) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf.Write(p)
	if strings.Contains(l.buf.String(), "listening") {
		l.once.Do(func() { close(l.started) })
	}
	close(l.changed)
	l.changed = make(chan struct{})
	return len(p), nil
}

// waitFor blocks until the log holds s.
func (l *logWatcher) waitFor(s string) {
	for {
		l.mu.Lock()
		found, changed := strings.Contains(l.buf.String(), s), l.changed
		l.mu.Unlock()
		if found {
			return
		}
		<-changed
	}
}

func (l *logWatcher) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// freePort returns a port that was free a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

func envOf(vars map[string]string) func(string) string {
	return func(k string) string { return vars[k] }
}

// startRun starts run in the background and waits until it listens. It
// returns the log, a function that stops run, and run's result.
func startRun(t *testing.T, vars map[string]string) (*logWatcher, context.CancelFunc, <-chan error) {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	logs := newLogWatcher()
	errc := make(chan error, 1)
	go func() { errc <- run(ctx, []string{"eventgate", "-env-file="}, envOf(vars), logs, io.Discard) }()
	select {
	case <-logs.started:
	case err := <-errc:
		cancel()
		t.Fatalf("run returned before listening: %v\n%s", err, logs)
	}
	return logs, cancel, errc
}

func TestRunRefusesABadVariable(t *testing.T) {
	tests := []struct{ name, value string }{
		{"PORT", "http"},
		{"PORT", "70000"},
		{"UPSTREAM_TIMEOUT", "2"},
		{"BREAKER_THRESHOLD", "0"},
		{"MOCK_FAIL_RATE", "1.5"},
		{"UPSTREAM_URL", "ftp://x"},
		{"LOG_FORMAT", "xml"},
		{"LOG_LEVEL", "loud"},
		{"REQUEST_TIMEOUT", "2s"}, // not longer than UPSTREAM_TIMEOUT
		{"MAX_RESPONSE_BYTES", "32MB"},
		{"EVENT_CACHE_BYTES", "1KiB"},
	}
	// Cancelled: were a bad value accepted, run would return at once, not serve.
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	for _, tt := range tests {
		err := run(ctx, []string{"eventgate", "-env-file="}, envOf(map[string]string{tt.name: tt.value}), io.Discard, io.Discard)
		if err == nil || !strings.Contains(err.Error(), tt.name) {
			t.Errorf("%s=%q: run error = %v; want one naming %s", tt.name, tt.value, err, tt.name)
		}
	}
}

func TestRunReadsDotEnvButTheEnvironmentWins(t *testing.T) {
	file := t.TempDir() + "/.env"
	if err := writeFile(file, "# comment\nBREAKER_THRESHOLD=zero\nexport LOG_FORMAT='xml'\n"); err != nil {
		t.Fatal(err)
	}
	err := run(t.Context(), []string{"eventgate", "-env-file=" + file}, envOf(map[string]string{"BREAKER_THRESHOLD": "3"}), io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "LOG_FORMAT") {
		t.Errorf("run error = %v; want the .env's LOG_FORMAT refused (and its BREAKER_THRESHOLD overridden)", err)
	}
}

func TestRunReturnsListenError(t *testing.T) {
	ln, err := net.Listen("tcp", ":0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	port := strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
	err = run(t.Context(), []string{"eventgate", "-env-file="}, envOf(map[string]string{"PORT": port}), io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "listen on port "+port) {
		t.Errorf("run on a busy port = %v; want a listen error", err)
	}
}

func TestRunServesTheEmbeddedMockAndShutsDown(t *testing.T) {
	checkGoroutines(t)
	port := freePort(t)
	logs, stop, errc := startRun(t, map[string]string{"PORT": strconv.Itoa(port), "MOCK_EVENT_DELAY": "1ms", "MOCK_FAIL_RATE": "0"})
	if !strings.Contains(logs.String(), "embedded_mock=true") {
		t.Errorf("start-up log does not say the mock is embedded:\n%s", logs)
	}
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/getEventsByUserId/1", port))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(body), "event-3") {
		t.Errorf("GET /getEventsByUserId/1 = %d %q", resp.StatusCode, body)
	}
	if err := run(t.Context(), []string{"eventgate", "-healthcheck"}, envOf(map[string]string{"PORT": strconv.Itoa(port)}), io.Discard, io.Discard); err != nil {
		t.Errorf("-healthcheck against a running server: %v", err)
	}
	stop()
	if err := <-errc; err != nil {
		t.Errorf("run after shutdown = %v; want nil", err)
	}
	if err := run(t.Context(), []string{"eventgate", "-healthcheck"}, envOf(map[string]string{"PORT": strconv.Itoa(port)}), io.Discard, io.Discard); err == nil {
		t.Error("-healthcheck with no server succeeded")
	}
	http.DefaultClient.CloseIdleConnections()
}

// TestGracefulShutdownFinishesInFlightRequests signals shutdown while a
// request waits on the upstream: the request still gets its answer, run
// returns nil only after it, and the port no longer accepts connections.
func TestGracefulShutdownFinishesInFlightRequests(t *testing.T) {
	checkGoroutines(t)
	arrived, release := make(chan struct{}), make(chan struct{})
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(arrived)
		<-release
		w.Write([]byte(`[{"id": "1"}]`))
	}))
	defer up.Close()
	port := freePort(t)
	_, stop, errc := startRun(t, map[string]string{"PORT": strconv.Itoa(port), "UPSTREAM_URL": up.URL})

	client := &http.Client{Transport: &http.Transport{}}
	defer client.CloseIdleConnections()
	type result struct {
		status int
		body   string
		err    error
	}
	done := make(chan result, 1)
	go func() {
		resp, err := client.Get(fmt.Sprintf("http://127.0.0.1:%d/getUsers", port))
		if err != nil {
			done <- result{err: err}
			return
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		done <- result{status: resp.StatusCode, body: string(b)}
	}()
	<-arrived
	stop()
	select {
	case err := <-errc:
		t.Fatalf("run returned %v while a request was in flight", err)
	default:
	}
	close(release)
	if r := <-done; r.err != nil || r.status != 200 || !strings.Contains(r.body, `"id": "1"`) {
		t.Errorf("in-flight request = %d %q %v; want 200 with the upstream's body", r.status, r.body, r.err)
	}
	if err := <-errc; err != nil {
		t.Errorf("run = %v; want nil after a graceful shutdown", err)
	}
	if c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port)); err == nil {
		c.Close()
		t.Error("the port still accepts connections after shutdown")
	}
}

func writeFile(name, content string) error { return os.WriteFile(name, []byte(content), 0o600) }

// TestReadyFailsDuringTheDrain checks that after the signal, with
// SHUTDOWN_DRAIN set, the server still answers but /ready says 503, so a
// load balancer stops sending traffic before the listener closes.
func TestReadyFailsDuringTheDrain(t *testing.T) {
	checkGoroutines(t)
	port := freePort(t)
	logs, stop, errc := startRun(t, map[string]string{"PORT": strconv.Itoa(port), "SHUTDOWN_DRAIN": "500ms"})
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	get := func(path string) int {
		resp, err := client.Get(fmt.Sprintf("http://127.0.0.1:%d%s", port, path))
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := get("/ready"); code != 200 {
		t.Errorf("GET /ready before the signal = %d; want 200", code)
	}
	stop()
	logs.waitFor("draining")
	if ready, health := get("/ready"), get("/health"); ready != 503 || health != 200 {
		t.Errorf("during the drain: /ready %d, /health %d; want 503 and 200", ready, health)
	}
	if err := <-errc; err != nil {
		t.Errorf("run = %v", err)
	}
}
