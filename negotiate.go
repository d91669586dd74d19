package main

import (
	"compress/gzip"
	"encoding/hex"
	"encoding/json"
	"hash/fnv"
	"net/http"
	"strconv"
	"strings"
	"sync"
)

// Answers on the wire: a weak ETag over the bytes of a JSON answer, 304
// for a matching If-None-Match, and gzip for clients that ask for it.

// gzipMin is the smallest answer compressed: below about one TCP segment
// gzip saves no round trip, and its 18 bytes of framing and its CPU are
// pure cost.
const gzipMin = 1400

// gzipWriterBytes is what a gzip.Writer holds (measured: 1.2 MiB at
// BestSpeed), reserved in the request's share of the memory budget while
// it is in use.
const gzipWriterBytes = 5 << 18

// gzipWriters are reused: a new gzip.Writer allocates its 1.2 MiB anew.
var gzipWriters = sync.Pool{New: func() any {
	w, _ := gzip.NewWriterLevel(nil, gzip.BestSpeed) // repetitive JSON: even the fastest level gains 10×
	return w
}}

// pieces yields the bytes of an answer, in order, to write; it can be
// called more than once.
type pieces func(write func([]byte))

// writeAnswer writes a 200 JSON answer made of p, with a weak ETag over its
// bytes (weak, so that its plain and gzip forms share it, RFC 9110 8.8.1)
// and Cache-Control: no-cache (store, but revalidate every time). A GET
// whose If-None-Match matches the ETag is answered 304 with no body. A
// client that accepts gzip gets an answer of gzipMin bytes or more
// compressed, streamed, with a writer reserved in held; if none can be
// had in time, plain.
func writeAnswer(w http.ResponseWriter, r *http.Request, held *memoryAccount, p pieces) {
	writeTagged(w, r, held, tagOf(p), p)
}

// answerTag is an answer's ETag and size, worked out once for an
// answer that many requests share.
type answerTag struct {
	etag string
	size int
}

// tagOf returns the weak ETag over the bytes of p, and their number.
func tagOf(p pieces) answerTag {
	sum, size := fnv.New64a(), 0
	p(func(b []byte) { sum.Write(b); size += len(b) })
	return answerTag{etag: `W/"` + hex.EncodeToString(sum.Sum(nil)) + `"`, size: size}
}

// writeTagged is writeAnswer for an answer p whose tag is known.
func writeTagged(w http.ResponseWriter, r *http.Request, held *memoryAccount, t answerTag, p pieces) {
	tag, size := t.etag, t.size
	h := w.Header()
	h.Set("Etag", tag) // the canonical form: Set need not copy the key
	h.Set("Cache-Control", "no-cache")
	h.Add("Vary", "Accept-Encoding") // beside Origin, with CORS on
	h.Set("Content-Type", "application/json")
	if etagMatches(r.Header.Values("If-None-Match"), tag) {
		w.WriteHeader(http.StatusNotModified)
		return
	}
	if size < gzipMin || !acceptsGzip(r.Header.Values("Accept-Encoding")) || !held.tryReserve(gzipWriterBytes) {
		h.Set("Content-Length", strconv.Itoa(size))
		w.WriteHeader(http.StatusOK)
		p(func(b []byte) { w.Write(b) })
		return
	}
	h.Set("Content-Encoding", "gzip")
	w.WriteHeader(http.StatusOK)
	zw := gzipWriters.Get().(*gzip.Writer)
	zw.Reset(w)
	p(func(b []byte) { zw.Write(b) })
	zw.Close()
	zw.Reset(nil)
	gzipWriters.Put(zw)
}

var arrayOpen, arrayComma, arrayClose = []byte("["), []byte(","), []byte("]\n")

// arrayPieces are the pieces of a JSON array of items, and a newline.
func arrayPieces(items []json.RawMessage) pieces {
	return func(write func([]byte)) {
		sep := arrayOpen
		for _, it := range items {
			write(sep)
			write(it)
			sep = arrayComma
		}
		if len(items) == 0 {
			write(sep)
		}
		write(arrayClose)
	}
}

// etagMatches reports whether an If-None-Match header matches tag by the
// weak comparison (RFC 9110 13.1.2): "*", or a listed tag with the same
// opaque part, W/ or not.
func etagMatches(values []string, tag string) bool {
	opaque := strings.TrimPrefix(tag, "W/")
	for _, v := range values {
		for _, t := range strings.Split(v, ",") {
			t = strings.TrimSpace(t)
			if t == "*" || strings.TrimPrefix(t, "W/") == opaque {
				return true
			}
		}
	}
	return false
}

// acceptsGzip reports whether an Accept-Encoding header accepts gzip:
// gzip, x-gzip or * with a q-value above 0.
func acceptsGzip(values []string) bool {
	for _, v := range values {
		for _, c := range strings.Split(v, ",") {
			coding, params, _ := strings.Cut(strings.TrimSpace(c), ";")
			coding = strings.ToLower(strings.TrimSpace(coding))
			if coding != "gzip" && coding != "x-gzip" && coding != "*" {
				continue
			}
			q, hasQ := strings.CutPrefix(strings.ReplaceAll(params, " ", ""), "q=")
			if f, err := strconv.ParseFloat(q, 64); !hasQ || err == nil && f > 0 {
				return true
			}
		}
	}
	return false
}
