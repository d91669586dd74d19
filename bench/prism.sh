#!/usr/bin/env bash
# Live answers against openapi.yaml. eventgate (embedded mock, no dropped
# connections) behind Prism in proxy mode with --errors, which answers a
# violation of the contract (a status, header or body the spec does not
# allow) with an error of its own instead of the answer: the README's
# examples and every case Prism lets through are sent, and each answer
# counted as a violation or not.
#
# Prism refuses, before they reach eventgate, the requests the spec calls
# invalid (a bad id, a body that is not an event, a wrong Content-Type, a
# header over 16 KiB): those are sent to eventgate directly, and their
# answers checked against the spec's error schema here (a JSON object with
# a string "error", and the status the README's table gives).
#
#   bench/prism.sh      # needs node (npx); Prism comes from npm
source "$(dirname "$0")/lib.sh"
build
start_server 3602 MOCK_FAIL_RATE=0 API_TOKEN=bench-token CORS_ORIGINS=https://app.example.com
GATE=$BASE
PRISM=http://127.0.0.1:4012
pkill -f "prism proxy .* -p 4012" 2> /dev/null || true # one left by an interrupted run
npx --yes @stoplight/prism-cli@5 proxy "$ROOT/openapi.yaml" "$GATE" --errors --cors=false -p 4012 > "$WORK/prism.log" 2>&1 &
ALL_PIDS+=($!)
for _ in $(seq 600); do curl -fs "$PRISM/health" > /dev/null 2>&1 && break; sleep 0.2; done

violations=0 checked=0
# through DESCRIPTION CURL_ARGS...: one request through Prism; a violation
# is Prism's own answer instead of eventgate's (an sl-violations header, or
# its problem JSON).
through() {
  local what=$1; shift
  local out
  out=$(curl -s -D "$WORK/h" -o "$WORK/b" -w '%{http_code}' "$@")
  checked=$((checked + 1))
  if grep -qi '^sl-violations:\|^content-type: application/problem+json' "$WORK/h" || grep -q 'VIOLATIONS\|https://stoplight.io/prism/errors' "$WORK/b"; then
    violations=$((violations + 1))
    printf '%-58s %s VIOLATION\n' "$what" "$out"
    grep -i '^sl-violations:' "$WORK/h" | cut -c1-400
    head -c 400 "$WORK/b"; echo
  else
    printf '%-58s %s ok\n' "$what" "$out"
  fi
}

json='Content-Type: application/json'
auth='Authorization: Bearer bench-token'
echo "== through Prism (proxy, --errors)"
through "GET /getUsers" "$PRISM/getUsers"
through "GET /getEvents" "$PRISM/getEvents"
through "GET /getEvents, gzip" -H 'Accept-Encoding: gzip' "$PRISM/getEvents" --compressed
through "GET /getEventsByUserId/1" "$PRISM/getEventsByUserId/1"
through "GET /getEventsByUserId/404 (unknown user)" "$PRISM/getEventsByUserId/404"
etag=$(curl -s -D - -o /dev/null "$GATE/getEvents" | awk -F': ' 'tolower($1) == "etag" { sub("\r", "", $2); print $2 }')
through "GET /getEvents, If-None-Match (304)" -H "If-None-Match: $etag" "$PRISM/getEvents"
through "GET /getUsers with traceparent" -H 'traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01' "$PRISM/getUsers"
through "POST /addEvent" -H "$json" -H "$auth" -d '{"name": "Launch", "userId": "1", "details": "Room 4"}' "$PRISM/addEvent"
through "POST /addEvent, Idempotency-Key" -H "$json" -H "$auth" -H 'Idempotency-Key: "k-1"' -d '{"name": "Launch", "userId": "1"}' "$PRISM/addEvent"
through "POST /addEvent, same key again (replayed)" -H "$json" -H "$auth" -H 'Idempotency-Key: "k-1"' -d '{"name": "Launch", "userId": "1"}' "$PRISM/addEvent"
through "POST /addEvent, same key, other body (422)" -H "$json" -H "$auth" -H 'Idempotency-Key: "k-1"' -d '{"name": "Other", "userId": "1"}' "$PRISM/addEvent"
through "POST /addEvent, unknown user (404)" -H "$json" -H "$auth" -d '{"name": "x", "userId": "404"}' "$PRISM/addEvent"
through "POST /addEvent, no token (401)" -H "$json" -d '{"name": "x", "userId": "1"}' "$PRISM/addEvent"
through "OPTIONS /addEvent, preflight" -X OPTIONS -H 'Origin: https://app.example.com' -H 'Access-Control-Request-Method: POST' "$PRISM/addEvent"
through "OPTIONS /addEvent, preflight from elsewhere (403)" -X OPTIONS -H 'Origin: https://evil.example' -H 'Access-Control-Request-Method: POST' "$PRISM/addEvent"
through "GET /health" "$PRISM/health"
through "GET /ready" "$PRISM/ready"
through "GET /metrics" "$PRISM/metrics"

