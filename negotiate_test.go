package main

import (
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// getWith serves GET path with the given headers (name, value, …).
func (g *testGateway) getWith(path string, header ...string) *httptest.ResponseRecorder {
	req := httptest.NewRequest(http.MethodGet, path, nil)
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	return g.serve(req)
}

// gunzip returns what body decompresses to.
func gunzip(t *testing.T, body []byte) []byte {
	t.Helper()
	zr, err := gzip.NewReader(bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	out, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestGzipForClientsThatAsk: a user's answer of 1,000 events is gzip for a
// client that accepts it, at least 5× smaller, and the same bytes once
// decompressed; a client that does not ask, or refuses gzip with q=0, gets
// it plain; a small answer and an error stay plain whatever is asked.
func TestGzipForClientsThatAsk(t *testing.T) {
	m := quietMock()
	g := newTestGateway(t, m, nil)
	for i := range 999 {
		g.post("/addEvent", fmt.Sprintf(`{"name": "Meeting %d", "userId": "3", "details": "Weekly planning meeting of the team"}`, i))
	}
	plain := g.get("/getEventsByUserId/3")
	if plain.Header().Get("Content-Encoding") != "" || plain.Header().Get("Vary") != "Accept-Encoding" {
		t.Errorf("no Accept-Encoding: Content-Encoding %q, Vary %q; want plain, Vary: Accept-Encoding",
			plain.Header().Get("Content-Encoding"), plain.Header().Get("Vary"))
	}
	zipped := g.getWith("/getEventsByUserId/3", "Accept-Encoding", "br;q=1, gzip;q=0.8")
	if zipped.Header().Get("Content-Encoding") != "gzip" || zipped.Header().Get("Content-Length") != "" {
		t.Fatalf("Accept-Encoding gzip: Content-Encoding %q, Content-Length %q; want gzip, streamed",
			zipped.Header().Get("Content-Encoding"), zipped.Header().Get("Content-Length"))
	}
	if got := gunzip(t, zipped.Body.Bytes()); !bytes.Equal(got, plain.Body.Bytes()) {
		t.Error("the gzip answer decompresses to other bytes than the plain one")
	}
	if p, z := plain.Body.Len(), zipped.Body.Len(); z*5 > p {
		t.Errorf("1,000 events: %d bytes plain, %d gzip; want at least 5× smaller", p, z)
	}
	if zipped.Header().Get("ETag") != plain.Header().Get("ETag") {
		t.Error("the gzip and plain forms have different ETags; want one weak tag for both")
	}
	for name, rec := range map[string]*httptest.ResponseRecorder{
		"gzip;q=0":     g.getWith("/getEventsByUserId/3", "Accept-Encoding", "gzip;q=0"),
		"small answer": g.getWith("/getEventsByUserId/2", "Accept-Encoding", "gzip"),
		"an error":     g.getWith("/getEventsByUserId/nobody", "Accept-Encoding", "gzip"),
	} {
		if enc := rec.Header().Get("Content-Encoding"); enc != "" {
			t.Errorf("%s: Content-Encoding %q; want plain", name, enc)
		}
	}
}

// TestETagsAndIfNoneMatch: list and user answers carry a weak ETag and
// Cache-Control: no-cache; the same tag in If-None-Match (weak or strong
// form, in a list, or *) is 304 without a body; after a write the lists'
// tag changes, and the old one is answered in full.
func TestETagsAndIfNoneMatch(t *testing.T) {
	g := newTestGateway(t, quietMock(), nil)
	for _, path := range []string{"/getEvents", "/getUsers", "/getEventsByUserId/1"} {
		first := g.get(path)
		tag := first.Header().Get("ETag")
		if !strings.HasPrefix(tag, `W/"`) || first.Header().Get("Cache-Control") != "no-cache" {
			t.Fatalf("%s: ETag %q, Cache-Control %q; want a weak tag and no-cache", path, tag, first.Header().Get("Cache-Control"))
		}
		for _, inm := range []string{tag, strings.TrimPrefix(tag, "W/"), `"other", ` + tag, "*"} {
			rec := g.getWith(path, "If-None-Match", inm)
			if rec.Code != 304 || rec.Body.Len() != 0 || rec.Header().Get("ETag") != tag {
				t.Errorf("%s with If-None-Match %s = %d, %d bytes; want 304, no body, the ETag", path, inm, rec.Code, rec.Body.Len())
			}
		}
		if rec := g.getWith(path, "If-None-Match", `W/"other"`); rec.Code != 200 {
			t.Errorf("%s with another tag = %d; want 200", path, rec.Code)
		}
	}
	before := g.get("/getEvents").Header().Get("ETag")
	g.post("/addEvent", `{"name": "New", "userId": "1"}`)
	rec := g.getWith("/getEvents", "If-None-Match", before)
	if rec.Code != 200 || rec.Header().Get("ETag") == before {
		t.Errorf("after a write, /getEvents with the old tag = %d, tag %s; want 200 and a new tag", rec.Code, rec.Header().Get("ETag"))
	}
}
