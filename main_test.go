package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
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

func envOf(vars map[string]string) func(string) string {
	return func(k string) string { return vars[k] }
}

// listenPort returns the port of the first "listening" line of the log.
func (l *logWatcher) listenPort(t *testing.T) int {
	t.Helper()
	m := regexp.MustCompile(`(?:addr=|"addr":")\S*?:(\d+)`).FindStringSubmatch(l.String())
	if m == nil {
		t.Fatalf("no listening address in the log:\n%s", l)
	}
	port, _ := strconv.Atoi(m[1])
	return port
}

// startRun starts run in the background on a port the system picks (PORT=0)
// and waits until it listens. It returns the log, a function that stops
// run, run's result, and the port.
func startRun(t *testing.T, vars map[string]string) (*logWatcher, context.CancelFunc, <-chan error, int) {
	t.Helper()
	vars["PORT"] = "0"
	if _, set := vars["SHUTDOWN_DRAIN"]; !set {
		vars["SHUTDOWN_DRAIN"] = "0s" // the tests that drain say so
	}
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
	return logs, cancel, errc, logs.listenPort(t)
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
	logs, stop, errc, port := startRun(t, map[string]string{"MOCK_EVENT_DELAY": "1ms", "MOCK_FAIL_RATE": "0"})
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
	_, stop, errc, port := startRun(t, map[string]string{"UPSTREAM_URL": up.URL})

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
	logs, stop, errc, port := startRun(t, map[string]string{"SHUTDOWN_DRAIN": "500ms"})
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
	keepAlive := &http.Client{}
	resp, err := keepAlive.Get(fmt.Sprintf("http://127.0.0.1:%d/health", port))
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.Close {
		t.Errorf("before the drain, an answer closed its connection")
	}
	stop()
	logs.waitFor("draining")
	if ready, health := get("/ready"), get("/health"); ready != 503 || health != 200 {
		t.Errorf("during the drain: /ready %d, /health %d; want 503 and 200", ready, health)
	}
	resp, err = keepAlive.Get(fmt.Sprintf("http://127.0.0.1:%d/health", port))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if !resp.Close { // the client reads Connection: close into Close
		t.Errorf("during the drain, an answer kept its connection; want Connection: close, so that keep-alive clients move on")
	}
	if err := <-errc; err != nil {
		t.Errorf("run = %v", err)
	}
	if text := logs.String(); strings.Contains(text, "request failed") {
		t.Errorf("the drain's /ready 503 was logged as a failure:\n%s", text)
	}
}

func TestSecondSignalStopsAtOnce(t *testing.T) {
	sigs := make(chan os.Signal, 2)
	var stderr bytes.Buffer
	shutdown, exited := make(chan struct{}), make(chan int, 1)
	go stopOnSignals(sigs, func() { close(shutdown) }, &stderr, func(code int) { exited <- code })
	sigs <- syscall.SIGTERM
	<-shutdown
	select {
	case code := <-exited:
		t.Fatalf("exited with %d at the first signal; want a graceful shutdown", code)
	default:
	}
	sigs <- syscall.SIGINT
	if code := <-exited; code != 1 || !strings.Contains(stderr.String(), "second signal (interrupt)") {
		t.Errorf("second signal: exit %d, stderr %q; want 1 and a line saying why", code, stderr.String())
	}
}

// TestSecondSignalStopsTheProcess runs eventgate as a real process (this test
// binary, running main) with a long drain, and signals it twice: it exits
// at once, with status 1, instead of draining for a minute.
func TestSecondSignalStopsTheProcess(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second) // a safety net: the drain alone is a minute
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestSecondSignalStopsTheProcess$")
	cmd.Env = append(os.Environ(), "EVENTGATE_RUN_MAIN=1", "PORT=0", "SHUTDOWN_DRAIN=1m")
	logs := newLogWatcher()
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	<-logs.started
	cmd.Process.Signal(syscall.SIGTERM)
	logs.waitFor("draining")
	cmd.Process.Signal(syscall.SIGTERM)
	err := cmd.Wait()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 1 || ctx.Err() != nil || !strings.Contains(logs.String(), "second signal") {
		t.Errorf("after two signals: %v (deadline: %v); want exit status 1 at once, saying why:\n%s", err, ctx.Err(), logs)
	}
}

// startRealServer serves the gateway's handler over TCP with the timeouts
// run sets, except a read timeout short enough for a test.
func startRealServer(t *testing.T, g *testGateway) string {
	t.Helper()
	srv := httptest.NewUnstartedServer(g.handler)
	prod := newHTTPServer(g.cfg, g.handler, slog.New(slog.DiscardHandler))
	srv.Config.ReadHeaderTimeout = prod.ReadHeaderTimeout
	srv.Config.MaxHeaderBytes = prod.MaxHeaderBytes
	srv.Config.ReadTimeout = 300 * time.Millisecond
	srv.Start()
	t.Cleanup(srv.Close)
	return srv.Listener.Addr().String()
}

