// Command eventgate is the HTTP gateway of the Event Management System: it
// answers GET /getUsers, GET /getEvents, GET /getEventsByUserId/{id} and
// POST /addEvent by calling the external Event API, and stays responsive
// when that API is slow or failing.
//
// With no UPSTREAM_URL it starts an embedded mock of the Event API, so that
// `go run .` gives a working system. See README.md for the configuration.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"runtime/debug"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"eventgate/mock"
)

func main() {
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	ctx, shutdown := context.WithCancel(context.Background())
	go guard(ctx, "signal handler", func() { stopOnSignals(sigs, shutdown, os.Stderr, os.Exit) }, nil) // ends with the process
	if err := run(ctx, os.Args, os.Getenv, os.Stdout, os.Stderr); err != nil {
		format := os.Getenv("LOG_FORMAT")
		var se *startupError
		if errors.As(err, &se) {
			format = se.logFormat
		}
		reportFailure(os.Stderr, format, err)
		os.Exit(1)
	}
}

// startupError is why run stopped once the configuration was read, with
// the LOG_FORMAT it names (the environment's or the .env's), for
// reportFailure.
type startupError struct {
	logFormat string
	err       error
}

func (e *startupError) Error() string { return e.err.Error() }
func (e *startupError) Unwrap() error { return e.err }

// reportFailure writes why eventgate stopped (a bad configuration, a port
// in use) to w as the logs are written: one JSON object if format is json
// (LOG_FORMAT as given: the configuration may be what failed), else a line
// of text.
func reportFailure(w io.Writer, format string, err error) {
	if strings.EqualFold(strings.TrimSpace(format), "json") {
		slog.New(slog.NewJSONHandler(w, nil)).Error("eventgate stopped", "err", err.Error())
		return
	}
	fmt.Fprintf(w, "eventgate: %v\n", err)
}

// stopOnSignals begins the graceful shutdown at the first signal, and at a
// second one ends the process at once with status 1: an operator who
// signals again does not want to wait for the drain.
func stopOnSignals(sigs <-chan os.Signal, shutdown func(), stderr io.Writer, exit func(int)) {
	<-sigs
	shutdown()
	s := <-sigs
	fmt.Fprintf(stderr, "eventgate: second signal (%v) during shutdown: stopping now; requests in flight are cut off\n", s)
	exit(1)
}

// run starts eventgate and blocks until ctx is cancelled, then shuts down
// gracefully: in-flight requests finish, new connections are refused. It
// returns an error if the configuration is bad or the server cannot listen.
// Everything from the operating system arrives as a parameter, so tests
// start the real server with a fake environment.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	flags := flag.NewFlagSet(args[0], flag.ContinueOnError)
	flags.SetOutput(stderr)
	envFile := flags.String("env-file", ".env", "file of KEY=VALUE defaults; the real environment wins (empty: none)")
	healthcheck := flags.Bool("healthcheck", false, "call the local /health and exit 0 if it answers 200, else 1 (for images without curl)")
	mockOnly := flags.Bool("mock", false, "serve only the mock Event API on PORT")
	showVersion := flags.Bool("version", false, "print the version and exit")
	flags.Usage = func() {
		fmt.Fprintf(flags.Output(), "usage: eventgate [flags]\n\nflags:\n")
		flags.PrintDefaults()
		fmt.Fprintf(flags.Output(), "\nenvironment variables (README.md says what each means), with their defaults:\n")
		for _, d := range envDefaults {
			fmt.Fprintf(flags.Output(), "  %s=%s\n", d.name, d.value)
		}
	}
	if err := flags.Parse(args[1:]); errors.Is(err, flag.ErrHelp) {
		return nil // asked for: not an error
	} else if err != nil {
		return err
	}
	if *showVersion {
		v, goVersion := version()
		fmt.Fprintf(stdout, "eventgate %s (%s)\n", v, goVersion)
		return nil
	}

	file, err := readDotEnv(*envFile)
	if err != nil {
		return fmt.Errorf("reading %s: %w", *envFile, err)
	}
	if err := checkDotEnvNames(*envFile, file); err != nil {
		return err
	}
	getenv = withDotEnv(getenv, file)
	if err := runWith(ctx, getenv, stdout, *healthcheck, *mockOnly); err != nil {
		return &startupError{logFormat: getenv("LOG_FORMAT"), err: err}
	}
	return nil
}

