package main

// The gateway assembled: the services the handlers share and their Close,
// how they are built from the configuration (wire), the whole API in one
// list (routes), and the middleware around it (newServer).

import (
	"log/slog"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync/atomic"
	"time"
)

// services are the dependencies the handlers share.
type services struct {
	up      *upstream
	users   *listReader       // GET /getUsers, collapsed
	events  *listReader       // GET /getEvents, collapsed
	loader  *eventLoader      // events by id: bounded fan-out, cache, coalescing
	pacing  *admission        // paces POST /addEvent to what the upstream accepts
	breaker *breaker          // guards POST /addEvent against outages
	keys    *idempotencyStore // Idempotency-Key memory for POST /addEvent
	ids     idDeriver         // the event ids of keyed writes
	answers *memoryPool       // the memory budget's pool for what requests keep
	metrics *metrics
	ready   *atomic.Bool // false once shutdown has begun
}

// Close ends the goroutines the services own (the list calls, the cache's lookups, the
// breaker's open-period goroutine, the upstream client's hedges) and the
// idle upstream connections. Call it after the server has stopped serving.
func (s services) Close() {
	s.users.Close()
	s.events.Close()
	s.loader.Cache.Close()
	s.breaker.Close()
	s.up.Close()
}

// wire builds the gateway's parts from cfg; run and the tests share it.
// transport nil means the tuned transport for real upstreams. The caller
// must Close what it returns.
func wire(cfg config, logger *slog.Logger, upstreamURL string, transport http.RoundTripper) services {
	m := newMetrics()
	answers, reads := newMemoryPool(cfg.MemoryBudget-cfg.MemoryBudget/4), newMemoryPool(cfg.MemoryBudget/4)
	m.memoryPools = map[string]*memoryPool{"answers": answers, "reads": reads}
	adm := newAdmission(admissionOptions{
		MaxWait:    admissionMaxWait,
		MaxQueue:   admissionMaxQueue,
		Overloaded: isOverload,
		RetryAfter: retryAfter,
		Uncounted:  func(err error) bool { return neverSent(err) || clientMistake(err) },
		Jitter:     rand.Float64,
		Logger:     logger,
		Metrics:    m,
	})
	m.pacing = func() (float64, int) { s := adm.Snapshot(); return s.WritesPerSecond, s.Waiting }
	br := newBreaker(breakerOptions{
		Threshold:  cfg.BreakerThreshold,
		Window:     cfg.BreakerWindow,
		BackoffMin: cfg.BreakerBackoffMin,
		BackoffMax: cfg.BreakerBackoffMax,
		// The one place that says what the upstream is to blame for. An
		// overload is the admission's to answer, unless the upstream
		// refuses even its slowest pace.
		IsFault: func(err error) bool {
			if isOverload(err) {
				return adm.AtFloor()
			}
			return upstreamFault(err)
		},
		WaitAtLeast: retryAfter,
		Jitter:      rand.Float64,
		Logger:      logger,
		OnChange:    func(from, to breakerState) { m.count(m.transitions, labels{string(from), string(to)}) },
	})
	up := newUpstream(upstreamOptions{
		BaseURL:       upstreamURL,
		Authorization: cfg.UpstreamAuthorization,
		Timeout:       cfg.UpstreamTimeout,
		MaxInflight:   cfg.UpstreamMaxInflight,
		Retry:         defaultRetryPolicy(),
		MaxRetryAfter: cfg.BreakerBackoffMax,
		Hedge:         newHedgePolicy(cfg.HedgeDelay, cfg.UpstreamTimeout),
		Reads:         reads,
		Metrics:       m,
		Transport:     transport,
	})
	m.hedgeDelays = func() map[string]time.Duration { return up.hedge.delays(time.Now()) }
	m.breakerState = func() breakerState { return br.Snapshot().State }
	cache := newEventCache(cacheOptions{
		Fetch:        up.Event,
		TTL:          cfg.EventCacheTTL,
		MaxBytes:     cfg.EventCacheBytes,
		MaxRefreshes: cfg.FanoutLimit, // background work no larger than one request's
		Metrics:      m,
	})
	ready := new(atomic.Bool)
	ready.Store(true)
	return services{
		up:      up,
		users:   newListReader("getUsers", up.Users, answers),
		events:  newListReader("getEvents", up.Events, answers),
		loader:  newEventLoader(loaderOptions{Cache: cache, Limit: cfg.FanoutLimit, MaxBytes: cfg.MaxResponseBytes, Metrics: m}),
		pacing:  adm,
		breaker: br,
		keys:    newIdempotencyStore(storeOptions{TTL: cfg.IdempotencyTTL, MaxBytes: cfg.IdempotencyBytes}),
		ids:     newIDDeriver(cfg.IdempotencySecret),
		answers: answers,
		metrics: m,
		ready:   ready,
	}
}

