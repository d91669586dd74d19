package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"mime"
	"net"
	"net/http"
	"slices"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// Decoding and validating what clients send. A client is not trusted: what
// it sends is checked here, where it enters, and a bad request is refused
// with a 4xx that says what to fix, before anything reaches the upstream.

// Limits on POST /addEvent bodies.
const (
	maxAddEventBody = 64 << 10 // bytes; more is 413
	maxNameLength   = 200      // characters, after trimming
	maxDetailsLen   = 2000     // characters
)

// addEventRequest is a validated POST /addEvent body.
type addEventRequest struct {
	Name    string
	UserID  string
	Details string
}

// bodyReservation is the memory a request's body may take: its declared
// length, if within limit, else limit.
func bodyReservation(r *http.Request, limit int64) int64 {
	if r.ContentLength >= 0 && r.ContentLength < limit {
		return r.ContentLength
	}
	return limit
}

// readWriteBody reads the body of a write, at most limit bytes. It must
// arrive while reserve (UPSTREAM_TIMEOUT) is still left before the request's
// deadline, because a write is sent upstream only with its whole timeout
// ahead of it: a client that sends its body slowly is answered 408, and
// never made to look like a slow upstream (which would count against the
// breaker) or to cause a write the client is told failed.
func readWriteBody(w http.ResponseWriter, r *http.Request, limit int64, reserve time.Duration) ([]byte, error) {
	deadline, hasDeadline := r.Context().Deadline()
	if hasDeadline {
		// Where the connection supports it, a stalled body ends at the
		// latest useful moment instead of holding the handler.
		http.NewResponseController(w).SetReadDeadline(deadline.Add(-reserve))
	}
	markServing(r.Context(), false) // the client's time: its place may go to another
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	markServing(r.Context(), true)
	var mbe *http.MaxBytesError
	var ne net.Error
	switch {
	case errors.As(err, &mbe):
		return nil, err
	case errors.As(err, &ne) && ne.Timeout():
		return nil, errorf(http.StatusRequestTimeout, "the request body arrived too slowly; nothing was stored")
	case err != nil:
		return nil, errorf(http.StatusBadRequest, "could not read the request body")
	case hasDeadline && time.Until(deadline) <= reserve:
		return nil, errorf(http.StatusRequestTimeout, "the request body arrived too late to be sent on in time; nothing was stored")
	}
	return body, nil
}

// parseAddEvent checks the Content-Type and decodes and validates a POST
// /addEvent body. Its errors are *apiError: 415 for the content type, 400
// for everything else, with the problem of each field. The JSON is read
// strictly (see strictjson.go): keys match exactly, once each.
func parseAddEvent(contentType string, body []byte) (addEventRequest, error) {
	if !isJSONMediaType(contentType) {
		return addEventRequest{}, errorf(http.StatusUnsupportedMediaType,
			"Content-Type must be application/json, not %q", contentType)
	}
	members, err := objectMembers(body)
	if err != nil {
		return addEventRequest{}, jsonError(err)
	}

	var out addEventRequest
	problems := map[string]string{"name": "is required", "userId": "is required"}
	for _, m := range members {
		var p string
		switch m.Key {
		case "name":
			out.Name, p = parseText(m.Value, 1, maxNameLength, false)
		case "userId":
			out.UserID, p = parseUserID(m.Value)
		case "details":
			out.Details, p = parseText(m.Value, 0, maxDetailsLen, true)
		default:
			return addEventRequest{}, errorf(http.StatusBadRequest,
				"request body has an unknown field %s; allowed are name, userId and details, spelled exactly so", quoteShort(m.Key))
		}
		delete(problems, m.Key)
		if p != "" {
			problems[m.Key] = p
		}
	}
	if len(problems) > 0 {
		var parts []string
		for _, k := range slices.Sorted(maps.Keys(problems)) {
			parts = append(parts, k+" "+problems[k])
		}
		return addEventRequest{}, &apiError{
			Status:   http.StatusBadRequest,
			Message:  "invalid event: " + strings.Join(parts, "; "),
			Problems: problems,
		}
	}
	return out, nil
}

// parseText reads a string field: trimmed where it is a single line, and
// checked as checkText says. null is the field left out.
func parseText(v json.RawMessage, min, max int, multiline bool) (string, string) {
	if string(v) == "null" {
		if min > 0 {
			return "", "is required"
		}
		return "", ""
	}
	s, ok := jsonString(v)
	if !ok {
		return "", "must be a string"
	}
	if !multiline {
		s = strings.TrimSpace(s)
	}
	return s, checkText(s, min, max, multiline)
}

// parseUserID accepts a JSON string or a whole number (clients of the
// service eventgate replaced send both) and returns it as the string sent
// upstream, or what is wrong with it.
func parseUserID(v json.RawMessage) (string, string) {
	var id string
	switch s, ok := jsonString(v); {
	case string(v) == "null":
		return "", "is required"
	case ok:
		id = s
	case isDigits(v):
		id = string(v)
	default:
		return "", "must be a string or a whole number"
	}
	if p := checkID(id); p != "" {
		return "", p
	}
	return id, ""
}

