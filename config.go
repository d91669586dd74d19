package main

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"maps"
	"net"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"eventgate/mock"
)

// config is everything eventgate reads from its environment, once, at start.
type config struct {
	ListenAddr     string // the interface's address; "": all interfaces
	Port           int
	MaxConnections int    // client connections open at once
	UpstreamURL    string // empty: start the embedded mock
	// UpstreamAuthorization is sent as Authorization on every upstream
	// call; empty: none. It is never logged.
	UpstreamAuthorization string
	UpstreamTimeout       time.Duration
	HedgeDelay            time.Duration // 0 (always, but in tests): the recent p95 of the call's kind; < 0: never
	RequestTimeout        time.Duration // a whole client request, fan-out included
	ShutdownDrain         time.Duration // /ready answers 503, and answers close their connections, this long before the listener closes

	BreakerThreshold  int
	BreakerWindow     time.Duration
	BreakerBackoffMin time.Duration
	BreakerBackoffMax time.Duration

	UpstreamMaxInflight int // upstream calls in flight for the whole process
	FanoutLimit         int // event lookups in flight for one request: derived, 5/8 of UpstreamMaxInflight
	EventCacheTTL       time.Duration
	EventCacheBytes     int64
	MemoryBudget        int64 // bytes held for all requests in flight at once
	MaxResponseBytes    int64 // the events of one answer: derived, an eighth of MemoryBudget

	IdempotencyTTL    time.Duration
	IdempotencyBytes  int64
	IdempotencySecret []byte // nil: a random one, so keys hold within this process only

	APIToken  string     // empty: POST /addEvent is open
	CORS      corsPolicy // CORS_ORIGINS; empty: no cross-origin requests
	LogLevel  slog.Level
	LogFormat string // "text" or "json"

	Mock mock.Options
}

// envDefaults lists every variable with its default, in the order of the
// README's table.
var envDefaults = []struct{ name, value string }{
	{"LISTEN_ADDR", ""},
	{"PORT", "3000"},
	{"MAX_CONNECTIONS", "4096"},
	{"UPSTREAM_URL", ""},
	{"UPSTREAM_AUTHORIZATION", ""},
	{"UPSTREAM_AUTHORIZATION_FILE", ""},
	{"UPSTREAM_TIMEOUT", "2s"},
	{"REQUEST_TIMEOUT", "10s"},
	{"SHUTDOWN_DRAIN", "7s"},
	{"BREAKER_THRESHOLD", "3"},
	{"BREAKER_WINDOW", "30s"},
	{"BREAKER_BACKOFF_MIN", "5s"},
	{"BREAKER_BACKOFF_MAX", "60s"},
	{"UPSTREAM_MAX_INFLIGHT", "4000"},
	{"EVENT_CACHE_TTL", "60s"},
	{"EVENT_CACHE_BYTES", "64MiB"},
	{"MEMORY_BUDGET", "256MiB"},
	{"IDEMPOTENCY_TTL", "24h"},
	{"IDEMPOTENCY_BYTES", "32MiB"},
	{"IDEMPOTENCY_SECRET", ""},
	{"API_TOKEN", ""},
	{"CORS_ORIGINS", ""},
	{"LOG_LEVEL", "info"},
	{"LOG_FORMAT", "text"},
	{"MOCK_EVENT_DELAY", "500ms"},
	{"MOCK_FAIL_RATE", "0.05"},
	{"MOCK_ADD_CAPACITY", "5"},
	{"MOCK_ADD_WINDOW", "10s"},
	{"MOCK_ADD_HICCUPS", "0"},
	{"MOCK_EVENT_TAIL_RATE", "0"},
	{"MOCK_EVENT_TAIL_DELAY", "2s"},
}

