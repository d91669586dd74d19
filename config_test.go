package main

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
)

func TestRunRefusesABadVariable(t *testing.T) {
	tests := []struct{ name, value string }{
		{"PORT", "http"},
		{"PORT", "70000"},
		{"UPSTREAM_TIMEOUT", "2"},
		{"BREAKER_THRESHOLD", "0"},
		{"MOCK_FAIL_RATE", "1.5"},
		{"MOCK_ADD_CAPACITY", "5,20"},
		{"MOCK_ADD_CAPACITY", "5,20@0s"},
		{"MOCK_ADD_CAPACITY", "-1"},
		{"UPSTREAM_URL", "ftp://x"},
		{"LOG_FORMAT", "xml"},
		{"LOG_LEVEL", "loud"},
		{"REQUEST_TIMEOUT", "2s"}, // not longer than UPSTREAM_TIMEOUT
		{"MEMORY_BUDGET", "32MB"},
		{"EVENT_CACHE_BYTES", "1KiB"},
		{"IDEMPOTENCY_SECRET", "too-short-s3cret"},
	}
	// Cancelled: were a bad value accepted, run would return at once, not serve.
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	for _, tt := range tests {
		err := run(ctx, []string{"eventgate", "-env-file="}, envOf(map[string]string{tt.name: tt.value}), io.Discard, io.Discard)
		if err == nil || !strings.Contains(err.Error(), tt.name) || strings.Contains(err.Error(), "s3cret") {
			t.Errorf("%s=%q: run error = %v; want one naming %s", tt.name, tt.value, err, tt.name)
		}
	}
}

func TestRunReadsDotEnvButTheEnvironmentWins(t *testing.T) {
	file := t.TempDir() + "/.env"
	if err := writeFile(file, "# comment\nBREAKER_THRESHOLD=zero\nexport LOG_FORMAT='xml'\n"); err != nil {
		t.Fatal(err)
	}
	err := run(t.Context(), []string{"eventgate", "-env-file=" + file}, envOf(map[string]string{"BREAKER_THRESHOLD": "3"}), io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "LOG_FORMAT") {
		t.Errorf("run error = %v; want the .env's LOG_FORMAT refused (and its BREAKER_THRESHOLD overridden)", err)
	}
}

// TestConfigDocsMatchTheDefaults keeps .env.example, the README's
// configuration table and the code's defaults in step: every variable in
// each, with the same default.
func TestConfigDocsMatchTheDefaults(t *testing.T) {
	code := map[string]string{}
	for _, d := range envDefaults {
		code[d.name] = d.value
	}
	example, err := readDotEnv(".env.example")
	if err != nil {
		t.Fatal(err)
	}
	for _, doc := range []struct {
		name string
		vars map[string]string
	}{{".env.example", example}, {"README.md", readmeDefaults(t)}} {
		for name, value := range code {
			if got, ok := doc.vars[name]; !ok || got != value {
				t.Errorf("%s: %s = %q (listed: %v); the code's default is %q", doc.name, name, got, ok, value)
			}
		}
		for name := range doc.vars {
			if _, ok := code[name]; !ok {
				t.Errorf("%s lists %s, which the code does not read", doc.name, name)
			}
		}
	}
}

// readmeDefaults reads the README's configuration table: rows of
// | `NAME` | default | meaning |, where a row may name several variables
// ("`A`, `B` | 1, 2"), and a default in parentheses means empty.
func readmeDefaults(t *testing.T) map[string]string {
	t.Helper()
	data, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	row := regexp.MustCompile("^\\| ((?:`[A-Z_]+`(?:, )?)+) \\| ([^|]*) \\|")
	vars := map[string]string{}
	for _, line := range strings.Split(string(data), "\n") {
		m := row.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		names := strings.Split(strings.ReplaceAll(m[1], "`", ""), ", ")
		values := strings.Split(strings.TrimSpace(m[2]), ", ")
		if len(values) != len(names) {
			values = []string{strings.TrimSpace(m[2])}
		}
		for i, name := range names {
			v := values[min(i, len(values)-1)]
			if strings.HasPrefix(v, "(") {
				v = ""
			}
			vars[name] = v
		}
	}
	return vars
}

// TestRetiredVariablesAreNamedWithTheirReplacement: a variable eventgate no
// longer reads still starts it, with a warning that names what replaced it.
func TestRetiredVariablesAreNamedWithTheirReplacement(t *testing.T) {
	logs, stop, errc, _ := startRun(t, map[string]string{"FANOUT_LIMIT": "10", "EVENT_CACHE_SIZE": "5"})
	stop()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"FANOUT_LIMIT is no longer read; replaced by UPSTREAM_MAX_INFLIGHT", "EVENT_CACHE_SIZE is no longer read; replaced by EVENT_CACHE_BYTES"} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("start-up log lacks %q:\n%s", want, logs)
		}
	}
}

