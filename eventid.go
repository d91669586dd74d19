package main

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base32"
	"encoding/binary"
	"strings"
)

// Event ids. A write without an Idempotency-Key gets a random id. A write
// with one gets an id derived from the key and the event it carries by a
// keyed hash, so that every instance sharing IDEMPOTENCY_SECRET, and the
// same instance after a restart, sends the same id for the same key and
// body; the Event API stores an id once, so a retry can never make two
// events, whichever instance it reaches. The same key with another body
// gets another id: no instance can ever answer one body with the id under
// which the upstream stored another. The id is the only state instances
// share.
//
// Keys are scoped by IDEMPOTENCY_SECRET alone, never by API_TOKEN: rotating
// the token, or instances halfway through a rotation, keeps one key one
// event. With one configured credential there is one scope anyway.

// minSecretBytes is the shortest IDEMPOTENCY_SECRET accepted: a key for
// HMAC-SHA-256 should be as long as the hash.
const minSecretBytes = 32

// idEncoding writes ids in lower-case base32, as rand.Text does.
var idEncoding = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

// newEventID returns a new random event id. It comes from crypto/rand, so
// two requests in the same instant, or on two instances, never collide.
func newEventID() string {
	return "event-" + strings.ToLower(rand.Text())
}

// idDeriver derives the event ids of keyed writes.
type idDeriver struct {
	secret []byte // IDEMPOTENCY_SECRET, or random bytes for this process
}

// newIDDeriver returns the deriver for secret (nil: a random one, so keys
// hold within this process only).
func newIDDeriver(secret []byte) idDeriver {
	if secret == nil {
		secret = []byte(rand.Text() + rand.Text())
	}
	return idDeriver{secret: secret}
}

// forWrite returns the event id of a write of req with Idempotency-Key key:
// "event-" and 128 bits of HMAC-SHA-256(secret, key, name, userId,
// details), as long as a random id. The fields are the validated ones (a
// name trimmed of spaces is the same name), each length-prefixed, so no two
// different writes hash alike.
func (d idDeriver) forWrite(key string, req addEventRequest) string {
	mac := hmac.New(sha256.New, d.secret)
	for _, part := range []string{key, req.Name, req.UserID, req.Details} {
		mac.Write(binary.BigEndian.AppendUint32(nil, uint32(len(part))))
		mac.Write([]byte(part))
	}
	return "event-" + idEncoding.EncodeToString(mac.Sum(nil)[:16])
}
