package main

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base32"
	"strings"
)

// Event ids. A write without an Idempotency-Key gets a random id. A write
// with one gets an id derived from the key by a keyed hash, so that every
// instance sharing IDEMPOTENCY_SECRET, and the same instance after a
// restart, sends the same id for the same key; the Event API stores an id
// once, so a key can never make two events, whichever instance a retry
// reaches. The id is the only state instances share.

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
	scope  string // the clients' credential, hashed; "" when writes are open
}

// newIDDeriver returns the deriver for secret (nil: a random one, so keys
// hold within this process only) and the credential that scopes keys
// (API_TOKEN; "" for none).
func newIDDeriver(secret []byte, credential string) idDeriver {
	if secret == nil {
		secret = []byte(rand.Text() + rand.Text())
	}
	var scope string
	if credential != "" {
		sum := sha256.Sum256([]byte(credential))
		scope = idEncoding.EncodeToString(sum[:])
	}
	return idDeriver{secret: secret, scope: scope}
}

// forKey returns the event id of a write with Idempotency-Key key:
// "event-" and 128 bits of HMAC-SHA-256(secret, scope, key), as long as a
// random id. Scope and key are length-prefixed, so no two pairs hash alike.
func (d idDeriver) forKey(key string) string {
	mac := hmac.New(sha256.New, d.secret)
	for _, part := range []string{d.scope, key} {
		mac.Write([]byte{byte(len(part) >> 8), byte(len(part))})
		mac.Write([]byte(part))
	}
	return "event-" + idEncoding.EncodeToString(mac.Sum(nil)[:16])
}
