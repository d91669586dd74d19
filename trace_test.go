package main

import (
	"net/http"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

const (
	clientTraceID = "4bf92f3577b34da6a3ce929d0e0e4736"
	clientParent  = "00f067aa0ba902b7"
	clientTrace   = "00-" + clientTraceID + "-" + clientParent + "-01"
)

func TestTraceparentIsReadAsTheSpecificationSays(t *testing.T) {
	for _, tt := range []struct {
		v  string
		ok bool
	}{
		{clientTrace, true},
		{"00-" + clientTraceID + "-" + clientParent + "-00", true},
		{"01-" + clientTraceID + "-" + clientParent + "-01-what-comes-later", true}, // a later version: extra fields ignored
		{"01-" + clientTraceID + "-" + clientParent + "-01", true},
		{"00-" + clientTraceID + "-" + clientParent + "-01-more", false}, // version 00 has exactly four fields
		{"ff-" + clientTraceID + "-" + clientParent + "-01", false},
		{"00-" + strings.ToUpper(clientTraceID) + "-" + clientParent + "-01", false},
		{"00-00000000000000000000000000000000-" + clientParent + "-01", false},
		{"00-" + clientTraceID + "-0000000000000000-01", false},
		{"00-" + clientTraceID[:31] + "-" + clientParent + "-01", false},
		{"00-" + clientTraceID + "-" + clientParent + "-0g", false},
		{"00_" + clientTraceID + "_" + clientParent + "_01", false},
		{"", false},
	} {
		id, flags, ok := parseTraceparent(tt.v)
		if ok != tt.ok || ok && (id != clientTraceID || flags != tt.v[53:55]) {
			t.Errorf("parseTraceparent(%q) = %q, %q, %v; want ok %v", tt.v, id, flags, ok, tt.ok)
		}
	}
}

func TestTracestateIsBounded(t *testing.T) {
	var many []string
	for i := range 40 {
		many = append(many, "k"+strings.Repeat("x", i%3)+string(rune('a'+i%26))+"=v")
	}
	long := "a=" + strings.Repeat("x", 256) + ",b=" + strings.Repeat("y", 256) + ",c=z" // a and b together: 517 bytes
	for _, tt := range []struct {
		name  string
		lines []string
		want  string
	}{
		{"two lines join", []string{"congo=t61rcWkgMzE", " rojo=00f067aa0ba902b7 "}, "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"},
		{"malformed members left out", []string{"Upper=1,ok=1,=x,novalue=,sp ace=1,bad=a,b"}, "ok=1,bad=a"},
		{"at most 32 members", []string{strings.Join(many, ",")}, strings.Join(many[:32], ",")},
		{"keys as the specification has them", []string{"@@@=1,1abc=2,a@b@c=3,*=4,ok@sys=5,1t@s=6,t@1s=7,a/b*c-d_e=8"}, "ok@sys=5,1t@s=6,a/b*c-d_e=8"},
		{"at most 512 bytes", []string{long}, "a=" + strings.Repeat("x", 256) + ",c=z"},
	} {
		if got := boundTraceState(tt.lines); got != tt.want {
			t.Errorf("%s: boundTraceState = %q; want %q", tt.name, got, tt.want)
		}
	}
}

// traceRecorder is an upstream in front of the mock that records the trace
// headers of every call.
type traceRecorder struct {
	mock    http.Handler
	delay   time.Duration
	mu      sync.Mutex
	parents []string
	states  []string
}

func (tr *traceRecorder) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	tr.mu.Lock()
	tr.parents = append(tr.parents, r.Header.Get("Traceparent"))
	tr.states = append(tr.states, r.Header.Get("Tracestate"))
	tr.mu.Unlock()
	time.Sleep(tr.delay)
	tr.mock.ServeHTTP(w, r)
}

// TestTraceContextIsContinuedUpstream: a valid traceparent's trace id and
// flags reach every upstream call, each with a parent id of its own (not
// the client's), with the tracestate; the answer's traceresponse names the
// trace. An invalid or absent one starts a new trace, without the
// tracestate that came with it.
func TestTraceContextIsContinuedUpstream(t *testing.T) {
	for _, tt := range []struct {
		name, parent string
		continued    bool
	}{{"valid", clientTrace, true}, {"invalid", "00-" + clientTraceID + "-0000000000000000-01", false}, {"absent", "", false}} {
		rec := &traceRecorder{mock: quietMock()}
		g := newTestGateway(t, rec, nil)
		req, _ := http.NewRequest("GET", "/getEventsByUserId/1", nil)
		if tt.parent != "" {
			req.Header.Set("traceparent", tt.parent)
		}
		req.Header.Set("tracestate", "congo=t61rcWkgMzE")
		answer := g.serve(req)
		response := answer.Header().Get("Traceresponse")
		traceID, _, ok := parseTraceparent(response)
		if !ok || (traceID == clientTraceID) != tt.continued {
			t.Errorf("%s: traceresponse %q; want the client's trace continued: %v", tt.name, response, tt.continued)
		}
		seen := map[string]bool{}
		for i, p := range rec.parents {
			id, flags, ok := parseTraceparent(p)
			switch {
			case !ok || id != traceID:
				t.Errorf("%s: upstream call %d carried traceparent %q; want trace %s", tt.name, i, p, traceID)
			case tt.continued && (flags != "01" || rec.states[i] != "congo=t61rcWkgMzE"):
				t.Errorf("%s: upstream call %d: flags %s, tracestate %q; want the client's", tt.name, i, flags, rec.states[i])
			case !tt.continued && rec.states[i] != "":
				t.Errorf("%s: upstream call %d passed on tracestate %q of a trace not continued", tt.name, i, rec.states[i])
			case p[36:52] == clientParent || seen[p[36:52]]:
				t.Errorf("%s: upstream call %d reused parent id %s; want one of its own", tt.name, i, p[36:52])
			}
			seen[p[36:52]] = true
		}
		if len(rec.parents) < 2 {
			t.Errorf("%s: %d upstream calls; want the user's and its events'", tt.name, len(rec.parents))
		}
	}
}

// TestASharedCallCarriesTheTraceOfTheRequestThatStartedIt: two requests
// for the same user's events share the lookups; the upstream sees each
// lookup once, in the trace of the request that started it.
func TestASharedCallCarriesTheTraceOfTheRequestThatStartedIt(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rec := &traceRecorder{mock: quietMock(), delay: 100 * time.Millisecond}
		g := newTestGateway(t, rec, func(c *config) { c.EventCacheTTL = 0 })
		get := func(parent string) {
			req, _ := http.NewRequest("GET", "/getEventsByUserId/1", nil)
			req.Header.Set("traceparent", parent)
			g.serve(req)
		}
		var wg sync.WaitGroup
		wg.Go(func() { get(clientTrace) })
		time.Sleep(50 * time.Millisecond) // the second's user is asked for while the first's is; its lookups start while the first's run
		otherID := strings.Repeat("ab", 16)
		wg.Go(func() { get("00-" + otherID + "-" + clientParent + "-01") })
		wg.Wait()
		rec.mu.Lock()
		defer rec.mu.Unlock()
		byTrace := map[string]int{}
		for _, p := range rec.parents {
			id, _, _ := parseTraceparent(p)
			byTrace[id]++
		}
		if byTrace[otherID] != 1 || byTrace[clientTraceID] < 2 || len(byTrace) != 2 {
			t.Errorf("calls by trace: %v; want the second request's user alone in its trace (its lookups were the first's), the rest in the first's", byTrace)
		}
	})
}
