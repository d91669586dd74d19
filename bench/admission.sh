#!/usr/bin/env bash
# Adaptive admission from outside: the mock Event API in its own process,
# with a write capacity that changes mid-run; eventgate with default
# settings (one instance, or two behind HAProxy sharing the upstream); and
# writes offered at a steady rate in phases, each its own request, never
# retried. Prints per phase: writes acknowledged against what the upstream
# could take (goodput), the upstream's overload answers as a share of the
# writes sent to it, acknowledged writes the upstream does not hold, 503s
# without Retry-After, and p50/p99 latency of acknowledged writes.
#
#   bench/admission.sh                  # 5 per 10 s, then 20 per 10 s from 60 s; 2/s for 60 s, then 3/s for 40 s
#   INSTANCES=2 bench/admission.sh      # two instances behind HAProxy (apt-get install -y haproxy)
#   REV=9133e12 bench/admission.sh      # an earlier commit as the gateway (the mock is always this tree's)
#   CAPACITY=10 WINDOW=5s PHASES=100:4 bench/admission.sh   # another upstream and load
#   CAPACITY=1000 HICCUPS=0.02 PHASES=100:5 bench/admission.sh   # room to spare, 2% of writes refused at random
#
# CAPACITY is MOCK_ADD_CAPACITY: writes per WINDOW, optionally changing once
# ("5,20@60s"); the change should fall on a phase boundary.
source "$(dirname "$0")/lib.sh"
CAPACITY=${CAPACITY:-5,20@60s}
WINDOW=${WINDOW:-10s}
PHASES=${PHASES:-60:2,40:3}
INSTANCES=${INSTANCES:-1}
HICCUPS=${HICCUPS:-0}
UPSTREAM_PORT=3390
if [ "$INSTANCES" -gt 1 ]; then
  command -v haproxy > /dev/null || { echo "needs haproxy: apt-get install -y haproxy"; exit 1; }
fi

build && mv "$WORK/eventgate" "$WORK/mock-eventgate"
build_rev

# The instances first: the mock's capacity clock starts with the mock, just
# before the load.
PORTS=()
for i in $(seq "$INSTANCES"); do
  port=$((3390 + i))
  PORT=$port UPSTREAM_URL=http://127.0.0.1:$UPSTREAM_PORT SHUTDOWN_DRAIN=0s LOG_LEVEL=warn \
    "$WORK/eventgate" -env-file= > "$WORK/instance$i.log" 2>&1 &
  ALL_PIDS+=($!)
  PORTS+=("$port")
  for _ in $(seq 100); do curl -fs "http://127.0.0.1:$port/health" > /dev/null && break; sleep 0.05; done
done
TARGET=http://127.0.0.1:${PORTS[0]}
if [ "$INSTANCES" -gt 1 ]; then
  { printf 'defaults\n  mode http\n  timeout connect 1s\n  timeout client 30s\n  timeout server 30s\n'
    printf 'frontend gateway\n  bind 127.0.0.1:3380\n  default_backend eventgate\n'
    printf 'backend eventgate\n  balance roundrobin\n'
    for p in "${PORTS[@]}"; do printf '  server e%s 127.0.0.1:%s\n' "$p" "$p"; done
  } > "$WORK/haproxy.cfg"
  haproxy -f "$WORK/haproxy.cfg" -db > "$WORK/haproxy.log" 2>&1 &
  ALL_PIDS+=($!)
  TARGET=http://127.0.0.1:3380
  for _ in $(seq 100); do curl -fs "$TARGET/health" > /dev/null && break; sleep 0.05; done
fi

# upstream_calls: "sent overloaded" for POST /addEvent, summed over the
# instances' /metrics (calls refused before leaving, outcome busy, are not sent).
upstream_calls() {
  for p in "${PORTS[@]}"; do curl -fs "http://127.0.0.1:$p/metrics"; done |
    awk -F'[{}]' '/^eventgate_upstream_request_duration_seconds_count\{call="addEvent"/ {
      split($3, v, " "); if ($2 !~ /outcome="busy"/) sent += v[1]; if ($2 ~ /outcome="unavailable"/) over += v[1] }
      END { printf "%d %d\n", sent, over }'
}

