#!/usr/bin/env bash
# eventgate (default settings unless an attack names one) against a hostile
# Event API in a process of its own (bench/hostile_upstream.py) and hostile
# clients (bench/hostile_clients.py). For each attack it prints what the
# clients got, the gateway's peak RSS, what reached the upstream (requests
# by kind, connections accepted), whether the gateway was still alive, and
# the attack's own figure.
#
#   bench/hostile.sh                      # this tree, every attack
#   REV=9133e12 bench/hostile.sh          # an earlier commit: the "before" figures
#   ATTACKS="stall big-answers" bench/hostile.sh
source "$(dirname "$0")/lib.sh"
REQUESTS=${REQUESTS:-3}
ROUNDS=${ROUNDS:-3}
ATTACKS=${ATTACKS:-"dup-ids large-events near-cap under-cap large-headers many-ids padded foreign many-keys stall big-answers lone-answer slow-lookups missing abandon drop-users big-list lockout lockout-body writes"}
UP=3190
build_rev

start_upstream() {
  python3 "$BENCH_DIR/hostile_upstream.py" "$UP" "$1" &
  UPSTREAM_PID=$!
  ALL_PIDS+=("$UPSTREAM_PID")
  for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$UP/__stats" && return; sleep 0.05; done
}

# The peak is read from /proc as it goes: a process that dies takes its
# VmHWM with it.
watch_rss() {
  ( while kill -0 "$SERVER_PID" 2> /dev/null; do
      awk '/VmHWM/ { printf "%.0f\n", $2 / 1024 }' "/proc/$SERVER_PID/status" 2> /dev/null
      sleep 0.1
    done > "$WORK/hwm" ) &
  WATCHER=$!
}

# cpu_seconds: the gateway's user and system CPU time so far.
cpu_seconds() { awk -v hz="$(getconf CLK_TCK)" '{ printf "%.2f", ($14 + $15) / hz }' "/proc/$SERVER_PID/stat"; }

upstream_stats() {
  [ -n "${MOCK_UPSTREAM:-}" ] && { echo "(the mock: not counted)"; return; }
  curl -s "http://127.0.0.1:$UP/__stats" | python3 -c '
import json, sys
s = json.load(sys.stdin)
c = s["connections"]
print(" ".join(f"{k}={v}" for k, v in sorted(s["requests"].items())) + f" conns={c}")'
}

# start_slow_mock: the mock in its own process, each event lookup 1.5 s,
# users 1 and 2 with 2,500 more events each (user 3 keeps its one).
start_slow_mock() {
  MOCK_UPSTREAM=yes
  env PORT=$UP MOCK_EVENT_DELAY=1500ms MOCK_FAIL_RATE=0 MOCK_ADD_CAPACITY=0 "$WORK/eventgate" -mock -env-file= > "$WORK/mock.log" 2>&1 &
  UPSTREAM_PID=$!
  ALL_PIDS+=("$UPSTREAM_PID")
  for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$UP/getUsers" && break; sleep 0.05; done
  local cfg="$WORK/add.curl"; : > "$cfg"
  for user in 1 2; do
    for i in $(seq 2500); do
      printf 'url = "http://127.0.0.1:%s/addEvent"\nheader = "Content-Type: application/json"\ndata = "{\\"id\\": \\"u%s-%s\\", \\"name\\": \\"n\\", \\"userId\\": \\"%s\\"}"\noutput = /dev/null\nnext\n' "$UP" "$user" "$i" "$user" >> "$cfg"
    done
  done
  curl --no-progress-meter --parallel --parallel-max 50 -K "$cfg" 2> /dev/null || true
}

# get_all PATH...: one request for each PATH, all at once; prints the statuses.
get_all() {
  for p in "$@"; do
    curl -s -o /dev/null -m 60 -w '%{http_code}\n' "$BASE$p" > "$WORK/code.$RANDOM$RANDOM" &
  done
  wait $(jobs -p | grep -v -e "^$UPSTREAM_PID\$" -e "^$WATCHER\$" -e "^$SERVER_PID\$") 2> /dev/null || true
  cat "$WORK"/code.* | sort | uniq -c | awk '{ printf "%s×%s ", $1, $2 }'; rm -f "$WORK"/code.*
}