// TestDotEnvTyposStopTheStart: a .env name a typo away from a known one,
// or with one of eventgate's prefixes, stops the start naming it and the
// closest known name; a retired name, and other programs' names, do not.
func TestDotEnvTyposStopTheStart(t *testing.T) {
	for _, tt := range []struct {
		line, closest string
	}{
		{"UPSTREAM_TIMOUT=5s", "UPSTREAM_TIMEOUT"},
		{"BRAEKER_THRESHOLD=5", "BREAKER_THRESHOLD"},
		{"PROT=3000", "PORT"},
		{"UPSTREAM_TOKEN=abc", "UPSTREAM_URL"},
		{"MOCK_DELAY=1s", ""},
		{"CORS_ORIGIN=https://a.example", "CORS_ORIGINS"},
		{"api_token=secret", "API_TOKEN"},      // another case: not read, and writes would be open
		{"API_TOKEN_FILE=/run/x", "API_TOKEN"}, // a convention eventgate does not follow for this one
		{"EVENT_CACHE_SIZE=1000", "-"},         // retired: a warning, not an error
		{"COMPOSE_PROJECT_NAME=x", "-"},
		{"HOST=box", "-"},
		{"DATABASE_URL=postgres://x", "-"},
	} {
		name, value, _ := strings.Cut(tt.line, "=")
		err := checkDotEnvNames(".env", map[string]string{name: value})
		switch {
		case tt.closest == "-" && err != nil:
			t.Errorf("%s: %v; want it left alone", tt.line, err)
		case tt.closest != "-" && (err == nil || !strings.Contains(err.Error(), name) || !strings.Contains(err.Error(), "did you mean "+tt.closest)):
			t.Errorf("%s: %v; want an error naming %s and %s", tt.line, err, name, tt.closest)
		}
	}
}

// TestRunStopsAtADotEnvTypo: the start itself stops at the typo.
func TestRunStopsAtADotEnvTypo(t *testing.T) {
	file := t.TempDir() + "/.env"
	if err := writeFile(file, "UPSTREAM_TIMOUT=5s\n"); err != nil {
		t.Fatal(err)
	}
	err := run(t.Context(), []string{"eventgate", "-env-file=" + file}, envOf(map[string]string{"PORT": "0"}), io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "did you mean UPSTREAM_TIMEOUT") {
		t.Errorf("run with a typo in .env = %v; want it refused", err)
	}
}

// TestDotEnvExportWithATab: "export<TAB>NAME=value" is read as a shell
// reads it.
func TestDotEnvExportWithATab(t *testing.T) {
	file := t.TempDir() + "/.env"
	if err := writeFile(file, "export\tAPI_TOKEN=s3cret\n"); err != nil {
		t.Fatal(err)
	}
	vars, err := readDotEnv(file)
	if err != nil || vars["API_TOKEN"] != "s3cret" {
		t.Errorf("readDotEnv = %v, %v; want API_TOKEN=s3cret", vars, err)
	}
}

// TestStartupFailureTakesLogFormatFromDotEnv: a bad value, with
// LOG_FORMAT=json in the .env file, is reported in JSON.
func TestStartupFailureTakesLogFormatFromDotEnv(t *testing.T) {
	file := t.TempDir() + "/.env"
	if err := writeFile(file, "LOG_FORMAT=json\nUPSTREAM_TIMEOUT=bogus\n"); err != nil {
		t.Fatal(err)
	}
	err := run(t.Context(), []string{"eventgate", "-env-file=" + file}, envOf(map[string]string{}), io.Discard, io.Discard)
	var se *startupError
	if !errors.As(err, &se) || se.logFormat != "json" || !strings.Contains(err.Error(), "UPSTREAM_TIMEOUT") {
		t.Errorf("run = %v; want the UPSTREAM_TIMEOUT error, to be reported as the .env's LOG_FORMAT (json) says", err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$") // and main reports it so, on stderr
	cmd.Env = append(os.Environ(), "EVENTGATE_RUN_MAIN=1", "EVENTGATE_ARGS=-env-file="+file, "LOG_FORMAT=")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	var entry map[string]any
	if err := cmd.Run(); err == nil || json.Unmarshal([]byte(stderr.String()), &entry) != nil || entry["level"] != "ERROR" {
		t.Errorf("eventgate with that .env: %v, stderr %q; want exit 1 and one JSON line", err, stderr.String())
	}
}

func TestMockCapacityMayChangeOnce(t *testing.T) {
	for v, want := range map[string][3]int{"5": {5, 0, 0}, "0": {0, 0, 0}, "5,20@60s": {5, 20, 60}} {
		c, err := loadConfig(envOf(map[string]string{"MOCK_ADD_CAPACITY": v}))
		got := [3]int{c.Mock.AddCapacity, c.Mock.AddCapacityLater, int(c.Mock.AddCapacityAt.Seconds())}
		if err != nil || got != want {
			t.Errorf("MOCK_ADD_CAPACITY=%s: %v, %v; want %v", v, got, err, want)
		}
	}
}