echo "== straight to eventgate (Prism refuses these first), checked against the error schema"
direct() { # DESCRIPTION WANT_STATUS CURL_ARGS...
  local what=$1 want=$2; shift 2
  local code
  code=$(curl -s -o "$WORK/b" -w '%{http_code}' "$@") || true # 431 resets the connection while the headers are sent
  checked=$((checked + 1))
  if [ "$code" = "$want" ] && { [ "$want" = 431 ] || python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); assert isinstance(d, dict) and isinstance(d["error"], str) and set(d) <= {"error", "problems"}' "$WORK/b" 2> /dev/null; }; then
    printf '%-58s %s ok\n' "$what" "$code"
  else
    violations=$((violations + 1))
    printf '%-58s %s VIOLATION (want %s with {"error": ...}): %s\n' "$what" "$code" "$want" "$(head -c 200 "$WORK/b")"
  fi
}
direct "GET /getEventsByUserId/bad!id" 400 "$GATE/getEventsByUserId/bad!id"
direct "POST /addEvent, malformed JSON" 400 -H "$json" -H "$auth" -d '{"name": ' "$GATE/addEvent"
direct "POST /addEvent, missing name" 400 -H "$json" -H "$auth" -d '{"userId": "1"}' "$GATE/addEvent"
direct "POST /addEvent, unknown field" 400 -H "$json" -H "$auth" -d '{"name": "x", "userId": "1", "when": 1}' "$GATE/addEvent"
direct "POST /addEvent, text/plain (415)" 415 -H 'Content-Type: text/plain' -H "$auth" -d '{"name": "x", "userId": "1"}' "$GATE/addEvent"
direct "POST /addEvent, 70 KB body (413)" 413 -H "$json" -H "$auth" --data-binary "@$(python3 -c 'import sys; open(sys.argv[1], "w").write("{\"name\": \"" + "x" * 70000 + "\", \"userId\": \"1\"}")' "$WORK/big.json"; echo "$WORK/big.json")" "$GATE/addEvent"
direct "POST /addEvent, bad Idempotency-Key" 400 -H "$json" -H "$auth" -H 'Idempotency-Key: "unterminated' -d '{"name": "x", "userId": "1"}' "$GATE/addEvent"
direct "DELETE /getUsers (405)" 405 -X DELETE "$GATE/getUsers"
direct "GET /nowhere (404)" 404 "$GATE/nowhere"
direct "headers over 16 KiB (431, plain text by net/http)" 431 -H "X-Big: $(head -c 40000 /dev/zero | tr '\0' a)" "$GATE/getUsers"

# HEAD: Prism (5.x) tries to read a HEAD answer's empty body as JSON and
# fails, so it is checked here: 200, no body, the GET's ETag.
checked=$((checked + 1))
head_etag=$(curl -s -I "$GATE/getUsers" | awk -F': ' 'tolower($1) == "etag" { sub("\r", "", $2); print $2 }')
get_etag=$(curl -s -D - -o /dev/null "$GATE/getUsers" | awk -F': ' 'tolower($1) == "etag" { sub("\r", "", $2); print $2 }')
head_body=$(curl -s -X HEAD --max-time 2 -o /dev/null -w '%{size_download}' "$GATE/getUsers" || true) # curl waits for the Content-Length in vain
if [ -n "$head_etag" ] && [ "$head_etag" = "$get_etag" ] && [ "$head_body" = 0 ]; then
  printf '%-58s %s ok\n' "HEAD /getUsers (no body, the GET's ETag)" 200
else
  violations=$((violations + 1))
  printf '%-58s VIOLATION: ETag %s vs %s, %s body bytes\n' "HEAD /getUsers" "$head_etag" "$get_etag" "$head_body"
fi

echo "$checked answers checked, $violations violations"
pkill -f "prism proxy .* -p 4012" 2> /dev/null || true # npx's node child outlives npx
[ "$violations" = 0 ]
