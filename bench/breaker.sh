#!/usr/bin/env bash
# One POST /addEvent every 100 ms for 60 s against the default mock (5
# writes per sliding 10 s) with BREAKER_BACKOFF_MIN=1s. Prints a table a
# second: 200s and 503s to the client and calls that reached the upstream;
# then, for each time the breaker opened, how long after the mock could
# accept again the breaker closed; and the latency of rejected requests.
#
#   bench/breaker.sh           # DURATION=60 seconds by default
source "$(dirname "$0")/lib.sh"
DURATION=${DURATION:-60}
build
start_server 3103 BREAKER_BACKOFF_MIN=1s LOG_FORMAT=json

upstream_calls() {
  curl -fs "$BASE/metrics" |
    awk 'index($0, "eventgate_upstream_request_duration_seconds_count{call=\"addEvent\"") == 1 { n += $2 } END { print n + 0 }'
}

start_ms=$(date +%s%3N)
: > "$WORK/requests"
: > "$WORK/upstream"
for i in $(seq $((DURATION * 10))); do
  t=$(( $(date +%s%3N) - start_ms ))
  curl -s -o /dev/null -w "$t %{http_code} %{time_total}\n" -H 'Content-Type: application/json' \
    -d "{\"name\": \"tick $i\", \"userId\": \"1\"}" "$BASE/addEvent" >> "$WORK/requests" &
  if (( i % 10 == 0 )); then echo "$(( t / 1000 )) $(upstream_calls)" >> "$WORK/upstream"; fi
  # Keep to the 100 ms beat, whatever the loop itself cost.
  next=$(( start_ms + i * 100 )); now=$(date +%s%3N)
  (( next > now )) && sleep "$(awk -v ms=$(( next - now )) 'BEGIN { print ms / 1000 }')"
done
wait $(jobs -p | grep -v "^$SERVER_PID\$") 2> /dev/null || true
stop_server

python3 - "$WORK/requests" "$WORK/upstream" "$WORK/server.log" "$start_ms" <<'PY'
import json, sys, statistics
from datetime import datetime
reqs = [l.split() for l in open(sys.argv[1]) if l.strip()]
reqs = sorted((int(t), code, float(s) * 1000) for t, code, s in reqs)
ups = dict((int(s), int(n)) for s, n in (l.split() for l in open(sys.argv[2]) if l.strip()))
start = int(sys.argv[4])
changes = []
for line in open(sys.argv[3]):
    e = json.loads(line)
    if e.get("msg") == "breaker state changed":
        ms = datetime.fromisoformat(e["time"].replace("Z", "+00:00")).timestamp() * 1000 - start
        changes.append((ms, e["from"], e["to"]))

print(f"{'second':>6} {'200':>5} {'503':>5} {'other':>5} {'upstream':>8}  breaker")
prev = 0
for sec in range(max(t for t, _, _ in reqs) // 1000 + 1):
    row = [c for t, c, _ in reqs if t // 1000 == sec]
    up = ups.get(sec, prev) - prev if sec in ups else 0
    prev = ups.get(sec, prev)
    states = " ".join(f"{to}" for ms, _, to in changes if int(ms // 1000) == sec)
    print(f"{sec:>6} {row.count('200'):>5} {row.count('503'):>5} {len(row) - row.count('200') - row.count('503'):>5} {up:>8}  {states}")

# When could the mock accept again? It takes 5 writes per sliding 10 s: at
# an opening, the oldest of the writes accepted in the last 10 s has to
# slide out. The accepted writes are the 200s, by the time they were sent.
ok_times = [t for t, c, _ in reqs if c == "200"]
print()
for i, (ms, frm, to) in enumerate(changes):
    if to != "open" or frm != "closed":
        continue
    window = [t for t in ok_times if ms - 10000 < t <= ms]
    recover = (min(window) + 10000) if window else ms
    closed = next((c for c, f, t in changes[i:] if t == "closed"), None)
    if closed is None:
        print(f"opened at {ms / 1000:.1f}s; the mock could accept from {recover / 1000:.1f}s; still not closed at the end")
    else:
        print(f"opened at {ms / 1000:.1f}s; the mock could accept from {recover / 1000:.1f}s; closed at {closed / 1000:.1f}s: {(closed - recover) / 1000:.1f}s after recovery")
rejected = sorted(s for _, c, s in reqs if c == "503")
if rejected:
    p99 = rejected[min(len(rejected) - 1, int(0.99 * len(rejected)))]
    print(f"\n{len(rejected)} rejected requests: median {statistics.median(rejected):.1f} ms, p99 {p99:.1f} ms")
print(f"{len(ok_times)} accepted, {len(reqs)} sent")
PY
