#!/usr/bin/env bash
# GET /getEvents through eventgate and through nginx (a plain reverse proxy
# with keep-alive upstream connections), both in front of the same
# standalone mock (MOCK_FAIL_RATE=0), both writing an access log line per
# request to a file. wrk -t2 -c50 for DURATION, alternating eventgate and
# nginx ROUNDS times in one run; prints each run's requests/s, p99 and
# errors, then the medians and the ratio eventgate / nginx.
#
#   bench/nginx.sh                  # DURATION=10s ROUNDS=3
#   REV=9133e12 bench/nginx.sh      # eventgate as of an earlier commit
#   BASELINE=1 bench/nginx.sh       # and the standard library's own reverse
#                                   # proxy (httputil.ReverseProxy, nothing
#                                   # else): what net/http passes through
#                                   # when every read is its own call
#
# Needs wrk and nginx (apt-get install -y wrk nginx-light); both are
# installed when missing and apt-get is there.
source "$(dirname "$0")/lib.sh"
DURATION=${DURATION:-10s}
ROUNDS=${ROUNDS:-3}
PATH_UNDER_TEST=${PATH_UNDER_TEST:-/getEvents}
for tool in wrk nginx; do
  if ! command -v "$tool" > /dev/null; then
    apt-get install -y -qq wrk nginx-light > /dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq wrk nginx-light > /dev/null; }
  fi
done
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

build_rev
MOCK_PORT=3201 GATE_PORT=3202 NGINX_PORT=3203

# The mock alone, as the upstream of both.
env PORT=$MOCK_PORT MOCK_FAIL_RATE=0 "$WORK/eventgate" -env-file= -mock > "$WORK/mock.log" 2>&1 &
ALL_PIDS+=($!)
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$MOCK_PORT/getEvents" > /dev/null && break; sleep 0.05; done

# eventgate in front of it; its request log (one line per request, at info)
# goes to a file, as nginx's access log does.
start_server $GATE_PORT UPSTREAM_URL=http://127.0.0.1:$MOCK_PORT LOG_FORMAT=json

mkdir -p "$WORK/nginx"
cat > "$WORK/nginx/nginx.conf" <<EOF
worker_processes auto;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 4096; }
http {
  access_log $WORK/nginx/access.log;
  upstream mock { server 127.0.0.1:$MOCK_PORT; keepalive 64; }
  server {
    listen 127.0.0.1:$NGINX_PORT;
    location / {
      proxy_pass http://mock;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
EOF
"$NGINX" -c "$WORK/nginx/nginx.conf" -g 'daemon off;' &
ALL_PIDS+=($!)
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$NGINX_PORT$PATH_UNDER_TEST" > /dev/null && break; sleep 0.05; done

# The standard library's reverse proxy, as a baseline: no log, no checks,
# one upstream call per request. Built in $WORK, with a module of its own.
GOPROXY_PORT=3204
if [ -n "${BASELINE:-}" ]; then
  mkdir -p "$WORK/baseline"
  cat > "$WORK/baseline/main.go" <<'GO'
package main

import (
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
)

func main() {
	upstream, _ := url.Parse(os.Args[1])
	proxy := httputil.NewSingleHostReverseProxy(upstream)
	proxy.Transport = &http.Transport{MaxIdleConnsPerHost: 64} // as nginx's keepalive 64
	http.ListenAndServe(os.Args[2], proxy)
}
GO
  printf 'module baseline\n\ngo 1.25\n' > "$WORK/baseline/go.mod"
  (cd "$WORK/baseline" && go build -o "$WORK/baseline/proxy" .)
  "$WORK/baseline/proxy" "http://127.0.0.1:$MOCK_PORT" "127.0.0.1:$GOPROXY_PORT" 2> /dev/null &
  ALL_PIDS+=($!)
  for _ in $(seq 100); do curl -fs "http://127.0.0.1:$GOPROXY_PORT$PATH_UNDER_TEST" > /dev/null && break; sleep 0.05; done
fi

# run NAME URL: one wrk run; prints a line and appends "rps p99_ms" to $WORK/result.NAME.
run() {
  local out rps p99 non2xx sockerr
  out=$(wrk -t2 -c50 -d"$DURATION" --latency "$2")
  rps=$(awk '/Requests\/sec/ { print $2 }' <<< "$out")
  p99=$(awk '$1 == "99%" { v = $2; if (v ~ /us$/) { sub("us", "", v); v /= 1000 } else if (v ~ /ms$/) sub("ms", "", v); else if (v ~ /s$/) { sub("s", "", v); v *= 1000 }; print v }' <<< "$out")
  non2xx=$(awk '/Non-2xx/ { print $NF }' <<< "$out")
  sockerr=$(awk '/Socket errors/ { gsub(",", ""); print $4 + $6 + $8 + $10 }' <<< "$out")
  printf '%-10s %10s req/s  p99 %8s ms  errors %s\n' "$1" "$rps" "$p99" "$(( ${non2xx:-0} + ${sockerr:-0} ))"
  echo "$rps $p99" >> "$WORK/result.$1"
}

echo "GET $PATH_UNDER_TEST, wrk -t2 -c50 -d$DURATION, ${REV:-this tree}"
for _ in $(seq "$ROUNDS"); do
  run eventgate "$BASE$PATH_UNDER_TEST"
  run nginx "http://127.0.0.1:$NGINX_PORT$PATH_UNDER_TEST"
  if [ -n "${BASELINE:-}" ]; then run go-proxy "http://127.0.0.1:$GOPROXY_PORT$PATH_UNDER_TEST"; fi
done
gate=$(awk '{ print $1 }' "$WORK/result.eventgate" | median)
ngx=$(awk '{ print $1 }' "$WORK/result.nginx" | median)
printf 'median req/s: eventgate %s, nginx %s, ratio %.2f\n' "$gate" "$ngx" "$(echo "$gate $ngx" | awk '{ print $1 / $2 }')"
printf 'median p99: eventgate %s ms, nginx %s ms\n' "$(awk '{ print $2 }' "$WORK/result.eventgate" | median)" "$(awk '{ print $2 }' "$WORK/result.nginx" | median)"
if [ -n "${BASELINE:-}" ]; then
  printf 'median req/s of the standard library reverse proxy: %s, ratio to nginx %.2f\n' \
    "$(awk '{ print $1 }' "$WORK/result.go-proxy" | median)" "$(awk '{ print $1 }' "$WORK/result.go-proxy" | median | awk -v n="$ngx" '{ print $1 / n }')"
fi
echo "upstream calls made by eventgate: $(curl -fs "$BASE/metrics" | awk '/^eventgate_upstream_request_duration_seconds_count\{call="getEvents"/ { s += $2 } END { print s + 0 }')"
