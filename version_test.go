package main

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"regexp"
	"strings"
	"testing"
)

// TestVersionIsShown: -version prints it and succeeds; -h lists the flags
// and every variable with its default, and succeeds; /health shows the
// version; every upstream call says it is eventgate, as a valid product
// token.
func TestVersionIsShown(t *testing.T) {
	var out bytes.Buffer
	if err := run(t.Context(), []string{"eventgate", "-version"}, envOf(nil), &out, io.Discard); err != nil || !strings.HasPrefix(out.String(), "eventgate ") {
		t.Errorf("-version = %v, %q; want no error and the version", err, out.String())
	}
	var help bytes.Buffer
	if err := run(t.Context(), []string{"eventgate", "-h"}, envOf(nil), io.Discard, &help); err != nil ||
		!strings.Contains(help.String(), "-healthcheck") || !strings.Contains(help.String(), "MEMORY_BUDGET=256MiB") {
		t.Errorf("-h = %v, %q; want no error, the flags and the variables with defaults", err, help.String())
	}

	var agents []string
	g := newTestGateway(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		agents = append(agents, r.Header.Get("User-Agent"))
		io.WriteString(w, "[]")
	}), nil)
	g.get("/getUsers")
	token := regexp.MustCompile("^eventgate/[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
	if len(agents) != 1 || !token.MatchString(agents[0]) {
		t.Errorf("upstream User-Agent %q; want eventgate/<version>, a valid product token", agents)
	}
	var health struct{ Version string }
	json.Unmarshal(g.get("/health").Body.Bytes(), &health)
	if want, _ := version(); health.Version != want {
		t.Errorf("/health version %q; want %q", health.Version, want)
	}
	buildVersion = "v9.9.9"
	defer func() { buildVersion = "" }()
	if v, _ := version(); v != "v9.9.9" || userAgent() != "eventgate/v9.9.9" {
		t.Errorf("with a version set at build time: %q, %q; want v9.9.9", v, userAgent())
	}
}