// checkText returns what is wrong with s, or "": its length in characters
// must be within [min, max]; it may hold no control characters but, where
// multiline is set, newlines and tabs, and no bidirectional controls (which
// make text display in another order than it is stored); and, if it is
// required (min > 0), at least one visible character: a name of only
// zero-width or space characters shows as nothing.
func checkText(s string, min, max int, multiline bool) string {
	n := utf8.RuneCountInString(s)
	switch {
	case n < min:
		return "must not be empty"
	case n > max:
		return fmt.Sprintf("must be at most %d characters", max)
	}
	visible := false
	for _, c := range s {
		switch {
		case unicode.IsControl(c) && !(multiline && (c == '\n' || c == '\t' || c == '\r')):
			return "must not contain control characters"
		case unicode.Is(unicode.Bidi_Control, c):
			return "must not contain bidirectional control characters"
		}
		visible = visible || unicode.IsGraphic(c) && !unicode.IsSpace(c)
	}
	if min > 0 && !visible {
		return "must contain a visible character"
	}
	return ""
}

// checkID returns what is wrong with an id, or "" if it is usable. Ids are
// letters, digits, '-', '_' and '.', but not "." or ".." alone: nothing that
// could change the meaning of an upstream path, even before escaping.
func checkID(id string) string {
	switch {
	case id == "":
		return "must not be empty"
	case len(id) > maxIDLength:
		return fmt.Sprintf("longer than %d characters", maxIDLength)
	case id == "." || id == "..":
		return "must not be a dot segment"
	}
	for _, c := range []byte(id) {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return "may hold only letters, digits, '-', '_' and '.'"
		}
	}
	return ""
}

// printableASCII reports whether s is visible ASCII only, as header values
// that reach logs and the upstream must be.
func printableASCII(s string) bool {
	for _, c := range []byte(s) {
		if c < 0x21 || c > 0x7e {
			return false
		}
	}
	return true
}

// maxIdempotencyKey bounds an Idempotency-Key's length, in characters.
const maxIdempotencyKey = 255

// parseIdempotencyKey reads the Idempotency-Key header as
// draft-ietf-httpapi-idempotency-key-header defines it, a structured-field
// string ("..." with \" and \\ escapes, RFC 8941), or, leniently, bare
// visible ASCII. The key is 1 to 255 characters. More than one header line
// is ambiguous, and refused.
func parseIdempotencyKey(values []string) (string, error) {
	bad := errorf(http.StatusBadRequest,
		`Idempotency-Key must be one value: a quoted string ("...") or bare visible ASCII, of 1 to %d characters`, maxIdempotencyKey)
	if len(values) != 1 {
		return "", bad
	}
	v := strings.Trim(values[0], " \t")
	key, ok := v, printableASCII(v)
	if strings.HasPrefix(v, `"`) {
		key, ok = parseSFString(v)
	}
	if !ok || key == "" || len(key) > maxIdempotencyKey {
		return "", bad
	}
	return key, nil
}

// parseSFString reads a structured-field string: printable ASCII between
// double quotes, where only \" and \\ are escapes, and nothing after.
func parseSFString(v string) (string, bool) {
	var b strings.Builder
	for i := 1; i < len(v); i++ {
		switch c := v[i]; {
		case c == '\\':
			i++
			if i == len(v) || v[i] != '"' && v[i] != '\\' {
				return "", false
			}
			b.WriteByte(v[i])
		case c == '"':
			return b.String(), i == len(v)-1
		case c < 0x20 || c > 0x7e:
			return "", false
		default:
			b.WriteByte(c)
		}
	}
	return "", false // no closing quote
}

// isJSONMediaType reports whether a Content-Type header names JSON.
func isJSONMediaType(v string) bool {
	mt, _, err := mime.ParseMediaType(v)
	return err == nil && (mt == "application/json" || strings.HasSuffix(mt, "+json"))
}

// jsonError turns a decoding error into a 400 a person can act on.
func jsonError(err error) *apiError {
	var syn *json.SyntaxError
	var strict *strictJSONError
	switch {
	case errors.Is(err, io.EOF):
		return errorf(http.StatusBadRequest, "request body is empty; send a JSON object")
	case errors.Is(err, io.ErrUnexpectedEOF):
		return errorf(http.StatusBadRequest, "request body is truncated JSON")
	case errors.As(err, &syn):
		return errorf(http.StatusBadRequest, "request body is malformed JSON at byte %d", syn.Offset)
	case errors.As(err, &strict):
		return errorf(http.StatusBadRequest, "request body %s", strict.Problem)
	}
	return errorf(http.StatusBadRequest, "request body is not valid JSON")
}
