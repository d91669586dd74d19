package main

import (
	"strings"
	"testing"
)

// TestKeyedIDsAreDerived: the same secret, credential and key give the same
// id in any process (a fixed value, computed independently with Python's
// hmac module: HMAC-SHA-256 over the length-prefixed credential and key,
// 16 bytes, lower-case base32), and another key, credential or secret
// gives another.
func TestKeyedIDsAreDerived(t *testing.T) {
	secret := []byte(strings.Repeat("s", 32))
	d := newIDDeriver(secret, "")
	const want = "event-" // followed by 26 base32 characters
	id := d.forKey("8e03978e-40d5-43e8-bc93-6894a57f9324")
	if id != "event-srhoxvqr5zyy76rri2k4zp2lwu" {
		t.Errorf("forKey = %q; want the value every instance computes, event-srhoxvqr5zyy76rri2k4zp2lwu", id)
	}
	if !strings.HasPrefix(id, want) || len(id) != len(newEventID()) {
		t.Errorf("forKey = %q; want an id shaped like a random one, %q", id, newEventID())
	}
	others := map[string]string{
		"another key":        d.forKey("8e03978e-40d5-43e8-bc93-6894a57f9325"),
		"another credential": newIDDeriver(secret, "token-a").forKey("8e03978e-40d5-43e8-bc93-6894a57f9324"),
		"another secret":     newIDDeriver([]byte(strings.Repeat("t", 32)), "").forKey("8e03978e-40d5-43e8-bc93-6894a57f9324"),
		"no secret":          newIDDeriver(nil, "").forKey("8e03978e-40d5-43e8-bc93-6894a57f9324"),
	}
	for name, other := range others {
		if other == id {
			t.Errorf("%s gives the same id %s", name, id)
		}
	}
	if a, b := newIDDeriver(secret, "token-a").forKey("k"), newIDDeriver(secret, "token-b").forKey("k"); a == b {
		t.Error("two credentials give the same id for one key")
	}
	if a, b := newIDDeriver(secret, "ab").forKey("c"), newIDDeriver(secret, "a").forKey("bc"); a == b {
		t.Error("credential and key run together: (ab, c) and (a, bc) give one id")
	}
}
