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
  curl -s -o "$WORK/body.$i" -w "$t %{http_code} %{time_total} $i\n" -H 'Content-Type: application/json' \
    -d "{\"name\": \"tick $i\", \"userId\": \"1\"}" "$BASE/addEvent" >> "$WORK/requests" &
  if (( i % 10 == 0 )); then echo "$(( t / 1000 )) $(upstream_calls)" >> "$WORK/upstream"; fi
  # Keep to the 100 ms beat, whatever the loop itself cost.
  next=$(( start_ms + i * 100 )); now=$(date +%s%3N)
  (( next > now )) && sleep "$(awk -v ms=$(( next - now )) 'BEGIN { print ms / 1000 }')"
done
wait $(jobs -p | grep -v "^$SERVER_PID\$") 2> /dev/null || true
stop_server

python3 - "$WORK" "$start_ms" <<'PY'
import json, os, statistics, sys
from datetime import datetime
work, start = sys.argv[1], int(sys.argv[2])

# (sent at ms, status, latency ms, who answered): "upstream" for 200s and
# the mock's own 503s, "breaker" for the 503s the open breaker gave at once.
reqs = []
for line in open(f"{work}/requests"):
    t, code, secs, i = line.split()
    body = open(f"{work}/body.{i}").read()
    who = "breaker" if code == "503" and "unavailable" in body else "upstream"
    reqs.append((int(t), code, float(secs) * 1000, who))
reqs.sort()
ups = dict((int(a), int(b)) for a, b in (l.split() for l in open(f"{work}/upstream")))
changes = []
for line in open(f"{work}/server.log"):
    e = json.loads(line)
    if e.get("msg") == "breaker state changed":
        ms = datetime.fromisoformat(e["time"].replace("Z", "+00:00")).timestamp() * 1000 - start
        changes.append((ms, e["from"], e["to"]))

print(f"{'second':>6} {'200':>5} {'503':>5} {'other':>5} {'upstream':>8}  breaker")
prev = 0
for sec in range(reqs[-1][0] // 1000 + 1):
    codes = [c for t, c, _, _ in reqs if t // 1000 == sec]
    now = ups.get(sec, prev)
    states = " ".join(to for ms, _, to in changes if int(ms // 1000) == sec)
    print(f"{sec:>6} {codes.count('200'):>5} {codes.count('503'):>5} "
          f"{len(codes) - codes.count('200') - codes.count('503'):>5} {now - prev:>8}  {states}")
    prev = now

# When could the mock accept again? It takes 5 writes per sliding 10 s: at
# an opening, the oldest write accepted in the last 10 s has to slide out.
# Accepted writes are the 200s, at the time they were sent.
ok = [t for t, c, _, _ in reqs if c == "200"]
print()
for i, (ms, frm, to) in enumerate(changes):
    if (frm, to) != ("closed", "open"):
        continue
    window = [t for t in ok if ms - 10000 < t <= ms]
    recover = min(window) + 10000 if window else ms
    closed = next((c for c, _, to2 in changes[i:] if to2 == "closed"), None)
    tail = "still open at the end" if closed is None else \
        f"closed at {closed / 1000:.1f}s, {(closed - recover) / 1000:.1f}s after the mock recovered"
    print(f"opened at {ms / 1000:.1f}s; the mock could accept from {recover / 1000:.1f}s; {tail}")

def summary(label, ms):
    if ms:
        ms = sorted(ms)
        p99 = ms[min(len(ms) - 1, int(0.99 * len(ms)))]
        print(f"{len(ms):>4} {label}: median {statistics.median(ms):.1f} ms, p99 {p99:.1f} ms")
print()
summary("503s from the open breaker", [s for _, c, s, w in reqs if w == "breaker"])
summary("503s from the mock (over capacity, failed trials)", [s for _, c, s, w in reqs if c == "503" and w == "upstream"])
print(f"{len(ok)} accepted of {len(reqs)} sent")
PY