# users PREFIX N: the paths of users PREFIX0 … PREFIX(N-1).
users() { for i in $(seq 0 $(($2 - 1))); do printf '/getEventsByUserId/%s%s ' "$1" "$i"; done; }

# rounds PATH: ROUNDS rounds of REQUESTS concurrent requests for PATH.
rounds() {
  local out=""
  for _ in $(seq "$ROUNDS"); do out+=$(get_all $(for _ in $(seq "$REQUESTS"); do printf '%s ' "$1"; done)); done
  echo "$out" | tr ' ' '\n' | grep . | awk -F× '{ n[$2] += $1 } END { for (s in n) printf "%s×%s ", n[s], s }'
}

printf '%-13s %-30s %8s %-44s %6s  %s\n' attack clients peak_MB upstream_received alive figure
report() { # NAME STATUSES FIGURE
  local alive=yes
  kill -0 "$SERVER_PID" 2> /dev/null || alive=DIED
  sleep 0.2
  local peak; peak=$(sort -n "$WORK/hwm" | tail -1)
  printf '%-13s %-30s %8s %-44s %6s  %s\n' "$1" "$2" "${peak:-?}" "$(upstream_stats)" "$alive" "$3"
  [ "$alive" = yes ] || grep -m1 -E 'fatal error|panic' "$WORK/server.log" | sed 's/^/               /'
}

finish() {
  stop_server
  kill "$UPSTREAM_PID" "$WATCHER" 2> /dev/null || true
  wait "$UPSTREAM_PID" "$WATCHER" 2> /dev/null || true
}

attack() { # NAME: the upstream in mode NAME, unless the attack says otherwise
  local name=$1 mode=$1 env=() statuses="" figure="" start
  case $name in
    lone-answer) mode=big-answers ;;
    abandon) mode=slow-events ;;
    lockout | lockout-body) mode=drop-users; env=(MAX_CONNECTIONS=200) ;;
    # IDEMPOTENCY_KEYS (retired: a warning now) makes the key memory small
    # for the builds before it; the flood leaves no trace in the ones after.
    writes) env=(IDEMPOTENCY_KEYS=100 IDEMPOTENCY_BYTES=64KiB IDEMPOTENCY_SECRET=0123456789abcdef0123456789abcdef API_TOKEN=token-one) ;;
  esac
  MOCK_UPSTREAM=""
  if [ "$name" = slow-lookups ]; then start_slow_mock; else start_upstream "$mode"; fi
  start_server 3191 UPSTREAM_URL="http://127.0.0.1:$UP" "${env[@]}"
  watch_rss
  start=$(date +%s.%N)
  case $name in
    padded)
      statuses=$(get_all $(users u 4))
      sleep 3
      figure="RSS after: $(rss_mb) MB" ;;
    many-keys)
      local cpu0; cpu0=$(cpu_seconds)
      statuses=$(get_all /getEventsByUserId/1)
      figure="gateway CPU for one request: $(echo "$(cpu_seconds) - $cpu0" | bc) s" ;;
    big-answers)
      statuses=$(get_all $(users u 20)) ;;
    lone-answer)
      statuses=$(get_all /getEventsByUserId/u0) ;;
    slow-lookups)
      statuses=$(get_all /getEventsByUserId/1 /getEventsByUserId/2 /getEventsByUserId/3)
      figure="upstream timeouts counted: $(curl -s "$BASE/metrics" | awk '/outcome="timeout"/ && /_count/ { n += $2 } END { print n + 0 }')" ;;
    missing)
      statuses=$(python3 "$BENCH_DIR/hostile_clients.py" loop 3191 /getEventsByUserId/1 3 12)
      figure="log: $(wc -c < "$WORK/server.log") bytes" ;;
    abandon)
      python3 "$BENCH_DIR/hostile_clients.py" hang 3191 /getEventsByUserId/1 10 0.2
      sleep 3
      local t; t=$(curl -s -o /dev/null -w '%{http_code} in %{time_total}s' "$BASE/getEventsByUserId/1")
      statuses="10 hung up at 200 ms"
      figure="the next request: $t" ;;
    drop-users)
      curl -s --no-progress-meter --parallel --parallel-max 200 $(for _ in $(seq 200); do printf "%s/getEvents -o /dev/null " "$BASE"; done)
      local before; before=$(upstream_stats)
      statuses=$(get_all /getUsers)
      figure="pool warmed with 200 connections ($before)" ;;
    big-list)
      python3 "$BENCH_DIR/hostile_clients.py" noread 3191 /getEvents 100 15
      statuses="100 never read"
      figure="then: $(get_all /getEvents)" ;;
    lockout)
      statuses=$(python3 "$BENCH_DIR/hostile_clients.py" lockout 3191 220 20)
      figure="MAX_CONNECTIONS=200, 220 held unfinished" ;;
    lockout-body)
      statuses=$(python3 "$BENCH_DIR/hostile_clients.py" lockout 3191 220 20 body)
      figure="MAX_CONNECTIONS=200, 220 writes whose body never comes" ;;
    writes)
      attack_writes > "$WORK/figure"
      figure=$(cat "$WORK/figure")
      statuses="see figure" ;;
    *)
      statuses=$(rounds /getEventsByUserId/1) ;;
  esac
  figure="$figure; $(printf '%.1f' "$(echo "$(date +%s.%N) - $start" | bc)") s"
  report "$name" "$statuses" "$figure"
  finish
}

