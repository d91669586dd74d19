package main

// The access line, one per request, is written by hand rather than by
// slog's handlers: their generic walk over the attributes, a json.Marshal
// for the duration and a runtime.Callers for a source never shown cost
// 4 µs a line, as much as the rest of the gateway's own work on a list
// read. The bytes are those slog writes (TestAccessLineIsSlogs), so a
// reader of the log sees one format.

import (
	"context"
	"io"
	"log/slog"
	"math"
	"strconv"
	"sync"
	"time"
	"unicode"
	"unicode/utf8"
)

// accessLine is what the access log says of one request.
type accessLine struct {
	time                                            time.Time
	requestID, traceID, method, route, path, client string
	status                                          int
	bytes                                           int64
	duration                                        time.Duration
}

// attrs are the line's fields, for a logger that is not newLogger's.
func (l *accessLine) attrs() []slog.Attr {
	return []slog.Attr{
		slog.String("request_id", l.requestID),
		slog.String("trace_id", l.traceID),
		slog.String("method", l.method),
		slog.String("route", l.route),
		slog.String("path", l.path),
		slog.String("client", l.client),
		slog.Int("status", l.status),
		slog.Int64("bytes", l.bytes),
		slog.Float64("duration", l.duration.Seconds()),
	}
}

// logHandler is newLogger's handler: slog's JSON or text handler writing
// to out, and out itself, which the access line is written to directly.
// Both write whole lines under out's lock, so lines never interleave.
type logHandler struct {
	slog.Handler
	out  *lockedWriter
	json bool
}

// newLogHandler returns the handler of the format json or text, at level,
// writing to w.
func newLogHandler(w io.Writer, json bool, level slog.Leveler) *logHandler {
	out := &lockedWriter{w: w}
	opts := &slog.HandlerOptions{Level: level}
	if json {
		return &logHandler{Handler: slog.NewJSONHandler(out, opts), out: out, json: true}
	}
	return &logHandler{Handler: slog.NewTextHandler(out, opts), out: out}
}

// lockedWriter makes each Write whole with respect to the others.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// lineBuffers keeps the buffers access lines are formatted in.
var lineBuffers = sync.Pool{New: func() any { b := make([]byte, 0, 512); return &b }}

// logAccess writes line to logger at info: formatted here if logger is
// newLogger's, else through slog.
func logAccess(ctx context.Context, logger *slog.Logger, line *accessLine) {
	if !logger.Enabled(ctx, slog.LevelInfo) {
		return
	}
	h, ok := logger.Handler().(*logHandler)
	if !ok {
		logger.LogAttrs(ctx, slog.LevelInfo, "request", line.attrs()...)
		return
	}
	buf := lineBuffers.Get().(*[]byte)
	*buf = line.appendTo((*buf)[:0], h.json)
	h.out.Write(*buf)
	if cap(*buf) <= 4<<10 { // a line with a long path is not worth keeping
		lineBuffers.Put(buf)
	}
}

// appendTo appends the line as slog's JSON (json) or text handler would
// write it, newline included.
func (l *accessLine) appendTo(b []byte, json bool) []byte {
	str, num := appendTextString, strconv.AppendInt
	if json {
		str = appendJSONString
		b = append(b, `{"time":"`...)
		b = l.time.AppendFormat(b, time.RFC3339Nano)
		b = append(b, `","level":"INFO","msg":"request"`...)
	} else {
		b = append(b, "time="...)
		b = appendRFC3339Millis(b, l.time)
		b = append(b, " level=INFO msg=request"...)
	}
	field := func(key string) {
		if json {
			b = append(b, `,"`...)
			b = append(b, key...)
			b = append(b, `":`...)
		} else {
			b = append(b, ' ')
			b = append(b, key...)
			b = append(b, '=')
		}
	}
	for _, f := range [...]struct{ key, value string }{
		{"request_id", l.requestID}, {"trace_id", l.traceID}, {"method", l.method},
		{"route", l.route}, {"path", l.path}, {"client", l.client},
	} {
		field(f.key)
		b = str(b, f.value)
	}
	field("status")
	b = num(b, int64(l.status), 10)
	field("bytes")
	b = num(b, l.bytes, 10)
	field("duration")
	if json {
		b = append(appendJSONFloat(b, l.duration.Seconds()), "}\n"...)
	} else {
		b = append(strconv.AppendFloat(b, l.duration.Seconds(), 'g', -1, 64), '\n')
	}
	return b
}

// appendJSONString appends s as a JSON string, escaped as slog escapes
// it: quote, backslash and control characters; invalid UTF-8 as U+FFFD;
// U+2028 and U+2029, which JavaScript reads as line ends.
func appendJSONString(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xF])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			b = append(append(b, s[start:i]...), `\ufffd`...)
		case r == '\u2028' || r == '\u2029':
			b = append(append(b, s[start:i]...), '\\', 'u', '2', '0', '2', hex[r&0xF])
		default:
			i += size
			continue
		}
		i += size
		start = i
	}
	return append(append(b, s[start:]...), '"')
}

// appendTextString appends s as slog's text handler does: as it is, or
// quoted in Go syntax if it is empty or has a space, '=', '"', a character
// that is not printable, or invalid UTF-8.
func appendTextString(b []byte, s string) []byte {
	if !needsQuoting(s) {
		return append(b, s...)
	}
	return strconv.AppendQuote(b, s)
}

// needsQuoting reports whether slog's text handler quotes s.
func needsQuoting(s string) bool {
	if s == "" {
		return true
	}
	for i := 0; i < len(s); {
		if c := s[i]; c < utf8.RuneSelf {
			if c < 0x20 || c == ' ' || c == '=' || c == '"' {
				return true
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError || !unicode.IsPrint(r) { // slog asks IsSpace too: no space past ASCII is printable
			return true
		}
		i += size
	}
	return false
}

// appendJSONFloat appends f as encoding/json writes it (and so slog's
// JSON handler): plain decimals, exponents only for the very small or
// large, without a leading zero in the exponent.
func appendJSONFloat(b []byte, f float64) []byte {
	format := byte('f')
	if abs := math.Abs(f); abs != 0 && (abs < 1e-6 || abs >= 1e21) {
		format = 'e'
	}
	b = strconv.AppendFloat(b, f, format, -1, 64)
	if n := len(b); format == 'e' && n >= 4 && b[n-4] == 'e' && b[n-3] == '-' && b[n-2] == '0' {
		b[n-2] = b[n-1] // e-07 → e-7
		b = b[:n-1]
	}
	return b
}

// appendRFC3339Millis appends t as slog's text handler does: RFC 3339
// with exactly three decimals.
func appendRFC3339Millis(b []byte, t time.Time) []byte {
	// RFC3339Nano is the fast layout, but trims trailing zeros: adding a
	// tenth of a millisecond keeps four decimals, and the fourth is cut.
	const prefix = len("2006-01-02T15:04:05.000")
	n := len(b)
	b = t.Truncate(time.Millisecond).Add(time.Millisecond/10).AppendFormat(b, time.RFC3339Nano)
	return append(b[:n+prefix], b[n+prefix+1:]...)
}