// The admission's queue: a write waits for its turn at most 2 s (a client
// waiting longer is better told when to come back), and at most 256 wait.
const (
	admissionMaxWait  = 2 * time.Second
	admissionMaxQueue = 256
)

// route is one entry of the API: a ServeMux pattern and its handler.
type route struct {
	pattern string
	handler http.Handler
}

// routes lists the whole API. openapi.yaml documents the same list, and a
// test keeps the two in step.
func routes(cfg config, s services) []route {
	return []route{
		{"GET /getUsers", handleList(s.users, s.answers, cfg.UpstreamTimeout)},
		{"GET /getEvents", handleList(s.events, s.answers, cfg.UpstreamTimeout)},
		{"GET /getEventsByUserId/{id}", handleEventsByUser(s.up, s.loader, s.answers)},
		{"POST /addEvent", requireToken(cfg.APIToken, handleAddEvent(s.up, s.pacing, s.breaker, s.keys, s.ids, s.loader, s.answers))},
		{"GET /health", handleHealth(s.breaker, s.pacing)},
		{"GET /ready", handleReady(s.ready)},
		{"GET /metrics", s.metrics},
	}
}

// newServer returns the gateway's whole HTTP API, wrapped in the middleware
// every request passes through.
func newServer(logger *slog.Logger, cfg config, s services) http.Handler {
	mux := http.NewServeMux()
	rs := routes(cfg, s)
	for _, r := range rs {
		mux.Handle(r.pattern, r.handler)
	}
	methodsOf := pathMethods(rs)
	mux.Handle("/", handleNoRoute(methodsOf))
	return chain(mux, // outermost first
		withServingMark,
		withWriteDeadline,
		withDrainClose(s.ready),
		withSecurityHeaders,
		withRequestScope(logger),
		withDeadline(cfg.RequestTimeout),
		withAccessLog(logger, s.metrics),
		withRecovery,
		withStarTarget,
		withCanonicalPath,
		withCORS(cfg.CORS, methodsOf),
	)
}

// methods is what pathMethods finds for a path: the methods its routes have.
type methods []string

// ServeHTTP is never called: methods is a handler only to be found by a
// ServeMux.
func (methods) ServeHTTP(http.ResponseWriter, *http.Request) {}

// pathMethods returns the lookup of the methods a request's path has in
// rs (HEAD beside GET), nil for a path of none. It is worked out once,
// from rs: a lookup costs one ServeMux match, whatever the request holds.
func pathMethods(rs []route) func(*http.Request) []string {
	paths := http.NewServeMux() // each path, any method → its methods
	allowed := map[string]methods{}
	var order []string
	for _, r := range rs {
		method, path, _ := strings.Cut(r.pattern, " ")
		if _, seen := allowed[path]; !seen {
			order = append(order, path)
		}
		allowed[path] = append(allowed[path], method)
		if method == http.MethodGet {
			allowed[path] = append(allowed[path], http.MethodHead)
		}
	}
	for _, path := range order {
		paths.Handle(path, allowed[path])
	}
	return func(r *http.Request) []string {
		h, _ := paths.Handler(r)
		m, _ := h.(methods) // nil for no path, and for a redirect to the clean one
		return m
	}
}

// handleNoRoute answers what no route matched. Because "/" matches every
// method, ServeMux routes a wrong method here instead of writing its own
// plain-text 405; so this answers 405 with Allow if the path is one of the
// routes', or 404, in JSON either way.
func handleNoRoute(methodsOf func(*http.Request) []string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		allow := methodsOf(r)
		if allow == nil {
			writeError(w, r, errorf(http.StatusNotFound, "no route for %s %s", r.Method, r.URL.Path))
			return
		}
		w.Header().Set("Allow", strings.Join(allow, ", "))
		writeError(w, r, errorf(http.StatusMethodNotAllowed, "%s is not allowed on %s; use %s",
			r.Method, r.URL.Path, strings.Join(allow, " or ")))
	})
}
