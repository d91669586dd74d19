package main

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestAccessLineIsSlogs: the access line written by hand is, byte for
// byte, what slog's JSON and text handlers write for the same fields,
// whatever a client put in the path and the request id: quotes,
// backslashes, control characters, '=', spaces, invalid UTF-8, line
// separators, characters that are not printable; and for durations small
// and large.
func TestAccessLineIsSlogs(t *testing.T) {
	strs := []string{
		"", "/getEvents", `a"b`, `a\b`, "a\nb\r\tc\x00\x1f\x7f", "a=b", "a b", "<script>&",
		"\xff\xfe", "a\u2028b\u2029", "é😀", "\u0085", "\u00a0", "\u200b", "\ufffd", "…" + strings.Repeat("x", 300),
	}
	durations := []time.Duration{0, 1, 999, 1000, 1757074, time.Second, 90 * time.Second, 1<<63 - 1}
	at := time.Date(2026, 12, 1, 14, 39, 35, 762379854, time.UTC)
	var lines []accessLine
	for i, s := range strs {
		lines = append(lines, accessLine{
			time: at.Add(time.Duration(i) * 999_999), requestID: s, traceID: "46530a67cbca7e0cc90a362b7e7881c2",
			method: "GET", route: "GET /getEvents", path: s, client: "127.0.0.1:40594",
			status: 200 + i, bytes: int64(i) << 40, duration: durations[i%len(durations)],
		})
	}
	for _, d := range durations {
		lines = append(lines, accessLine{time: at.Truncate(time.Second), duration: d, method: "POST"})
	}
	for _, json := range []bool{true, false} {
		for _, line := range lines {
			var want bytes.Buffer
			var h slog.Handler = slog.NewTextHandler(&want, nil)
			if json {
				h = slog.NewJSONHandler(&want, nil)
			}
			r := slog.NewRecord(line.time, slog.LevelInfo, "request", 0)
			r.AddAttrs(line.attrs()...)
			if err := h.Handle(context.Background(), r); err != nil {
				t.Fatal(err)
			}
			if got := line.appendTo(nil, json); string(got) != want.String() {
				t.Errorf("json %v: written\n%s\nslog writes\n%s", json, got, want.String())
			}
		}
	}
}

// TestAccessLinesThroughNewLogger: through newLogger's handler, access
// lines are written at info and not below it, whole, one a line, however
// many requests log at once, between the lines slog writes for the rest.
func TestAccessLinesThroughNewLogger(t *testing.T) {
	for _, format := range []string{"json", "text"} {
		var out bytes.Buffer // not safe for concurrent writes: the handler must make them so
		cfg := testConfig(t)
		cfg.LogFormat = format
		logger := newLogger(&out, cfg)
		line := &accessLine{time: time.Now(), requestID: "r-1", method: "GET", route: "GET /getUsers", path: "/getUsers", status: 200}
		var wg sync.WaitGroup
		for range 20 {
			wg.Go(func() {
				for range 50 {
					logAccess(context.Background(), logger, line)
					logger.Info("other", "k", "v")
				}
			})
		}
		wg.Wait()
		want := string(line.appendTo(nil, format == "json"))
		got := strings.SplitAfter(out.String(), "\n")
		access := 0
		for _, l := range got[:len(got)-1] {
			if l == want {
				access++
			} else if !strings.Contains(l, "other") {
				t.Fatalf("%s: a line neither the access line nor the other: %q", format, l)
			}
		}
		if access != 1000 || len(got)-1 != 2000 {
			t.Errorf("%s: %d access lines of %d lines; want 1000 of 2000", format, access, len(got)-1)
		}

		out.Reset()
		cfg.LogLevel = slog.LevelWarn
		logAccess(context.Background(), newLogger(&out, cfg), line)
		if out.Len() != 0 {
			t.Errorf("%s: at LOG_LEVEL=warn, an access line was written: %q", format, out.String())
		}
	}
}
