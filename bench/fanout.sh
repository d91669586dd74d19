#!/usr/bin/env bash
# wrk throughput and p99 for GET /getEvents and a warm GET
# /getEventsByUserId, with the upstream connections each run opened; then
# GET /getEventsByUserId latency against the default mock (500 ms per event
# lookup), cold and warm, for a user with N events, and peak memory.
#
#   bench/fanout.sh            # RUNS=5 requests per point by default
source "$(dirname "$0")/lib.sh"
RUNS=${RUNS:-5}
SIZES=${SIZES-"1 10 100 1000 5000"} # SIZES="" for throughput only
build

# Throughput first, on the default data set (as the earlier service was measured):
# GET /getEvents (4 events) and a warm GET /getEventsByUserId for user 1
# (2 events) and for user 2 after adding 98 events (100).
start_server 3100 MOCK_ADD_CAPACITY=0
printf '%-34s %10s %10s %8s %12s\n' "wrk -t2 -c50 -d10s" "req/s" "p99" "errors" "conns_opened"
for path in /getEvents /getEventsByUserId/1 /getEventsByUserId/2; do
  # After the first two: /getEvents measured on the 4 seed events, as the earlier service was.
  [ "$path" = /getEventsByUserId/2 ] && add_events 2 98
  latency_ms "$path" > /dev/null # warms the cache
  before=$(metric eventgate_upstream_connections_opened_total)
  out=$(wrk -t2 -c50 -d10s --latency "$BASE$path")
  after=$(metric eventgate_upstream_connections_opened_total)
  rps=$(awk '/Requests\/sec/ { print $2 }' <<< "$out")
  p99=$(awk '$1 == "99%" { print $2 }' <<< "$out")
  non2xx=$(awk '/Non-2xx/ { print $NF }' <<< "$out")
  sockerr=$(awk '/Socket errors/ { gsub(",", ""); print $4 + $6 + $8 + $10 }' <<< "$out")
  printf '%-34s %10s %10s %8s %12s\n' "GET $path" "$rps" "$p99" "$(( ${non2xx:-0} + ${sockerr:-0} ))" "$((after - before))"
done
stop_server
[ -n "$SIZES" ] || exit 0 # SIZES="" measures throughput only
echo

# Cold: the cache off, so every request looks up every event.
# Warm: the default cache; the first request fills it.
printf '%-6s %12s %12s %14s\n' N cold_ms warm_ms peak_rss_MB
have=1 # user 3 starts with one event
start_server 3101 MOCK_ADD_CAPACITY=0 EVENT_CACHE_TTL=0
cold_pid=$SERVER_PID; cold_base=$BASE
SERVER_PID=""
start_server 3102 MOCK_ADD_CAPACITY=0
warm_pid=$SERVER_PID; warm_base=$BASE
for n in $SIZES; do
  BASE=$cold_base; add_events 3 $((n - have))
  BASE=$warm_base; add_events 3 $((n - have))
  have=$n
  for base in "$cold_base" "$warm_base"; do
    got=$(curl -fs "$base/getUsers" | python3 -c 'import json, sys; print(len([u for u in json.load(sys.stdin) if u["id"] == "3"][0]["events"]))')
    [ "$got" = "$n" ] || { echo "user 3 has $got events on $base; want $n"; exit 1; }
  done
  BASE=$cold_base
  cold=$(for _ in $(seq "$RUNS"); do latency_ms /getEventsByUserId/3; done | median)
  BASE=$warm_base
  latency_ms /getEventsByUserId/3 > /dev/null # fills the cache
  warm=$(for _ in $(seq "$RUNS"); do latency_ms /getEventsByUserId/3; done | median)
  SERVER_PID=$cold_pid
  printf '%-6s %12s %12s %14s\n' "$n" "$cold" "$warm" "$(peak_rss_mb)"
done
SERVER_PID=$cold_pid; stop_server
SERVER_PID=$warm_pid; stop_server