// loadConfig reads the configuration through getenv, falling back to the
// defaults above. The first bad value is an error that names its variable.
func loadConfig(getenv func(string) string) (config, error) {
	p := envParser{getenv: getenv}
	c := config{
		ListenAddr:            p.ip("LISTEN_ADDR"),
		Port:                  p.int("PORT", 0, 65535), // 0: any free port, as logged
		MaxConnections:        p.int("MAX_CONNECTIONS", 1, 1_000_000),
		UpstreamURL:           p.url("UPSTREAM_URL"),
		UpstreamAuthorization: p.credential("UPSTREAM_AUTHORIZATION"),
		UpstreamTimeout:       p.duration("UPSTREAM_TIMEOUT", time.Millisecond),
		RequestTimeout:        p.duration("REQUEST_TIMEOUT", time.Millisecond),
		ShutdownDrain:         p.duration("SHUTDOWN_DRAIN", 0),
		BreakerThreshold:      p.int("BREAKER_THRESHOLD", 1, 1_000_000),
		BreakerWindow:         p.duration("BREAKER_WINDOW", time.Millisecond),
		BreakerBackoffMin:     p.duration("BREAKER_BACKOFF_MIN", time.Millisecond),
		BreakerBackoffMax:     p.duration("BREAKER_BACKOFF_MAX", time.Millisecond),
		UpstreamMaxInflight:   p.int("UPSTREAM_MAX_INFLIGHT", 1, 100_000),
		EventCacheTTL:         p.duration("EVENT_CACHE_TTL", 0),
		EventCacheBytes:       p.bytes("EVENT_CACHE_BYTES", 1<<20),
		MemoryBudget:          p.bytes("MEMORY_BUDGET", 16<<20),
		IdempotencyTTL:        p.duration("IDEMPOTENCY_TTL", time.Second),
		IdempotencyBytes:      p.bytes("IDEMPOTENCY_BYTES", 64<<10),
		IdempotencySecret:     p.secret("IDEMPOTENCY_SECRET", minSecretBytes),
		APIToken:              p.get("API_TOKEN"),
		CORS:                  p.origins("CORS_ORIGINS"),
		LogLevel:              p.level("LOG_LEVEL"),
		LogFormat:             p.oneOf("LOG_FORMAT", "text", "json"),
		Mock: mock.Options{
			EventDelay:  p.duration("MOCK_EVENT_DELAY", 0),
			FailRate:    p.fraction("MOCK_FAIL_RATE"),
			AddWindow:   p.duration("MOCK_ADD_WINDOW", time.Millisecond),
			AddHiccups:  p.fraction("MOCK_ADD_HICCUPS"),
			TailRate:    p.fraction("MOCK_EVENT_TAIL_RATE"),
			TailDelay:   p.duration("MOCK_EVENT_TAIL_DELAY", 0),
			RejectDelay: 100 * time.Millisecond,
		},
	}
	c.Mock.AddCapacity, c.Mock.AddCapacityLater, c.Mock.AddCapacityAt = p.capacity("MOCK_ADD_CAPACITY")
	// A request may look up at most 5/8 of the process's calls at once, so
	// that a huge fan-out leaves room for everyone else; an answer may take
	// at most an eighth of the budget, so that six fit in its answers pool.
	c.FanoutLimit = max(1, c.UpstreamMaxInflight*5/8)
	c.MaxResponseBytes = c.MemoryBudget / 8
	if p.err == nil && c.BreakerBackoffMax < c.BreakerBackoffMin {
		p.fail("BREAKER_BACKOFF_MAX", c.BreakerBackoffMax.String(), "must not be shorter than BREAKER_BACKOFF_MIN")
	}
	if p.err == nil && c.RequestTimeout <= c.UpstreamTimeout {
		// A write is sent only with its whole UPSTREAM_TIMEOUT ahead of it.
		p.fail("REQUEST_TIMEOUT", c.RequestTimeout.String(), "must be longer than UPSTREAM_TIMEOUT")
	}
	return c, p.err
}

// envParser reads variables and keeps the first error, so loadConfig reads
// as a list of fields rather than a ladder of if-err checks.
type envParser struct {
	getenv func(string) string
	err    error
}

func (p *envParser) get(name string) string {
	if v := p.getenv(name); v != "" {
		return v
	}
	for _, d := range envDefaults {
		if d.name == name {
			return d.value
		}
	}
	panic("no default for " + name) // a programming error, found by the tests
}

