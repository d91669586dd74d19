package main

import (
	"context"
	"io"
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
		{"UPSTREAM_URL", "ftp://x"},
		{"LOG_FORMAT", "xml"},
		{"LOG_LEVEL", "loud"},
		{"REQUEST_TIMEOUT", "2s"}, // not longer than UPSTREAM_TIMEOUT
		{"MAX_RESPONSE_BYTES", "32MB"},
		{"EVENT_CACHE_BYTES", "1KiB"},
	}
	// Cancelled: were a bad value accepted, run would return at once, not serve.
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	for _, tt := range tests {
		err := run(ctx, []string{"eventgate", "-env-file="}, envOf(map[string]string{tt.name: tt.value}), io.Discard, io.Discard)
		if err == nil || !strings.Contains(err.Error(), tt.name) {
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
