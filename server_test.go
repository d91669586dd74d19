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
	slices.Sort(documented)
	slices.Sort(registered)
	if !slices.Equal(documented, registered) {
		t.Errorf("openapi.yaml documents\n%q\nthe server registers\n%q", documented, registered)
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