func (p *envParser) fail(name, value, why string) {
	if name == "UPSTREAM_URL" {
		value = redacted(value) // an error message reaches logs and terminals
	}
	if p.err == nil {
		p.err = fmt.Errorf("invalid %s=%q: %s", name, value, why)
	}
}

func (p *envParser) int(name string, lo, hi int) int {
	v := p.get(name)
	n, err := strconv.Atoi(v)
	if err != nil || n < lo || n > hi {
		p.fail(name, v, fmt.Sprintf("want a whole number from %d to %d", lo, hi))
	}
	return n
}

// capacity reads the mock's writes per window (0: unlimited), which may
// change once mid-run: "5", or "5,20@60s" for 20 from 60 s after the start.
func (p *envParser) capacity(name string) (first, later int, at time.Duration) {
	v := p.get(name)
	firstText, change, changes := strings.Cut(v, ",")
	laterText, atText, _ := strings.Cut(change, "@")
	first, err := strconv.Atoi(firstText)
	if changes && err == nil {
		if later, err = strconv.Atoi(laterText); err == nil {
			at, err = time.ParseDuration(atText)
		}
	}
	if err != nil || first < 0 || later < 0 || changes && at <= 0 {
		p.fail(name, v, "want writes per window (0: unlimited), optionally changing once, like 5 or 5,20@60s")
	}
	return first, later, at
}

func (p *envParser) duration(name string, lo time.Duration) time.Duration {
	v := p.get(name)
	d, err := time.ParseDuration(v)
	if err != nil || d < lo {
		p.fail(name, v, fmt.Sprintf("want a duration of at least %v, like 500ms or 2s", lo))
	}
	return d
}

// secret reads a secret of at least min bytes; empty is nil. Its value is
// never written into an error.
func (p *envParser) secret(name string, min int) []byte {
	v := p.get(name)
	if v == "" {
		return nil
	}
	if len(v) < min {
		p.fail(name, fmt.Sprintf("(%d bytes, not shown)", len(v)), fmt.Sprintf("want at least %d bytes, like the output of: openssl rand -hex 32", min))
	}
	return []byte(v)
}

// ip reads an IP address (v4 or v6) or localhost; empty is "".
func (p *envParser) ip(name string) string {
	v := p.get(name)
	if v != "" && v != "localhost" && net.ParseIP(v) == nil {
		p.fail(name, v, "want the IP address of an interface, like 127.0.0.1 or ::1 (empty: every interface)")
	}
	return v
}

// credential reads a header value that must never be shown: from name, or
// from the file that name_FILE names (the Docker secrets convention; one
// trailing newline and surrounding spaces are dropped), not both. It must be
// visible ASCII and spaces, so that it cannot end the header it is sent in.
// Errors say its length and where it came from, never its bytes.
func (p *envParser) credential(name string) string {
	v, file := p.get(name), p.get(name+"_FILE")
	switch {
	case v != "" && file != "":
		p.fail(name, "(not shown)", "set either "+name+" or "+name+"_FILE, not both")
		return ""
	case file != "":
		data, err := os.ReadFile(file)
		if err != nil {
			p.fail(name+"_FILE", file, "cannot be read: "+err.Error())
			return ""
		}
		v = strings.TrimSpace(string(data))
		if v == "" {
			p.fail(name+"_FILE", file, "the file is empty")
		}
	}
	if !printableASCII(strings.ReplaceAll(v, " ", "")) {
		p.fail(name, fmt.Sprintf("(%d bytes, not shown)", len(v)), "want visible ASCII and spaces only, like: Bearer <token>")
		return ""
	}
	return v
}

// byteUnits are the suffixes bytes accepts, longest first.
var byteUnits = []struct {
	suffix string
	size   int64
}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}, {"B", 1}, {"", 1}}