// runWith is run once the flags and the .env file are read.
func runWith(ctx context.Context, getenv func(string) string, stdout io.Writer, healthcheck, mockOnly bool) error {
	cfg, err := loadConfig(getenv)
	if err != nil {
		return err
	}
	if healthcheck {
		return checkHealth(ctx, cfg.ListenAddr, cfg.Port)
	}
	logger := newLogger(stdout, cfg)
	for _, warning := range retiredSet(getenv) {
		logger.WarnContext(ctx, warning)
	}

	if mockOnly {
		srv := newHTTPServer(cfg, mock.New(cfg.Mock), logger)
		return serve(ctx, srv, cfg, logger, "mock Event API listening", nil, nil)
	}
	return runGateway(ctx, cfg, logger)
}

// runGateway serves the gateway as cfg says until ctx is cancelled: in
// front of the embedded mock if no UPSTREAM_URL is set, with the
// connection cap and the upstream bound fitted to the open-files limit.
func runGateway(ctx context.Context, cfg config, logger *slog.Logger) error {
	if nofile := fileLimit(); nofile > 0 {
		fdsPerCall := 1
		if cfg.UpstreamURL == "" {
			fdsPerCall = 2 // the embedded mock's end of each connection is ours too
		}
		conns, inflight, lowered := fitToFileLimit(cfg.MaxConnections, cfg.UpstreamMaxInflight, fdsPerCall, nofile)
		if lowered {
			logger.WarnContext(ctx, "lowered to fit the limit on open files", "open_files_limit", nofile,
				"max_connections", conns, "was", cfg.MaxConnections, "upstream_max_inflight", inflight, "was_inflight", cfg.UpstreamMaxInflight)
		}
		cfg.MaxConnections, cfg.UpstreamMaxInflight = conns, inflight
	}

	limit := setMemoryLimit(cfg)
	upstreamURL := cfg.UpstreamURL
	if upstreamURL == "" {
		mockURL, stopMock, err := startEmbeddedMock(cfg, logger)
		if err != nil {
			return err
		}
		defer stopMock()
		upstreamURL = mockURL
	}

	proxy := upstreamProxy(upstreamURL)
	if cfg.UpstreamAuthorization != "" && proxy != "" && strings.HasPrefix(upstreamURL, "http://") {
		return fmt.Errorf("UPSTREAM_AUTHORIZATION would reach the proxy %s in the clear (UPSTREAM_URL is http): use an https UPSTREAM_URL, or exempt its host with NO_PROXY", proxy)
	}
	s := wire(cfg, logger, upstreamURL, nil)
	defer s.Close()
	srv := newHTTPServer(cfg, newServer(logger, cfg, s), logger)
	capConns := func(ln net.Listener) net.Listener {
		l := newConnLimiter(ln, cfg.MaxConnections, s.metrics)
		l.attach(srv)
		return l
	}

	v, goVersion := version()
	attrs := []any{"version", v, "go", goVersion, "upstream", redacted(upstreamURL), "embedded_mock", cfg.UpstreamURL == "", "max_connections", cfg.MaxConnections,
		"memory_budget", formatBytes(cfg.MemoryBudget), "go_memory_limit", limit}
	if cfg.UpstreamAuthorization != "" {
		attrs = append(attrs, "upstream_authorization", "set (not shown)")
	}
	if proxy != "" {
		attrs = append(attrs, "upstream_proxy", proxy+" (from HTTPS_PROXY or HTTP_PROXY; NO_PROXY exempts hosts)")
	}
	if cfg.APIToken == "" {
		attrs = append(attrs, "writes", "open: API_TOKEN is not set")
	} else {
		attrs = append(attrs, "writes", "bearer token required")
	}
	if cfg.IdempotencySecret == nil {
		attrs = append(attrs, "idempotency_keys", "within this process only: IDEMPOTENCY_SECRET is not set")
	} else {
		attrs = append(attrs, "idempotency_keys", "shared by every instance with this IDEMPOTENCY_SECRET")
	}
	return serve(ctx, srv, cfg, logger, "eventgate listening", s.ready, capConns, attrs...)
}

