#!/usr/bin/env bash
# Peak memory of eventgate (default settings) while a hostile Event API, in
# a process of its own (bench/hostile_upstream.py), attacks it: for each
# attack, ROUNDS rounds of REQUESTS concurrent GET /getEventsByUserId/1.
# Prints the statuses the clients got, the gateway's peak RSS, and whether
# it was still alive at the end.
#
#   bench/hostile.sh                 # this tree
#   REV=87bc9ac bench/hostile.sh     # an earlier commit: the "before" figures
source "$(dirname "$0")/lib.sh"
REQUESTS=${REQUESTS:-3}
ROUNDS=${ROUNDS:-3}
MODES=${MODES:-"dup-ids large-events near-cap under-cap large-headers many-ids"}
build_rev

printf '%-14s %-28s %12s %8s %9s\n' attack statuses peak_RSS_MB alive seconds
for mode in $MODES; do
  python3 "$BENCH_DIR/hostile_upstream.py" 3190 "$mode" &
  upstream=$!
  ALL_PIDS+=("$upstream")
  for _ in $(seq 100); do curl -s -o /dev/null http://127.0.0.1:3190/ && break; sleep 0.05; done
  start_server 3191 UPSTREAM_URL=http://127.0.0.1:3190
  # The peak is read from /proc as it goes: a process that dies takes its
  # VmHWM with it.
  ( while kill -0 "$SERVER_PID" 2> /dev/null; do
      awk '/VmHWM/ { printf "%.0f\n", $2 / 1024 }' "/proc/$SERVER_PID/status" 2> /dev/null
      sleep 0.1
    done > "$WORK/hwm" ) &
  watcher=$!
  start=$(date +%s.%N)
  for round in $(seq "$ROUNDS"); do
    for i in $(seq "$REQUESTS"); do
      curl -s -o /dev/null -m 60 -w '%{http_code}\n' "$BASE/getEventsByUserId/1" > "$WORK/code.$round.$i" &
    done
    wait $(jobs -p | grep -v -e "^$upstream\$" -e "^$watcher\$" -e "^$SERVER_PID\$") 2> /dev/null || true
  done
  statuses=$(cat "$WORK"/code.* | sort | uniq -c | awk '{ printf "%s×%s ", $1, $2 }'); rm -f "$WORK"/code.*
  seconds=$(echo "$(date +%s.%N) - $start" | bc)
  alive=yes; kill -0 "$SERVER_PID" 2> /dev/null || alive=DIED
  sleep 0.2
  peak=$(sort -n "$WORK/hwm" | tail -1)
  printf '%-14s %-28s %12s %8s %9.1f\n' "$mode" "$statuses" "${peak:-?}" "$alive" "$seconds"
  [ "$alive" = yes ] || grep -m1 -E 'fatal error|panic' "$WORK/server.log" | sed 's/^/               /'
  stop_server
  kill "$upstream" "$watcher" 2> /dev/null || true
  wait "$upstream" "$watcher" 2> /dev/null || true
done
