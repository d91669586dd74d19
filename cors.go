package main

import (
	"net/http"
	"slices"
	"strings"
)

// Cross-origin requests from browsers (CORS), for CORS_ORIGINS: an
// allow-list of exact origins, where "*" stands for any origin, for reads
// only (a write from any web page is what API_TOKEN, held by a page's
// script, would then be open to). There are no cookies, so credentials are
// never allowed: a script sends its token in Authorization itself.

// corsMaxAge is how long a browser may reuse a preflight's answer, in
// seconds: ten minutes (browsers cap it at two hours or a day).
const corsMaxAge = "600"

// corsAllowHeaders are the request headers a script may send beyond the
// ones browsers always allow.
const corsAllowHeaders = "Content-Type, Authorization, Idempotency-Key, X-Request-ID, If-None-Match, traceparent, tracestate"

// corsExposeHeaders are the answer's headers a script may read beyond the
// ones browsers always show.
const corsExposeHeaders = "Retry-After, ETag, X-Request-ID, Idempotent-Replayed, traceresponse"

// corsPolicy says which origins may call which methods.
type corsPolicy struct {
	origins  []string // exact origins, lower case, that may call every method
	anyReads bool     // "*" was listed: any origin may read (GET, HEAD)
}

// isRead reports whether method only reads.
func isRead(method string) bool { return method == http.MethodGet || method == http.MethodHead }

// allows reports whether origin may make a request of method, and what
// Access-Control-Allow-Origin says then.
func (p corsPolicy) allows(origin, method string) (string, bool) {
	switch {
	case slices.Contains(p.origins, strings.ToLower(origin)):
		return origin, true
	case p.anyReads && isRead(method):
		return "*", true
	}
	return "", false
}

// withCORS applies p, when it lists any origin. Every answer varies by
// Origin. A request from an allowed origin gets Access-Control-Allow-Origin
// and the headers it may read; one from another origin gets no CORS
// header, and its answer is otherwise the same (the browser withholds it).
// A preflight (OPTIONS with Access-Control-Request-Method) is answered
// here: 204 with the methods and headers allowed and a Max-Age, if the
// origin may make that request on that path; else 403, with no CORS header.
// methodsOf says which methods a path has.
func withCORS(p corsPolicy, methodsOf func(*http.Request) []string) middleware {
	return func(next http.Handler) http.Handler {
		if len(p.origins) == 0 && !p.anyReads {
			return next
		}
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			h := w.Header()
			h.Add("Vary", "Origin")
			origin := r.Header.Get("Origin")
			want := r.Header.Get("Access-Control-Request-Method")
			if origin == "" {
				next.ServeHTTP(w, r)
				return
			}
			if r.Method != http.MethodOptions || want == "" {
				if allow, ok := p.allows(origin, r.Method); ok {
					h.Set("Access-Control-Allow-Origin", allow)
					h.Set("Access-Control-Expose-Headers", corsExposeHeaders)
				}
				next.ServeHTTP(w, r)
				return
			}
			methods := methodsOf(r)
			allow, ok := p.allows(origin, want)
			if !ok || !slices.Contains(methods, want) {
				writeError(w, r, errorf(http.StatusForbidden, "a cross-origin %s on %s is not allowed from %s", quoteShort(want), r.URL.Path, quoteShort(origin)))
				return
			}
			h.Set("Access-Control-Allow-Origin", allow)
			h.Set("Access-Control-Allow-Methods", strings.Join(methods, ", "))
			h.Set("Access-Control-Allow-Headers", corsAllowHeaders)
			h.Set("Access-Control-Max-Age", corsMaxAge)
			w.WriteHeader(http.StatusNoContent)
		})
	}
}