// rawRequest writes raw to a new connection and returns the status and
// body of the answer.
func rawRequest(t *testing.T, addr, raw string) (string, string) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second)) // a safety net, never reached when the server is right
	if _, err := io.WriteString(c, raw); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("reading the answer: %v", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.Status, string(body)
}

// TestHostileConnections covers what only a real connection can send: an
// oversized header block and a body that stops arriving.
func TestHostileConnections(t *testing.T) {
	checkGoroutines(t)
	// The body must arrive while UPSTREAM_TIMEOUT is left of REQUEST_TIMEOUT:
	// here within 300ms.
	g := newTestGateway(t, quietMock(), func(c *config) { c.RequestTimeout = c.UpstreamTimeout + 300*time.Millisecond })
	addr := startRealServer(t, g)

	// 16 KiB of headers (net/http allows 4 KiB more): a bound of 4096
	// connections × 20 KiB at most, outside the memory budget.
	huge := "GET /getUsers HTTP/1.1\r\nHost: x\r\nX-Junk: " + strings.Repeat("a", 21<<10) + "\r\n\r\n"
	if status, _ := rawRequest(t, addr, huge); !strings.HasPrefix(status, "431") {
		t.Errorf("21 KiB of headers = %s; want 431", status)
	}
	fits := "GET /health HTTP/1.1\r\nHost: x\r\nX-Junk: " + strings.Repeat("a", 14<<10) + "\r\n\r\n"
	if status, _ := rawRequest(t, addr, fits); !strings.HasPrefix(status, "HTTP/1.1 200") && !strings.HasPrefix(status, "200") {
		t.Errorf("14 KiB of headers = %s; want 200", status)
	}

	slow := "POST /addEvent HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"name\": "
	status, body := rawRequest(t, addr, slow) // and then nothing more
	if !strings.HasPrefix(status, "408") || !strings.Contains(body, "too slowly") {
		t.Errorf("a stalled body = %s %q; want 408 with a JSON error", status, body)
	}
	if n := g.transport.calls.Load(); n != 0 {
		t.Errorf("the upstream received %d calls; want none", n)
	}
}

// TestJSONLogsCarryRequestIDsAndNoSecrets runs the real server with JSON
// logs and a token, and reads every line it logged.
func TestJSONLogsCarryRequestIDsAndNoSecrets(t *testing.T) {
	checkGoroutines(t)
	logs, stop, errc, port := startRun(t, map[string]string{
		"LOG_FORMAT": "json", "API_TOKEN": "s3cret-token", "MOCK_EVENT_DELAY": "1ms",
	})
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	client := &http.Client{Transport: &http.Transport{}}
	req, _ := http.NewRequest("POST", base+"/addEvent", strings.NewReader(`{"name": "x", "userId": "1"}`))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer s3cret-token-guess")
	req.Header.Set("X-Request-ID", "req-77")
	if resp, err := client.Do(req); err != nil || resp.StatusCode != 401 {
		t.Fatalf("wrong token: %v %v", resp, err)
	} else {
		resp.Body.Close()
	}
	client.CloseIdleConnections()
	stop()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}

	text := logs.String()
	if strings.Contains(text, "s3cret") {
		t.Errorf("the token appears in the logs:\n%s", text)
	}
	sawRequest := false
	for _, line := range strings.Split(strings.TrimSpace(text), "\n") {
		var entry map[string]any
		if err := json.Unmarshal([]byte(line), &entry); err != nil {
			t.Errorf("log line is not JSON: %q", line)
			continue
		}
		for _, key := range []string{"time", "level", "msg"} {
			if _, ok := entry[key]; !ok {
				t.Errorf("log line lacks %q: %q", key, line)
			}
		}
		if entry["msg"] == "request" {
			sawRequest = true
			d, isNumber := entry["duration"].(float64)
			client, _ := entry["client"].(string)
			if entry["request_id"] != "req-77" || entry["status"] != float64(401) || entry["route"] != "POST /addEvent" ||
				entry["path"] != "/addEvent" || !strings.HasPrefix(client, "127.0.0.1:") || entry["bytes"] != float64(len(`{"error":"a valid bearer token is required to add events"}`)+1) ||
				!isNumber || d <= 0 || d > 10 {
				t.Errorf("request log line = %q; want request_id req-77, status 401, route POST /addEvent, path /addEvent, the client's address, the body's bytes, and the duration in seconds", line)
			}
		}
	}
	if !sawRequest || !strings.Contains(text, "bearer token required") {
		t.Errorf("logs lack the request line or the start-up line's write protection:\n%s", text)
	}
}