// bytes reads a size like 64MiB, 512KiB or 1048576 (bytes).
func (p *envParser) bytes(name string, lo int64) int64 {
	v := p.get(name)
	for _, u := range byteUnits {
		digits, ok := strings.CutSuffix(v, u.suffix)
		n, err := strconv.ParseInt(strings.TrimSpace(digits), 10, 64)
		if !ok || err != nil {
			continue
		}
		if n < lo/u.size || n > (1<<50)/u.size {
			break
		}
		return n * u.size
	}
	p.fail(name, v, fmt.Sprintf("want a size of at least %s, like 64MiB, 512KiB or a number of bytes", formatBytes(lo)))
	return 0
}

func (p *envParser) fraction(name string) float64 {
	v := p.get(name)
	f, err := strconv.ParseFloat(v, 64)
	if err != nil || !(f >= 0 && f <= 1) {
		p.fail(name, v, "want a number from 0 to 1")
	}
	return f
}

func (p *envParser) oneOf(name string, allowed ...string) string {
	v := strings.ToLower(p.get(name))
	for _, a := range allowed {
		if v == a {
			return v
		}
	}
	p.fail(name, v, "want one of "+strings.Join(allowed, ", "))
	return allowed[0]
}

func (p *envParser) level(name string) slog.Level {
	v := p.get(name)
	var l slog.Level
	if err := l.UnmarshalText([]byte(v)); err != nil {
		p.fail(name, v, "want debug, info, warn or error")
	}
	return l
}

// url reads an absolute http or https base URL, without a query or a
// fragment (there is nowhere to put them when a path is appended).
func (p *envParser) url(name string) string {
	v := p.get(name)
	if v == "" {
		return ""
	}
	u, err := url.Parse(v)
	switch {
	case err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "":
		p.fail(name, v, "want an http or https URL like http://events.internal:8080")
	case u.RawQuery != "" || u.ForceQuery || u.Fragment != "" || strings.Contains(v, "#"):
		p.fail(name, v, "want a base URL without a query (?…) or a fragment (#…): eventgate appends the paths of the calls")
	}
	return v
}

// origins reads a comma-separated list of origins (scheme://host[:port],
// no path) and "*", for CORS.
func (p *envParser) origins(name string) corsPolicy {
	var c corsPolicy
	for _, o := range strings.Split(p.get(name), ",") {
		o = strings.ToLower(strings.TrimSpace(o))
		if o == "" {
			continue
		}
		if o == "*" {
			c.anyReads = true
			continue
		}
		u, err := url.Parse(o)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil || u.Path != "" || u.RawQuery != "" || u.Fragment != "" || strings.ContainsAny(o, "?#*") {
			p.fail(name, o, "want origins like https://app.example.com or http://localhost:5173, comma-separated, or * for reads from any origin")
			continue
		}
		if u.Port() == "443" && u.Scheme == "https" || u.Port() == "80" && u.Scheme == "http" {
			p.fail(name, o, "browsers send an origin without its default port: leave :"+u.Port()+" out")
			continue
		}
		c.origins = append(c.origins, o)
	}
	return c
}

// redacted returns a URL for logs and errors with every part that can hold
// a credential removed: the user information and the query.
func redacted(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(unparsable URL)"
	}
	if u.User != nil {
		u.User = url.User("REDACTED")
	}
	if u.RawQuery != "" || u.ForceQuery {
		u.RawQuery, u.ForceQuery = "REDACTED", false
	}
	u.Fragment, u.RawFragment = "", ""
	return u.String()
}

// retiredVariables are variables eventgate no longer reads, and what took
// their place; setting one is warned about at start (retiredSet).
var retiredVariables = []struct{ name, replacedBy string }{
	{"HEDGE_DELAY", "nothing: reads are always hedged at the recent 95th percentile of their kind"},
	{"FANOUT_LIMIT", "UPSTREAM_MAX_INFLIGHT (a request may take 5/8 of it)"},
	{"EVENT_CACHE_SIZE", "EVENT_CACHE_BYTES (which counts every entry)"},
	{"MAX_USER_EVENTS", "a fixed 10,000 ids per user"},
	{"MAX_RESPONSE_BYTES", "MEMORY_BUDGET (an answer may take an eighth of it)"},
	{"IDEMPOTENCY_KEYS", "IDEMPOTENCY_BYTES (which counts every key)"},
}

