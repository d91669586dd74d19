#!/usr/bin/env bash
# SIGTERM to one of two instances behind HAProxy with HAProxy's default
# check timing (check inter 2s fall 3, on /ready), under load: wrk -c20 on
# GET /getEvents through HAProxy for 14 s, the SIGTERM 3 s in. Prints the
# client errors (non-2xx answers and socket errors) for each drain given.
#
#   bench/drain.sh                 # DRAINS="0s 3s 7s" (7s is the default)
#   REV=9133e12 bench/drain.sh     # an earlier commit
#
# Needs haproxy and wrk (apt-get install -y haproxy wrk), installed when
# missing and apt-get is there.
source "$(dirname "$0")/lib.sh"
DRAINS=${DRAINS:-0s 3s 7s}
for tool in haproxy wrk; do
  command -v "$tool" > /dev/null || apt-get install -y -qq haproxy wrk > /dev/null 2>&1 ||
    { apt-get update -qq && apt-get install -y -qq haproxy wrk > /dev/null; }
done
build_rev

PORT=3490 MOCK_FAIL_RATE=0 "$WORK/eventgate" -env-file= -mock > "$WORK/upstream.log" 2>&1 &
ALL_PIDS+=($!)

cat > "$WORK/haproxy.cfg" <<CFG
defaults
  mode http
  timeout connect 1s
  timeout client 15s
  timeout server 15s
frontend gateway
  bind 127.0.0.1:3480
  default_backend eventgate
backend eventgate
  balance roundrobin
  option httpchk GET /ready
  default-server check inter 2s fall 3 rise 2
  server e1 127.0.0.1:3491
  server e2 127.0.0.1:3492
CFG

start_instance() { # N DRAIN
  env PORT=349$1 UPSTREAM_URL=http://127.0.0.1:3490 SHUTDOWN_DRAIN=$2 "$WORK/eventgate" -env-file= > "$WORK/instance$1.log" 2>&1 &
  eval "PID$1=$!"
  ALL_PIDS+=($!)
  for _ in $(seq 100); do curl -fs "http://127.0.0.1:349$1/ready" > /dev/null && return; sleep 0.05; done
  echo "instance $1 did not start"; cat "$WORK/instance$1.log"; exit 1
}

printf '%-8s %10s %10s %10s\n' drain requests non-2xx socket-errors
for drain in $DRAINS; do
  start_instance 1 "$drain"
  start_instance 2 "$drain"
  haproxy -f "$WORK/haproxy.cfg" -db > "$WORK/haproxy.log" 2>&1 &
  HAPROXY=$!
  ALL_PIDS+=($HAPROXY)
  sleep 5 # both servers up (rise 2 at inter 2s)
  wrk -t2 -c20 -d14s http://127.0.0.1:3480/getEvents > "$WORK/wrk.out" &
  WRK=$!
  sleep 3
  kill -TERM "$PID1"
  wait "$WRK" || true
  total=$(awk '/requests in/ { print $1 }' "$WORK/wrk.out")
  non2xx=$(awk '/Non-2xx/ { print $NF }' "$WORK/wrk.out")
  sockerr=$(awk '/Socket errors/ { gsub(",", ""); print $4 + $6 + $8 + $10 }' "$WORK/wrk.out")
  printf '%-8s %10s %10s %10s\n' "$drain" "$total" "${non2xx:-0}" "${sockerr:-0}"
  grep -i "socket errors" "$WORK/wrk.out" | sed "s/^ */         /" || true
  kill "$PID2" "$HAPROXY" 2> /dev/null || true
  wait "$PID1" "$PID2" "$HAPROXY" 2> /dev/null || true
done