// TestUpstreamCredentialsNeverLogged starts eventgate with a user, a
// password or a query in UPSTREAM_URL: it refuses a query; with the
// user information alone it starts, and neither the user nor the password
// is in the start-up log; a bad URL's error names the variable, without
// either, and the query's token never shows.
func TestUpstreamCredentialsNeverLogged(t *testing.T) {
	checkGoroutines(t)
	logs, stop, errc, _ := startRun(t, map[string]string{"UPSTREAM_URL": "http://alice:s3cret-pass@127.0.0.1:9"})
	stop()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if text := logs.String(); strings.Contains(text, "s3cret") || strings.Contains(text, "alice") || !strings.Contains(text, "REDACTED@127.0.0.1:9") {
		t.Errorf("start-up log shows the user information, or not the redacted URL:\n%s", text)
	}
	for _, bad := range []string{"ftp://gate:s3cret-pass@x", "http://x/api?token=s3cret", "http://x/api#s3cret", "http://x/api?"} {
		err := run(t.Context(), []string{"eventgate", "-env-file="}, envOf(map[string]string{"UPSTREAM_URL": bad}), io.Discard, io.Discard)
		if err == nil || strings.Contains(err.Error(), "s3cret") || !strings.Contains(err.Error(), "UPSTREAM_URL") {
			t.Errorf("UPSTREAM_URL=%s gave %v; want an error naming the variable, without the credential", bad, err)
		}
	}
}

// TestStartupFailuresFollowLogFormat: why eventgate stopped is one JSON
// object on stderr with LOG_FORMAT=json, and a line of text otherwise.
func TestStartupFailuresFollowLogFormat(t *testing.T) {
	failure := errors.New(`invalid PORT="x": want a whole number from 0 to 65535`)
	var js, text bytes.Buffer
	reportFailure(&js, "JSON", failure)
	reportFailure(&text, "", failure)
	var entry map[string]any
	if err := json.Unmarshal(js.Bytes(), &entry); err != nil || entry["level"] != "ERROR" || entry["err"] != failure.Error() {
		t.Errorf("with LOG_FORMAT=json: %q; want one JSON object, level ERROR, with the error", js.String())
	}
	if text.String() != "eventgate: "+failure.Error()+"\n" {
		t.Errorf("with the text format: %q", text.String())
	}
}

// TestListenAddrChoosesTheInterface: LISTEN_ADDR=127.0.0.1 listens there
// only; a value that is not an interface's address is refused.
func TestListenAddrChoosesTheInterface(t *testing.T) {
	checkGoroutines(t)
	logs, stop, errc, port := startRun(t, map[string]string{"LISTEN_ADDR": "127.0.0.1"})
	if !strings.Contains(logs.String(), fmt.Sprintf("addr=127.0.0.1:%d", port)) {
		t.Errorf("start-up log does not show 127.0.0.1:%d:\n%s", port, logs)
	}
	stop()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if _, err := loadConfig(envOf(map[string]string{"LISTEN_ADDR": "my-laptop"})); err == nil || !strings.Contains(err.Error(), "LISTEN_ADDR") {
		t.Errorf("LISTEN_ADDR=my-laptop: %v; want an error naming the variable", err)
	}
}

// TestListenNetworkFollowsTheAddress: an IPv4 address listens on IPv4
// only, an IPv6 one on IPv6 only, none or a name on both.
func TestListenNetworkFollowsTheAddress(t *testing.T) {
	for addr, want := range map[string]string{"": "tcp", "localhost": "tcp", "0.0.0.0": "tcp4", "127.0.0.1": "tcp4", "::": "tcp6", "::1": "tcp6"} {
		if got := listenNetwork(addr); got != want {
			t.Errorf("listenNetwork(%q) = %s; want %s", addr, got, want)
		}
	}
}

// TestHealthcheckNeverGoesThroughAProxy: -healthcheck asks this machine
// even with HTTP_PROXY set (in a process of its own: net/http reads the
// proxy variables once per process). Nothing listens on the address, so it
// fails, where through a proxy that answers 200 it would pass.
func TestHealthcheckNeverGoesThroughAProxy(t *testing.T) {
	var proxied atomic.Int32
	proxy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { proxied.Add(1) }))
	defer proxy.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "EVENTGATE_RUN_MAIN=1", "EVENTGATE_ARGS=-healthcheck", "LISTEN_ADDR=192.0.2.2", "PORT=3799",
		"HTTP_PROXY="+proxy.URL, "NO_PROXY=")
	out, err := cmd.CombinedOutput()
	if err == nil || proxied.Load() != 0 {
		t.Errorf("-healthcheck of a dead instance with HTTP_PROXY set: %v, %d requests reached the proxy\n%s; want a failure, and none", err, proxied.Load(), out)
	}
}
