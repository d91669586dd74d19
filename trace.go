package main

import (
	"encoding/binary"
	"encoding/hex"
	"math/rand/v2"
	"strings"
)

// W3C Trace Context (Level 1), as a header format: no SDK, no spans
// recorded. A request's valid traceparent is continued, an absent or
// invalid one starts a new trace; every upstream call of the request (or
// of a shared call it started) carries the trace id with a parent id of
// its own, and the answer names the trace in traceresponse (the Level 2
// draft's header).

// traceContext is the trace a request belongs to.
type traceContext struct {
	traceID string // 32 lowercase hex digits, not all zero
	flags   string // 2 lowercase hex digits
	state   string // the tracestate to pass on, within bounds; "" for none
}

// The all-zero ids, which the specification says are invalid.
const (
	zeroTraceID  = "00000000000000000000000000000000"
	zeroParentID = "0000000000000000"
)

// Bounds on the tracestate passed on, as the specification sets them.
const (
	maxTraceStateMembers = 32
	maxTraceStateBytes   = 512
)

// parseTraceContext continues the trace of a request's traceparent and
// tracestate header lines, or starts a new one (with no tracestate: it
// belonged to the trace that was refused) if traceparent is absent,
// repeated or invalid.
func parseTraceContext(parents, states []string) traceContext {
	if len(parents) != 1 {
		return newTrace()
	}
	id, flags, ok := parseTraceparent(strings.TrimSpace(parents[0]))
	if !ok {
		return newTrace()
	}
	return traceContext{traceID: id, flags: flags, state: boundTraceState(states)}
}

// parseTraceparent reads version-traceid-parentid-flags. Version 00 is
// exactly that; a later version (not ff) may add fields after a dash,
// which are ignored, as the specification asks.
func parseTraceparent(v string) (traceID, flags string, ok bool) {
	if len(v) < 55 || !isLowerHex(v[:2]) || v[:2] == "ff" || v[2] != '-' || v[35] != '-' || v[52] != '-' {
		return "", "", false
	}
	if v[:2] == "00" && len(v) != 55 || len(v) > 55 && v[55] != '-' {
		return "", "", false
	}
	traceID, parent, flags := v[3:35], v[36:52], v[53:55]
	if !isLowerHex(traceID) || !isLowerHex(parent) || !isLowerHex(flags) ||
		traceID == zeroTraceID || parent == zeroParentID {
		return "", "", false
	}
	return traceID, flags, true
}

// boundTraceState joins the tracestate lines into one list, leaving out
// empty and malformed members, and members past the 32nd or past 512 bytes.
func boundTraceState(lines []string) string {
	var kept []string
	joined := -1 // the length of kept joined with commas, less one
	for _, line := range lines {
		for _, m := range strings.Split(line, ",") {
			m = strings.Trim(m, " \t")
			if !validTraceStateMember(m) || len(kept) == maxTraceStateMembers || joined+1+len(m) > maxTraceStateBytes {
				continue
			}
			kept = append(kept, m)
			joined += 1 + len(m)
		}
	}
	return strings.Join(kept, ",")
}

// validTraceStateMember reports whether m is key=value as tracestate
// defines them: a key is a lowercase letter and up to 255 of lowercase
// letters, digits and _-*/, or tenant@system (a tenant of a letter or
// digit and up to 240 more, a system of a letter and up to 13 more); a
// value is at most 256 visible characters but , and =, not ending in a
// space.
func validTraceStateMember(m string) bool {
	key, value, ok := strings.Cut(m, "=")
	if !ok || value == "" || len(value) > 256 || value[len(value)-1] == ' ' {
		return false
	}
	tenant, system, multi := strings.Cut(key, "@")
	switch {
	case !multi && !traceStateKeyPart(key, 256, false):
		return false
	case multi && (!traceStateKeyPart(tenant, 241, true) || !traceStateKeyPart(system, 14, false)):
		return false
	}
	for _, c := range []byte(value) {
		if c < 0x20 || c > 0x7e || c == ',' || c == '=' {
			return false
		}
	}
	return true
}

// newTrace starts a trace: a random id, not sampled.
func newTrace() traceContext { return traceContext{traceID: randomHex(16), flags: "00"} }

// header returns the traceparent of a call made in this trace, with a new
// parent id (the call's own).
func (t traceContext) header() string { return "00-" + t.traceID + "-" + randomHex(8) + "-" + t.flags }

// randomHex returns n (8 or 16) random bytes in lowercase hex, never all
// zero.
func randomHex(n int) string {
	var b [16]byte
	for {
		binary.LittleEndian.PutUint64(b[:8], rand.Uint64())
		binary.LittleEndian.PutUint64(b[8:], rand.Uint64())
		if b != [16]byte{} {
			return hex.EncodeToString(b[:n])
		}
	}
}

// traceStateKeyPart reports whether s is 1 to max characters of lowercase
// letters, digits and _-*/, starting with a lowercase letter (or, if
// digitFirst, a digit).
func traceStateKeyPart(s string, max int, digitFirst bool) bool {
	if s == "" || len(s) > max || !(s[0] >= 'a' && s[0] <= 'z' || digitFirst && s[0] >= '0' && s[0] <= '9') {
		return false
	}
	for _, c := range []byte(s) {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || strings.IndexByte("_-*/", c) >= 0) {
			return false
		}
	}
	return true
}

func isLowerHex(s string) bool {
	for _, c := range []byte(s) {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}
