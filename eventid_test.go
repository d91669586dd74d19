package main

import (
	"strings"
	"testing"
)

// TestKeyedIDsAreDerived: the same secret, key and event give the same id
// in any process (a fixed value, computed independently with Python's hmac
// module: HMAC-SHA-256 over the key and the three fields, each prefixed by
// its length as 4 big-endian bytes, 16 bytes, lower-case base32), and
// another key, field or secret gives another.
func TestKeyedIDsAreDerived(t *testing.T) {
	secret := []byte(strings.Repeat("s", 32))
	d := newIDDeriver(secret)
	const key = "8e03978e-40d5-43e8-bc93-6894a57f9324"
	launch := addEventRequest{Name: "Launch", UserID: "2"}
	id := d.forWrite(key, launch)
	if id != "event-s3ftla6miert5wpguakbhgdohi" {
		t.Errorf("forWrite = %q; want the value every instance computes, event-s3ftla6miert5wpguakbhgdohi", id)
	}
	if !strings.HasPrefix(id, "event-") || len(id) != len(newEventID()) {
		t.Errorf("forWrite = %q; want an id shaped like a random one, %q", id, newEventID())
	}
	others := map[string]string{
		"another key":     d.forWrite(key+"5", launch),
		"another name":    d.forWrite(key, addEventRequest{Name: "Launch!", UserID: "2"}),
		"another user":    d.forWrite(key, addEventRequest{Name: "Launch", UserID: "3"}),
		"other details":   d.forWrite(key, addEventRequest{Name: "Launch", UserID: "2", Details: "x"}),
		"fields shifted":  d.forWrite(key, addEventRequest{Name: "Launch2", UserID: ""}),
		"another secret":  newIDDeriver([]byte(strings.Repeat("t", 32))).forWrite(key, launch),
		"no secret":       newIDDeriver(nil).forWrite(key, launch),
		"key runs into a": d.forWrite(key+"Launch", addEventRequest{UserID: "2"}),
	}
	for name, other := range others {
		if other == id {
			t.Errorf("%s gives the same id %s", name, id)
		}
	}
}