// upstreamProxy returns the proxy, if any, that the environment makes calls
// to upstreamURL go through, redacted for the log; "" for none.
func upstreamProxy(upstreamURL string) string {
	req, err := http.NewRequest(http.MethodGet, upstreamURL, nil)
	if err != nil {
		return ""
	}
	proxy, err := http.ProxyFromEnvironment(req)
	if err != nil || proxy == nil {
		return ""
	}
	return redacted(proxy.String())
}

// memoryLimitBaseline is what the process holds besides the memory budget
// and the two caches: the runtime, goroutine stacks, connection buffers.
const memoryLimitBaseline = 64 << 20

// setMemoryLimit sets the Go runtime's soft memory limit to everything the
// configuration bounds (the memory budget, the event cache and the key
// memory, settled and in flight) plus memoryLimitBaseline, so that the collector works harder
// before the heap outgrows them, instead of letting it double. An
// operator's GOMEMLIMIT wins. It returns the limit in force, for the log.
func setMemoryLimit(cfg config) string {
	if os.Getenv("GOMEMLIMIT") != "" {
		return "GOMEMLIMIT=" + os.Getenv("GOMEMLIMIT")
	}
	limit := cfg.MemoryBudget + cfg.EventCacheBytes + 2*cfg.IdempotencyBytes + memoryLimitBaseline // keys settled, and in flight
	debug.SetMemoryLimit(limit)
	return formatBytes(limit)
}

// newHTTPServer returns a server whose timeouts are chosen, not defaulted.
func newHTTPServer(cfg config, h http.Handler, logger *slog.Logger) *http.Server {
	return &http.Server{
		Addr:    net.JoinHostPort(cfg.ListenAddr, strconv.Itoa(cfg.Port)),
		Handler: h,
		// Headers are small: a client that takes longer is slowloris.
		ReadHeaderTimeout: 5 * time.Second,
		// The largest body is 64 KiB; ten seconds is generous for it.
		ReadTimeout: 10 * time.Second,
		// No deadline for the whole answer: a large answer to a client that
		// keeps reading, however slowly, is written whole. A client that
		// stops reading is cut by withWriteDeadline, which gives each write
		// writeStallTimeout; the request deadline bounds the rest.
		WriteTimeout: 0,
		IdleTimeout:  2 * time.Minute,
		// "OPTIONS *" reaches the middleware, which answers it in JSON.
		DisableGeneralOptionsHandler: true,
		MaxHeaderBytes:               16 << 10, // HTTP/2: the header list size it advertises
		// h2c: HTTP/2 without TLS, with prior knowledge (as Envoy, Traefik
		// and meshes speak it), beside HTTP/1.1. README.md ("HTTP/2") says
		// how each limit above holds for a stream.
		Protocols: h2cAndHTTP1(),
		HTTP2: &http.HTTP2Config{
			MaxConcurrentStreams: maxStreamsPerConn,
			// Flow control: a client may have this much of a request body
			// sent and unread, per stream (a write's whole body) and per
			// connection, instead of 1 MiB each.
			MaxReceiveBufferPerStream:     maxAddEventBody,
			MaxReceiveBufferPerConnection: 4 * maxAddEventBody,
			// A stream's write deadline only queues a reset, which a client
			// that stops reading the socket never lets out: the connection
			// itself must be cut when nothing can be written to it.
			WriteByteTimeout: writeStallTimeout,
		},
		ErrorLog: slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
	}
}

// maxStreamsPerConn bounds the requests one HTTP/2 connection may have in
// flight at once (Go's default is 250): each is a request like any other
// for the memory budget and the upstream bound.
const maxStreamsPerConn = 100

// h2cAndHTTP1 is HTTP/1.1 and HTTP/2 with prior knowledge, without TLS.
func h2cAndHTTP1() *http.Protocols {
	p := new(http.Protocols)
	p.SetHTTP1(true)
	p.SetUnencryptedHTTP2(true)
	return p
}

// shutdownTimeout bounds how long in-flight requests may take to finish
// after a signal; it is longer than the request deadline, so no handler is
// cut, only the writing of an answer to a client that reads very slowly.
func shutdownTimeout(cfg config) time.Duration { return cfg.RequestTimeout + 5*time.Second }

