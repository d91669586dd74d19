#!/usr/bin/env bash
# Tail latency of GET /getEventsByUserId under a heavy-tailed upstream, with
# and without hedging. The mock Event API runs in its own process: event
# lookups take 20 ms, except 1% that take 1 s. The gateway's cache is off,
# so every request looks every event up. For each N, 5 requests warm the
# gateway up (hedging learns the p95), then REQUESTS are timed. Reads are
# always hedged now (HEDGE_DELAY is retired); the unhedged figures come from
# UNHEDGED_REV, the last commit that could turn hedging off, with
# HEDGE_DELAY=0.
#
#   bench/tail.sh                 # SIZES="100 1000" REQUESTS=30
source "$(dirname "$0")/lib.sh"
SIZES=${SIZES:-"100 1000"}
REQUESTS=${REQUESTS:-30}
UNHEDGED_REV=${UNHEDGED_REV:-9133e12}
REV=$UNHEDGED_REV build_rev && mv "$WORK/eventgate" "$WORK/eventgate-unhedged"
build

PORT=3390 MOCK_EVENT_DELAY=20ms MOCK_EVENT_TAIL_RATE=0.01 MOCK_EVENT_TAIL_DELAY=1s MOCK_FAIL_RATE=0 MOCK_ADD_CAPACITY=0 \
  "$WORK/eventgate" -env-file= -mock > "$WORK/upstream.log" 2>&1 &
ALL_PIDS+=($!)
for _ in $(seq 100); do curl -fs -o /dev/null http://127.0.0.1:3390/getUsers && break; sleep 0.05; done

# percentiles: median, p90 and p99 of the numbers on standard input.
percentiles() {
  sort -g | awk '{ v[NR] = $1 } END {
    q = "0.5 0.9 0.99"; split(q, qs, " ")
    for (i = 1; i <= 3; i++) { k = int(qs[i] * NR + 0.999999); if (k < 1) k = 1; printf "%s%s", (i > 1 ? " " : ""), v[k] }
    print ""
  }'
}

printf '%-6s %-8s %10s %10s %10s %14s\n' N hedging median_ms p90_ms p99_ms extra_calls
have=1 # user 3 starts with one event
for n in $SIZES; do
  for hedge in 0 auto; do
    if [ "$hedge" = 0 ]; then
      cp "$WORK/eventgate" "$WORK/eventgate-hedged" && cp "$WORK/eventgate-unhedged" "$WORK/eventgate"
    fi
    start_server 3391 UPSTREAM_URL=http://127.0.0.1:3390 EVENT_CACHE_TTL=0 HEDGE_DELAY=$hedge
    if [ "$hedge" = 0 ]; then cp "$WORK/eventgate-hedged" "$WORK/eventgate"; fi
    if [ "$have" -lt "$n" ]; then add_events 3 $((n - have)); have=$n; fi
    for _ in $(seq 5); do latency_ms /getEventsByUserId/3 > /dev/null; done
    sent0=$(metric 'eventgate_upstream_hedges_total{call="getEventById",result="sent"}'); sent0=${sent0:-0}
    : > "$WORK/lat"
    for _ in $(seq "$REQUESTS"); do latency_ms /getEventsByUserId/3 >> "$WORK/lat"; done
    sent=$(metric 'eventgate_upstream_hedges_total{call="getEventById",result="sent"}'); sent=${sent:-0}
    extra=$(awk -v s="$((sent - sent0))" -v c="$((n * REQUESTS))" 'BEGIN { printf "%.1f%%", 100 * s / c }')
    read -r med p90 p99 < <(percentiles < "$WORK/lat")
    printf '%-6s %-8s %10s %10s %10s %14s\n' "$n" "$hedge" "$med" "$p90" "$p99" "$extra"
    stop_server
  done
done
