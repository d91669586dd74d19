package main

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
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
	"unicode"
	"unicode/utf8"
)

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

// fingerprint identifies the request's content, so that an Idempotency-Key
// reused with a different body can be told apart from a retry.
func (a addEventRequest) fingerprint() string {
	sum := sha256.Sum256([]byte(a.Name + "\x00" + a.UserID + "\x00" + a.Details))
	return hex.EncodeToString(sum[:])
}

// handleAddEvent stores a new event upstream under a fresh id. Writes pass
// the circuit breaker; with an Idempotency-Key, a retried request reuses
// its first id, so the upstream (which stores an id once) never holds it twice.
func handleAddEvent(up *upstream, br *breaker, keys *idempotencyStore) http.Handler {
	return apiHandler(func(w http.ResponseWriter, r *http.Request) error {
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxAddEventBody))
		if err != nil {
			var mbe *http.MaxBytesError
			var ne net.Error
			switch {
			case errors.As(err, &mbe):
				return err
			case errors.As(err, &ne) && ne.Timeout():
				return errorf(http.StatusRequestTimeout, "the request body arrived too slowly")
			}
			return errorf(http.StatusBadRequest, "could not read the request body")
		}
		req, err := parseAddEvent(r.Header.Get("Content-Type"), body)
		if err != nil {
			return err
		}

		id := newEventID()
		key := r.Header.Get("Idempotency-Key")
		if key != "" {
			claim, err := keys.Begin(key, req.fingerprint(), id)
			if err != nil {
				return err
			}
			if claim.Done {
				w.Header().Set("Idempotent-Replayed", "true")
				encode(w, http.StatusOK, map[string]any{"success": true, "id": claim.ID})
				return nil
			}
			id = claim.ID
		}

		err = addThroughBreaker(r, up, br, newEvent{ID: id, Name: req.Name, UserID: req.UserID, Details: req.Details})
		if key != "" {
			keys.Finish(key, err == nil)
		}
		if isNotFound(err) {
			return errorf(http.StatusNotFound, "user %q not found", req.UserID)
		}
		if err != nil {
			return err
		}
		encode(w, http.StatusOK, map[string]any{"success": true, "id": id})
		return nil
	})
}

// addThroughBreaker sends ev upstream if the breaker admits it, and tells
// the breaker how it went.
func addThroughBreaker(r *http.Request, up *upstream, br *breaker, ev newEvent) error {
	ticket, err := br.Allow()
	if err != nil {
		return err
	}
	err = up.AddEvent(r.Context(), ev)
	br.Done(ticket, err)
	return err
}

// newEventID returns a new random event id. It comes from crypto/rand, so
// two requests in the same instant, or on two instances, never collide.
func newEventID() string {
	return "event-" + strings.ToLower(rand.Text())
}

// parseAddEvent checks the Content-Type and decodes and validates a POST
// /addEvent body. Its errors are *apiError: 415 for the content type, 400
// for everything else, with the problem of each field.
func parseAddEvent(contentType string, body []byte) (addEventRequest, error) {
	if !isJSONMediaType(contentType) {
		return addEventRequest{}, errorf(http.StatusUnsupportedMediaType,
			"Content-Type must be application/json, not %q", contentType)
	}
	if !utf8.Valid(body) {
		return addEventRequest{}, errorf(http.StatusBadRequest, "request body is not valid UTF-8")
	}
	var in struct {
		Name    *string         `json:"name"`
		UserID  json.RawMessage `json:"userId"`
		Details *string         `json:"details"`
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&in); err != nil {
		return addEventRequest{}, jsonError(err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return addEventRequest{}, errorf(http.StatusBadRequest, "request body must hold one JSON object and nothing after it")
	}

	var out addEventRequest
	problems := map[string]string{}
	if in.Name == nil {
		problems["name"] = "is required"
	} else {
		out.Name = strings.TrimSpace(*in.Name)
		if p := checkText(out.Name, 1, maxNameLength, false); p != "" {
			problems["name"] = p
		}
	}
	var p string
	if out.UserID, p = parseUserID(in.UserID); p != "" {
		problems["userId"] = p
	}
	if in.Details != nil {
		out.Details = *in.Details
		if p := checkText(out.Details, 0, maxDetailsLen, true); p != "" {
			problems["details"] = p
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

// parseUserID accepts a JSON string or a whole number, as the Node service
// did, and returns it as the string sent upstream, or what is wrong with it.
func parseUserID(raw json.RawMessage) (string, string) {
	raw = bytes.TrimSpace(raw)
	var id string
	switch {
	case len(raw) == 0 || string(raw) == "null":
		return "", "is required"
	case raw[0] == '"':
		if err := json.Unmarshal(raw, &id); err != nil {
			return "", "must be a string or a whole number"
		}
	case isDigits(raw):
		id = string(raw)
	default:
		return "", "must be a string or a whole number"
	}
	if p := checkID(id); p != "" {
		return "", p
	}
	return id, ""
}

func isDigits(b []byte) bool {
	for _, c := range b {
		if c < '0' || c > '9' {
			return false
		}
	}
	return len(b) > 0
}

// checkText returns what is wrong with s, or "": its length in characters
// must be within [min, max], and it may hold no control characters but, where
// multiline is set, newlines and tabs.
func checkText(s string, min, max int, multiline bool) string {
	n := utf8.RuneCountInString(s)
	switch {
	case n < min:
		return "must not be empty"
	case n > max:
		return fmt.Sprintf("must be at most %d characters", max)
	}
	for _, c := range s {
		if unicode.IsControl(c) && !(multiline && (c == '\n' || c == '\t' || c == '\r')) {
			return "must not contain control characters"
		}
	}
	return ""
}

// isJSONMediaType reports whether a Content-Type header names JSON.
func isJSONMediaType(v string) bool {
	mt, _, err := mime.ParseMediaType(v)
	return err == nil && (mt == "application/json" || strings.HasSuffix(mt, "+json"))
}

// jsonError turns a decoding error into a 400 a person can act on.
func jsonError(err error) *apiError {
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.Is(err, io.EOF):
		return errorf(http.StatusBadRequest, "request body is empty; send a JSON object")
	case errors.Is(err, io.ErrUnexpectedEOF):
		return errorf(http.StatusBadRequest, "request body is truncated JSON")
	case errors.As(err, &syn):
		return errorf(http.StatusBadRequest, "request body is malformed JSON at byte %d", syn.Offset)
	case errors.As(err, &typ) && typ.Field == "":
		return errorf(http.StatusBadRequest, "request body must be a JSON object, not %s", typ.Value)
	case errors.As(err, &typ):
		return &apiError{
			Status:   http.StatusBadRequest,
			Message:  fmt.Sprintf("invalid event: %s must be a string, not %s", typ.Field, typ.Value),
			Problems: map[string]string{typ.Field: "must be a string"},
		}
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		field := strings.TrimPrefix(err.Error(), "json: unknown field ")
		return errorf(http.StatusBadRequest, "request body has an unknown field %s; allowed are name, userId and details", field)
	}
	return errorf(http.StatusBadRequest, "request body is not valid JSON")
}