// serve listens, serves until ctx is done, then shuts down gracefully. A
// listen error (the port in use) is returned at once. ready, if not nil, is
// cleared as shutdown begins, so /ready turns 503 while requests drain.
// limit, if not nil, wraps the listener (the connection cap).
func serve(ctx context.Context, srv *http.Server, cfg config, logger *slog.Logger, msg string, ready *atomic.Bool, limit func(net.Listener) net.Listener, attrs ...any) error {
	ln, err := net.Listen(listenNetwork(cfg.ListenAddr), srv.Addr)
	if err != nil {
		return fmt.Errorf("listen on port %d: %w", cfg.Port, err)
	}
	if limit != nil {
		ln = limit(ln)
	}
	logger.InfoContext(ctx, msg, append([]any{"addr", ln.Addr().String()}, attrs...)...)

	errc := make(chan error, 1)
	go guard(ctx, "server", func() { errc <- srv.Serve(ln) }, func(err error) { errc <- err })
	select {
	case err := <-errc:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}

	if ready != nil {
		ready.Store(false)
		if cfg.ShutdownDrain > 0 {
			// Keep serving while load balancers see /ready fail and stop
			// sending new requests; only then close the listener. Meanwhile
			// every answer says Connection: close (withDrainClose).
			logger.Info("draining: /ready answers 503 (a second signal stops at once)", "for", cfg.ShutdownDrain)
			t := time.NewTimer(cfg.ShutdownDrain)
			<-t.C
		}
	}
	logger.Info("shutting down: finishing in-flight requests")
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownTimeout(cfg))
	defer cancel()
	if err := srv.Shutdown(sctx); errors.Is(err, context.DeadlineExceeded) {
		// Only answers still being written can be left: every handler has
		// its REQUEST_TIMEOUT. A client reading that slowly is cut off, and
		// the stop is still a clean one.
		logger.Warn("shutdown: answers still being written to slow clients were cut off", "after", shutdownTimeout(cfg))
		srv.Close()
	} else if err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	if err := <-errc; !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serve: %w", err)
	}
	logger.Info("stopped")
	return nil
}

// listenNetwork is the network to listen on for addr: IPv4 only for an IPv4
// address (Go listens on IPv6 too for 0.0.0.0 on "tcp"), IPv6 only for an
// IPv6 one, both for none or a name.
func listenNetwork(addr string) string {
	switch ip := net.ParseIP(addr); {
	case ip == nil:
		return "tcp"
	case ip.To4() != nil:
		return "tcp4"
	}
	return "tcp6"
}

// startEmbeddedMock serves the mock Event API on a loopback port and
// returns its URL and a function that stops it.
func startEmbeddedMock(cfg config, logger *slog.Logger) (string, func(), error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, fmt.Errorf("start embedded mock: %w", err)
	}
	srv := &http.Server{
		Handler:           mock.New(cfg.Mock),
		ReadHeaderTimeout: 5 * time.Second,
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelDebug),
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		guard(context.Background(), "embedded mock", func() { srv.Serve(ln) }, nil) // returns ErrServerClosed after Close
	}()
	stop := func() {
		srv.Close()
		<-done
	}
	return "http://" + ln.Addr().String(), stop, nil
}

// checkHealth calls the local /health, for -healthcheck: on the address
// listened on, or on 127.0.0.1 when that is every interface.
func checkHealth(ctx context.Context, listenAddr string, port int) error {
	host := listenAddr
	if ip := net.ParseIP(host); host == "" || ip != nil && ip.IsUnspecified() {
		host = "127.0.0.1"
	}
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+net.JoinHostPort(host, strconv.Itoa(port))+"/health", nil)
	if err != nil {
		return err
	}
	// Never through a proxy from the environment: this asks this machine.
	resp, err := (&http.Client{Transport: &http.Transport{Proxy: nil}}).Do(req)
	if err != nil {
		return fmt.Errorf("healthcheck: %w", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("healthcheck: /health answered %s", resp.Status)
	}
	return nil
}

func newLogger(w io.Writer, cfg config) *slog.Logger {
	return slog.New(newLogHandler(w, cfg.LogFormat == "json", cfg.LogLevel))
}