# attack_writes: key K with body A is stored; the breaker is opened, and
# 200 keyed writes (all refused before the upstream) flood the key memory
# (IDEMPOTENCY_KEYS=100); then K with body B. Then a restart with another
# API_TOKEN (same IDEMPOTENCY_SECRET), and K with body A again.
attack_writes() {
  post() { # KEY BODY TOKEN: prints the status, and the id if there is one
    local out
    out=$(curl -s -H 'Content-Type: application/json' -H "Authorization: Bearer $3" ${1:+-H "Idempotency-Key: $1"} \
      -d "$2" -w '\n%{http_code}' "$BASE/addEvent")
    echo "$(echo "$out" | tail -1) $(echo "$out" | grep -o '"id":"[^"]*"' | cut -d'"' -f4 || true)"
  }
  local a='{"name": "A", "userId": "1"}' b='{"name": "B", "userId": "1"}'
  local first; first=$(post K "$a" token-one)
  curl -s -o /dev/null -X POST "http://127.0.0.1:$UP/__fail"
  for _ in 1 2 3; do post "" "$a" token-one > /dev/null; done
  curl -s -o /dev/null -X POST "http://127.0.0.1:$UP/__fail"
  local flood=""; for i in $(seq 200); do flood+=" $(post "flood-$i" "$a" token-one | cut -d' ' -f1)"; done
  sleep 6 # past BREAKER_BACKOFF_MIN: half-open
  local second; second=$(post K "$b" token-one)
  local stored; stored=$(curl -s "http://127.0.0.1:$UP/__event/${first#* }" | grep -o '"name": "[^"]*"' | cut -d'"' -f4 || true)
  stop_server
  start_server 3191 UPSTREAM_URL="http://127.0.0.1:$UP" IDEMPOTENCY_SECRET=0123456789abcdef0123456789abcdef API_TOKEN=token-two
  local rotated; rotated=$(post K "$a" token-two)
  echo "K+A → $first; flood: $(echo "$flood" | tr ' ' '\n' | grep . | sort | uniq -c | awk '{ printf "%s×%s ", $1, $2 }')→ K+B → $second (upstream holds ${stored:-?} under ${first#* }); new API_TOKEN, K+A → $rotated"
}

for a in $ATTACKS; do attack "$a"; done
