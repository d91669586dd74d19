package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"unicode/utf16"
	"unicode/utf8"
)

// Strict JSON objects, for both sides of the trust boundary.
//
// encoding/json is lenient where a boundary must not be: it matches keys
// case-insensitively, lets the last of two equal keys win, and turns
// invalid UTF-8 and unpaired UTF-16 surrogates into U+FFFD. Two readers of
// one body (a proxy in front, eventgate, the Event API behind) could then
// read two different messages. objectMembers reads an object the one way it
// can be read, or refuses it.

// member is one top-level member of a JSON object: its key, unescaped, and
// its value exactly as sent.
type member struct {
	Key   string
	Value json.RawMessage
}

// strictJSONError says why a document is not a strict JSON object, in words
// that complete "the body …" or "the answer …".
type strictJSONError struct{ Problem string }

func (e *strictJSONError) Error() string { return "JSON " + e.Problem }

// maxMembers bounds the members of one object. Every object either side
// sends has at most five; a hundred thousand would cost tens of
// milliseconds to read.
const maxMembers = 64

// objectMembers returns the members of the JSON object data, in order. It
// fails if data is not exactly one JSON object (a *json.SyntaxError, or
// io.EOF / io.ErrUnexpectedEOF for empty and truncated input), or if
// anything in it could be read two ways: a key given twice, invalid UTF-8,
// or an escaped surrogate without its pair (a *strictJSONError). An object
// of more than maxMembers members is refused too, so that no body, from
// either side, costs more than a few microseconds of CPU per object.
func objectMembers(data []byte) ([]member, error) {
	if !json.Valid(data) {
		return nil, syntaxError(data)
	}
	if !utf8.Valid(data) {
		return nil, &strictJSONError{"is not valid UTF-8"}
	}
	d := bytes.TrimSpace(data)
	if d[0] != '{' {
		return nil, &strictJSONError{"must be an object, not " + jsonKind(d[0])}
	}
	// d is valid JSON, so the scan below only has to find boundaries, and
	// the surrogates encoding/json would not refuse.
	var members []member
	i := skipSpace(d, 1)
	if d[i] == '}' {
		return members, nil
	}
	for {
		keyEnd, err := scanString(d, i)
		if err != nil {
			return nil, err
		}
		key := unquote(d[i:keyEnd])
		i = skipSpace(d, skipSpace(d, keyEnd)+1) // past the colon
		valueEnd, err := scanValue(d, i)
		if err != nil {
			return nil, err
		}
		if len(members) == maxMembers {
			return nil, &strictJSONError{fmt.Sprintf("has more than %d members", maxMembers)}
		}
		if slices.ContainsFunc(members, func(m member) bool { return m.Key == key }) { // at most maxMembers: cheap
			return nil, &strictJSONError{fmt.Sprintf("has the key %s twice", quoteShort(key))}
		}
		members = append(members, member{Key: key, Value: d[i:valueEnd]})
		i = skipSpace(d, valueEnd)
		if d[i] == '}' {
			return members, nil
		}
		i = skipSpace(d, i+1) // past the comma
	}
}

// syntaxError returns the error json.Decoder gives for data, which is not
// valid JSON: io.EOF when empty, io.ErrUnexpectedEOF when truncated, a
// *json.SyntaxError otherwise (also for anything after the first value).
func syntaxError(data []byte) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	var v json.RawMessage
	if err := dec.Decode(&v); err != nil {
		return err
	}
	return &strictJSONError{"must hold one value and nothing after it"}
}

// field returns the value of the member named exactly key, or nil. A
// member whose key differs from key only in case makes the object
// ambiguous (a case-insensitive reader would take it for key): that is an
// error.
func field(members []member, key string) (json.RawMessage, error) {
	var value json.RawMessage
	for _, m := range members {
		switch {
		case m.Key == key:
			value = m.Value
		case strings.EqualFold(m.Key, key):
			return nil, &strictJSONError{fmt.Sprintf("has %s beside %s", quoteShort(m.Key), quoteShort(key))}
		}
	}
	return value, nil
}

// jsonKind names the kind of JSON value that starts with c.
func jsonKind(c byte) string {
	switch c {
	case '[':
		return "an array"
	case '"':
		return "a string"
	case 't', 'f':
		return "a boolean"
	case 'n':
		return "null"
	}
	return "a number"
}

// quoteShort quotes s for a message, cut to 40 bytes: keys come from the
// other side and may be long.
func quoteShort(s string) string {
	if len(s) > 40 {
		return fmt.Sprintf("%q…", s[:40])
	}
	return fmt.Sprintf("%q", s)
}

func skipSpace(d []byte, i int) int {
	for i < len(d) && (d[i] == ' ' || d[i] == '\t' || d[i] == '\r' || d[i] == '\n') {
		i++
	}
	return i
}

// scanString returns the index just past the string starting at d[i] (a
// quote), or an error if it escapes half of a surrogate pair.
func scanString(d []byte, i int) (int, error) {
	for j := i + 1; ; {
		switch d[j] {
		case '"':
			return j + 1, nil
		case '\\':
			if d[j+1] != 'u' {
				j += 2
				continue
			}
			r := hex4(d[j+2 : j+6])
			j += 6
			if !utf16.IsSurrogate(r) {
				continue
			}
			// A high surrogate must be followed at once by an escaped low one.
			if r < 0xDC00 && j+6 <= len(d) && d[j] == '\\' && d[j+1] == 'u' {
				if low := hex4(d[j+2 : j+6]); low >= 0xDC00 && low <= 0xDFFF {
					j += 6
					continue
				}
			}
			return 0, &strictJSONError{"has a string with an unpaired surrogate"}
		default:
			j++
		}
	}
}

// scanValue returns the index just past the value starting at d[i].
func scanValue(d []byte, i int) (int, error) {
	switch d[i] {
	case '"':
		return scanString(d, i)
	case '{', '[':
		depth := 0
		for j := i; ; j++ {
			switch d[j] {
			case '"':
				end, err := scanString(d, j)
				if err != nil {
					return 0, err
				}
				j = end - 1
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return j + 1, nil
				}
			}
		}
	}
	j := i // a number, true, false or null: up to a delimiter
	for j < len(d) && d[j] != ',' && d[j] != '}' && d[j] != ']' && d[j] != ' ' && d[j] != '\t' && d[j] != '\r' && d[j] != '\n' {
		j++
	}
	return j, nil
}

// hex4 reads four hexadecimal digits, which valid JSON guarantees.
func hex4(b []byte) rune {
	r, _ := strconv.ParseUint(string(b), 16, 16)
	return rune(r)
}

// unquote returns the string a JSON string literal (already scanned) holds.
func unquote(lit []byte) string {
	if bytes.IndexByte(lit, '\\') < 0 {
		return string(lit[1 : len(lit)-1])
	}
	var s string
	json.Unmarshal(lit, &s) // valid: scanned above
	return s
}

// jsonString decodes a member's value that must be a JSON string.
func jsonString(v json.RawMessage) (string, bool) {
	if len(v) == 0 || v[0] != '"' {
		return "", false
	}
	return unquote(v), true
}

// isDigits reports whether b is a whole number written as digits alone.
func isDigits(b []byte) bool {
	for _, c := range b {
		if c < '0' || c > '9' {
			return false
		}
	}
	return len(b) > 0
}