PORT=$UPSTREAM_PORT MOCK_ADD_CAPACITY=$CAPACITY MOCK_ADD_WINDOW=$WINDOW MOCK_ADD_HICCUPS=$HICCUPS MOCK_FAIL_RATE=0 MOCK_EVENT_DELAY=0s \
  "$WORK/mock-eventgate" -env-file= -mock > "$WORK/upstream.log" 2>&1 &
ALL_PIDS+=($!)
for _ in $(seq 200); do curl -fs "http://127.0.0.1:$UPSTREAM_PORT/getUsers" > /dev/null && break; sleep 0.01; done

: > "$WORK/calls"
python3 "$BENCH_DIR/admission_load.py" "$TARGET" "$PHASES" "$WORK/writes.jsonl" |
  while read -r _ n; do echo "$n $(upstream_calls)" >> "$WORK/calls"; done
echo "end $(upstream_calls)" >> "$WORK/calls"
curl -fs "http://127.0.0.1:$UPSTREAM_PORT/getEvents" > "$WORK/stored.json"

echo "gateway ${REV:-this tree}, $INSTANCES instance(s); upstream $CAPACITY per $WINDOW, $HICCUPS refused at random; offered $PHASES (seconds:writes per second)"
python3 - "$WORK/writes.jsonl" "$WORK/calls" "$WORK/stored.json" "$CAPACITY" "$WINDOW" "$PHASES" <<'PY'
import json, sys
writes = [json.loads(l) for l in open(sys.argv[1])]
calls = [l.split() for l in open(sys.argv[2])]
stored = {e["id"] for e in json.load(open(sys.argv[3]))}
capacity, window, phases = sys.argv[4], float(sys.argv[5].rstrip("s")), sys.argv[6]
first, _, change = capacity.partition(",")
later, _, at = change.partition("@")
at = float(at.rstrip("s")) if at else float("inf")
# Upstream calls per phase: the counters at each boundary, then at the end.
marks = [(0, 0)] + [(int(c[1]), int(c[2])) for c in calls]
start, total_sent, total_over, latencies = 0.0, 0, 0, []
for i, spec in enumerate(phases.split(",")):
    seconds = float(spec.split(":")[0])
    rate = float(spec.split(":")[1])
    cap = min(int(later if start >= at else first) / window, rate) * seconds  # of the writes offered
    mine = [w for w in writes if w["phase"] == i + 1]
    acked = [w for w in mine if w["status"] == 200]
    sent, over = marks[i + 1][0] - marks[i][0], marks[i + 1][1] - marks[i][1]
    total_sent, total_over = total_sent + sent, total_over + over
    latencies += [w["seconds"] for w in acked]
    codes = {}
    for w in mine:
        codes[w["status"]] = codes.get(w["status"], 0) + 1
    print(f"phase {i + 1}: {len(acked)} of {cap:.0f} acknowledged ({100 * len(acked) / cap:.0f}%); "
          f"{sent} sent upstream, {over} overload answers ({100 * over / max(sent, 1):.0f}%); answers {dict(sorted(codes.items()))}")
    start += seconds
latencies.sort()
q = lambda p: latencies[min(len(latencies) - 1, int(p * len(latencies)))] if latencies else 0
missing = sum(1 for w in writes if w["status"] == 200 and w["id"] not in stored)
bare = sum(1 for w in writes if w["status"] == 503 and not w["retry_after"])
print(f"all: overload answers {total_over} of {total_sent} sent ({100 * total_over / max(total_sent, 1):.0f}%); "
      f"acknowledged but missing upstream: {missing}; 503 without Retry-After: {bare}; "
      f"acknowledged p50 {q(0.5):.2f} s, p99 {q(0.99):.2f} s")
PY
