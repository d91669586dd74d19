package main

import (
	"bufio"
	"net/http/httptest"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// TestOpenAPIMatchesTheRoutes keeps openapi.yaml and routes in step: every
// registered route is documented and every documented one is registered.
func TestOpenAPIMatchesTheRoutes(t *testing.T) {
	f, err := os.Open("openapi.yaml")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	pathLine := regexp.MustCompile(`^  (/\S*):$`)
	methodLine := regexp.MustCompile(`^    (get|put|post|delete|patch|head|options):$`)
	var documented []string
	inPaths, current := false, ""
	for sc := bufio.NewScanner(f); sc.Scan(); {
		line := sc.Text()
		switch {
		case line == "paths:":
			inPaths = true
		case len(line) > 0 && line[0] != ' ' && line[0] != '#':
			inPaths = false
		case inPaths && pathLine.MatchString(line):
			current = pathLine.FindStringSubmatch(line)[1]
		case inPaths && methodLine.MatchString(line):
			documented = append(documented, strings.ToUpper(methodLine.FindStringSubmatch(line)[1])+" "+current)
		}
	}
	var registered []string
	for _, r := range routes(testConfig(t), services{}) {
		registered = append(registered, r.pattern)
	}
	// HEAD is served wherever GET is (ServeMux), and OPTIONS (the CORS
	// preflight) on every path the routes have: documented, they must be
	// for such a path.
	served := slices.Clone(registered)
	for _, r := range registered {
		method, path, _ := strings.Cut(r, " ")
		if method == "GET" {
			served = append(served, "HEAD "+path)
		}
		served = append(served, "OPTIONS "+path)
	}
	documented = slices.DeleteFunc(documented, func(d string) bool {
		method, _, _ := strings.Cut(d, " ")
		return (method == "HEAD" || method == "OPTIONS") && slices.Contains(served, d)
	})
	slices.Sort(documented)
	slices.Sort(registered)
	if !slices.Equal(slices.Compact(documented), registered) {
		t.Errorf("openapi.yaml documents\n%q\nbesides HEAD and OPTIONS where they are served; the server registers\n%q", documented, registered)
	}
}

func TestWrongMethodListsAllowedMethods(t *testing.T) {
	g := newTestGateway(t, quietMock(), nil)
	tests := []struct{ method, path, allow string }{
		{"POST", "/getUsers", "GET, HEAD"},
		{"PUT", "/getEventsByUserId/1", "GET, HEAD"},
		{"GET", "/addEvent", "POST"},
	}
	for _, tt := range tests {
		rec := g.serve(httptest.NewRequest(tt.method, tt.path, nil))
		if rec.Code != 405 || rec.Header().Get("Allow") != tt.allow {
			t.Errorf("%s %s = %d, Allow %q; want 405, Allow %q", tt.method, tt.path, rec.Code, rec.Header().Get("Allow"), tt.allow)
		}
		errorBody(t, rec)
	}
}
