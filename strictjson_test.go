package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
)

func TestObjectMembersRefusesWhatCouldBeReadTwoWays(t *testing.T) {
	many := func(n int, repeat string) string {
		var b strings.Builder
		b.WriteString("{")
		for i := range n {
			fmt.Fprintf(&b, `"k%d": %d,`, i, i)
		}
		b.WriteString(`"` + repeat + `": 0}`)
		return b.String()
	}
	tests := []struct {
		name, in string
		want     string // a part of the error; "" for success
	}{
		{"plain object", `{"a": "x", "b": [1, {"c": null}], "d": true}`, ""},
		{"empty object", ` {} `, ""},
		{"duplicate key", `{"a": 1, "a": 2}`, `key "a" twice`},
		{"duplicate key through an escape", `{"a": 1, "\u0061": 2}`, `key "a" twice`},
		{"duplicate key among many", many(40, "k3"), `key "k3" twice`},
		{"distinct keys among many", many(40, "k40"), ""},
		{"lone high surrogate", `{"a": "\ud800"}`, "unpaired surrogate"},
		{"lone low surrogate", `{"a": "x\udc00"}`, "unpaired surrogate"},
		{"high surrogate then a letter", `{"a": "\ud800\u0041"}`, "unpaired surrogate"},
		{"surrogate in a key", `{"\ud800": 1}`, "unpaired surrogate"},
		{"surrogate deep inside", `{"a": [{"b": ["\udfff"]}]}`, "unpaired surrogate"},
		{"paired surrogates", `{"a": "\ud83d\ude00"}`, ""},
		{"invalid UTF-8", "{\"a\": \"\xff\"}", "UTF-8"},
		{"array", `[1]`, "not an array"},
		{"null", `null`, "not null"},
		{"two objects", `{} {}`, "after"},
		{"nested duplicates are the value's own business", `{"a": {"b": 1, "b": 2}}`, ""},
	}
	for _, tt := range tests {
		_, err := objectMembers([]byte(tt.in))
		switch {
		case tt.want == "" && err != nil:
			t.Errorf("%s: objectMembers(%.60q) = %v; want members", tt.name, tt.in, err)
		case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
			t.Errorf("%s: objectMembers(%.60q) = %v; want an error containing %q", tt.name, tt.in, err, tt.want)
		}
	}
}

func TestObjectMembersKeepsValuesAsSent(t *testing.T) {
	ms, err := objectMembers([]byte(` { "id" : "e\"1" , "n":-1.5e3,"o" :{"x":[1,"]"]}, "t":true}`))
	if err != nil {
		t.Fatal(err)
	}
	got := fmt.Sprintf("%s", ms)
	want := `[{id "e\"1"} {n -1.5e3} {o {"x":[1,"]"]}} {t true}]`
	if got != want {
		t.Errorf("members = %s; want %s", got, want)
	}
}

func TestObjectMembersReportsSyntaxLikeTheDecoder(t *testing.T) {
	var syn *json.SyntaxError
	if _, err := objectMembers(nil); err != io.EOF {
		t.Errorf("empty input: %v; want io.EOF", err)
	}
	if _, err := objectMembers([]byte(`{"a": `)); err != io.ErrUnexpectedEOF {
		t.Errorf("truncated input: %v; want io.ErrUnexpectedEOF", err)
	}
	if _, err := objectMembers([]byte(`{"a" 1}`)); !errors.As(err, &syn) || syn.Offset == 0 {
		t.Errorf("syntax error: %v; want a *json.SyntaxError with its offset", err)
	}
}

func TestFieldRefusesCaseVariants(t *testing.T) {
	ms, _ := objectMembers([]byte(`{"userId": "1", "USERID": "2", "name": "x"}`))
	if _, err := field(ms, "userId"); err == nil || !strings.Contains(err.Error(), `"USERID" beside "userId"`) {
		t.Errorf(`field(userId) = %v; want an error naming "USERID"`, err)
	}
	if v, err := field(ms, "name"); err != nil || string(v) != `"x"` {
		t.Errorf(`field(name) = %s, %v; want "x"`, v, err)
	}
	if v, err := field(ms, "details"); err != nil || v != nil {
		t.Errorf(`field(details) = %s, %v; want nothing`, v, err)
	}
}

// FuzzObjectMembers checks objectMembers against encoding/json: whatever it
// accepts, json.Unmarshal reads the same members, and it never accepts what
// the standard decoder would read differently.
func FuzzObjectMembers(f *testing.F) {
	for _, seed := range []string{`{"a":1}`, `{"a":"\ud800"}`, `{"a":1,"A":2}`, `{"a":1,"a":2}`, `[]`, `{"a":{"b":[1,"}"]}}`, "{\"\xff\":1}", `{"\u00e9":"\ud83d\ude00"}`} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, in string) {
		members, err := objectMembers([]byte(in))
		var want map[string]json.RawMessage
		stdErr := json.Unmarshal([]byte(in), &want)
		if err != nil {
			return
		}
		if stdErr != nil {
			t.Fatalf("objectMembers(%q) accepted what json.Unmarshal refuses: %v", in, stdErr)
		}
		if len(members) != len(want) {
			t.Fatalf("objectMembers(%q) = %d members; json.Unmarshal reads %d", in, len(members), len(want))
		}
		for _, m := range members {
			if string(want[m.Key]) != string(m.Value) {
				t.Fatalf("objectMembers(%q): %q = %s; json.Unmarshal reads %s", in, m.Key, m.Value, want[m.Key])
			}
			var s any
			if json.Unmarshal(m.Value, &s) == nil && strings.ContainsRune(fmt.Sprint(s), '\uFFFD') && !strings.Contains(in, `\ufffd`) && !strings.Contains(in, "\uFFFD") {
				t.Fatalf("objectMembers(%q) accepted a value that decodes with a replacement character", in)
			}
		}
	})
}