// retiredSet returns a warning for each retired variable that getenv sets.
func retiredSet(getenv func(string) string) []string {
	var warnings []string
	for _, r := range retiredVariables {
		if getenv(r.name) != "" {
			warnings = append(warnings, fmt.Sprintf("%s is no longer read; replaced by %s", r.name, r.replacedBy))
		}
	}
	return warnings
}

// readDotEnv reads KEY=VALUE lines from path. A missing file is no error;
// blank lines and lines starting with # are skipped; one pair of matching
// quotes around a value is removed.
func readDotEnv(path string) (map[string]string, error) {
	vars := map[string]string{}
	if path == "" {
		return vars, nil
	}
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return vars, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if rest, ok := strings.CutPrefix(line, "export"); ok && rest != "" && (rest[0] == ' ' || rest[0] == '\t') {
			line = strings.TrimLeft(rest, " \t") // as a shell reads it
		}
		key, value, ok := strings.Cut(line, "=")
		if !ok {
			return nil, fmt.Errorf("%s:%d: want KEY=VALUE", path, n)
		}
		value = strings.TrimSpace(value)
		if len(value) >= 2 && (value[0] == '"' || value[0] == '\'') && value[len(value)-1] == value[0] {
			value = value[1 : len(value)-1]
		}
		vars[strings.TrimSpace(key)] = value
	}
	return vars, sc.Err()
}

// dotEnvPrefixes are the prefixes of eventgate's variables that no other
// program's are likely to share: a name in .env with one of them that
// eventgate does not know is a mistake.
var dotEnvPrefixes = []string{"UPSTREAM_", "BREAKER_", "EVENT_CACHE_", "IDEMPOTENCY_", "MOCK_", "SHUTDOWN_", "MEMORY_", "CORS_", "API_TOKEN", "LISTEN_"}

// checkDotEnvNames returns an error naming the first name of a .env file
// (in order) that is not one eventgate knows (a retired one is known: it
// is warned about) but has one of its prefixes, is a known name in other
// letter case, or is a typo away from a known name (one edit for names of
// up to six letters, two for longer ones), with the closest known name. Other names are another program's,
// and left alone.
func checkDotEnvNames(path string, file map[string]string) error {
	known := map[string]bool{}
	for _, d := range envDefaults {
		known[d.name] = true
	}
	for _, r := range retiredVariables {
		known[r.name] = true
	}
	for _, name := range slices.Sorted(maps.Keys(file)) {
		if known[name] {
			continue
		}
		closest, distance := "", 1<<30
		for _, d := range envDefaults {
			if n := editDistance(strings.ToUpper(name), d.name); n < distance {
				closest, distance = d.name, n
			}
		}
		typo := distance <= 1 || distance <= 2 && len(name) > 6 // distance 0: another case
		if typo || slices.ContainsFunc(dotEnvPrefixes, func(p string) bool { return strings.HasPrefix(name, p) }) {
			return fmt.Errorf("%s sets %s, which eventgate does not know; did you mean %s? (README.md lists every variable)", path, name, closest)
		}
	}
	return nil
}

// editDistance is the number of single-character insertions, deletions,
// substitutions and swaps of neighbours that turn a into b.
func editDistance(a, b string) int {
	prev2, prev, cur := make([]int, len(b)+1), make([]int, len(b)+1), make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
			if i > 1 && j > 1 && a[i-1] == b[j-2] && a[i-2] == b[j-1] {
				cur[j] = min(cur[j], prev2[j-2]+1)
			}
		}
		prev2, prev, cur = prev, cur, prev2
	}
	return prev[len(b)]
}

// withDotEnv returns a getenv in which the real environment wins over the
// .env file's values.
func withDotEnv(getenv func(string) string, file map[string]string) func(string) string {
	return func(name string) string {
		if v := getenv(name); v != "" {
			return v
		}
		return file[name]
	}
}
