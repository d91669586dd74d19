#!/usr/bin/env bash
# wrk for 30 s at 200 connections on each GET endpoint against the default
# mock (5% dropped connections on the list endpoints, 500 ms event lookups),
# twice over. Prints errors per run and RSS and goroutines before and after
# each round: after the first round they include the upstream connections
# kept idle for reuse; a leak would grow again in the second.
#
#   bench/load.sh              # DURATION=30s CONNECTIONS=200 by default
source "$(dirname "$0")/lib.sh"
DURATION=${DURATION:-30s}
CONNECTIONS=${CONNECTIONS:-200}
build
start_server 3104

goroutines() { curl -fs "$BASE/health" | python3 -c 'import json, sys; print(json.load(sys.stdin)["goroutines"])'; }

printf '%-8s %-26s %10s %10s %10s %8s\n' round endpoint requests req/s p99 errors
echo "before: RSS $(rss_mb) MB, $(goroutines) goroutines"
for round in 1 2; do
  for path in /getUsers /getEvents /getEventsByUserId/1; do
    out=$(wrk -t2 -c"$CONNECTIONS" -d"$DURATION" --latency "$BASE$path")
    total=$(awk '/requests in/ { print $1 }' <<< "$out")
    rps=$(awk '/Requests\/sec/ { print $2 }' <<< "$out")
    p99=$(awk '$1 == "99%" { print $2 }' <<< "$out")
    non2xx=$(awk '/Non-2xx/ { print $NF }' <<< "$out")
    sockerr=$(awk '/Socket errors/ { gsub(",", ""); print $4 + $6 + $8 + $10 }' <<< "$out")
    printf '%-8s %-26s %10s %10s %10s %8s\n' "$round" "GET $path" "$total" "$rps" "$p99" "$(( ${non2xx:-0} + ${sockerr:-0} ))"
  done
  echo "after round $round: RSS $(rss_mb) MB (peak $(peak_rss_mb) MB), $(goroutines) goroutines, $(metric eventgate_upstream_connections_opened_total) upstream connections opened so far"
done
