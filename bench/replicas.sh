#!/usr/bin/env bash
# Several instances, for real: the mock Event API in its own process, three
# eventgate instances sharing IDEMPOTENCY_SECRET, HAProxy in front (round
# robin, health-checked on /ready). Keyed writes are sent so that every key
# reaches every instance; one instance is restarted in the middle; every key
# is sent again; then one instance gets SIGTERM during a burst of writes.
# Prints what was sent and answered, and what the upstream stored per key.
#
#   bench/replicas.sh           # needs haproxy (apt-get install -y haproxy)
#   KEYS=100 bench/replicas.sh  # keys per phase (default 60)
#   REV=87bc9ac bench/replicas.sh   # an earlier commit, for "before"
source "$(dirname "$0")/lib.sh"
KEYS=${KEYS:-60}
command -v haproxy > /dev/null || { echo "needs haproxy: apt-get install -y haproxy"; exit 1; }
build_rev
SECRET=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
UPSTREAM=http://127.0.0.1:3290
LB=http://127.0.0.1:3280
declare -A INSTANCE

start_upstream() {
  PORT=3290 MOCK_ADD_CAPACITY=0 MOCK_FAIL_RATE=0 MOCK_EVENT_DELAY=1ms "$WORK/eventgate" -env-file= -mock > "$WORK/upstream.log" 2>&1 &
  ALL_PIDS+=($!)
}

# start_instance N: eventgate N (1-3) on port 329N.
start_instance() {
  PORT=329$1 UPSTREAM_URL=$UPSTREAM IDEMPOTENCY_SECRET=$SECRET SHUTDOWN_DRAIN=1s \
    "$WORK/eventgate" -env-file= >> "$WORK/instance$1.log" 2>&1 &
  INSTANCE[$1]=$!
  ALL_PIDS+=($!)
  for _ in $(seq 100); do curl -fs "http://127.0.0.1:329$1/ready" > /dev/null && return; sleep 0.05; done
  echo "instance $1 did not start"; cat "$WORK/instance$1.log"; exit 1
}

start_haproxy() {
  cat > "$WORK/haproxy.cfg" <<CFG
defaults
  mode http
  timeout connect 1s
  timeout client 15s
  timeout server 15s
  retries 3
  option redispatch
frontend gateway
  bind 127.0.0.1:3280
  default_backend eventgate
backend eventgate
  balance roundrobin
  option httpchk GET /ready
  default-server inter 100ms fall 1 rise 2
  server e1 127.0.0.1:3291 check
  server e2 127.0.0.1:3292 check
  server e3 127.0.0.1:3293 check
CFG
  haproxy -f "$WORK/haproxy.cfg" -db > "$WORK/haproxy.log" 2>&1 &
  ALL_PIDS+=($!)
  for _ in $(seq 100); do curl -fs "$LB/ready" > /dev/null && return; sleep 0.05; done
  echo "haproxy did not start"; cat "$WORK/haproxy.log"; exit 1
}

# send KEY: one keyed write of the event named KEY through HAProxy; appends
# "KEY STATUS ID" to $WORK/answers.
send() {
  local out code
  out=$(curl -s -m 20 -w '\n%{http_code}' "$LB/addEvent" -H 'Content-Type: application/json' \
    -H "Idempotency-Key: \"$1\"" -d "{\"name\": \"$1\", \"userId\": \"3\"}")
  code=${out##*$'\n'}
  id=$(sed -n 's/.*"id":"\([^"]*\)".*/\1/p' <<< "${out%$'\n'*}")
  echo "$1 $code ${id:--}" >> "$WORK/answers"
}
export -f send
export LB WORK

# phase KEYS_FROM KEYS_TO TIMES: send each key of the range TIMES times, in
# order, so that round robin takes each key to each instance.
phase() {
  for k in $(seq "$1" "$2"); do for _ in $(seq "$3"); do send "key-$k"; done; done
}

start_upstream
for n in 1 2 3; do start_instance $n; done
start_haproxy
: > "$WORK/answers"

phase 1 "$KEYS" 3
echo "phase 1: $KEYS keys, each sent 3 times (round robin: once to each instance)"
kill -TERM "${INSTANCE[2]}"; wait "${INSTANCE[2]}" 2> /dev/null || true
start_instance 2
echo "instance 2 restarted"
phase 1 "$KEYS" 3
echo "phase 2: every key sent 3 times again"
# The burst: new keys, 3 times each, 24 at once; SIGTERM to instance 3 in it.
seq $((KEYS + 1)) $((3 * KEYS)) | sed 's/^/key-/' | awk '{ print; print; print }' | xargs -P 24 -I{} bash -c 'send {}' &
burst=$!
sleep 0.3
kill -TERM "${INSTANCE[3]}"
wait "$burst"
echo "phase 3: keys $((KEYS + 1))-$((3 * KEYS)), 3 times each, 24 at once; SIGTERM to instance 3 during it (exit: $(wait "${INSTANCE[3]}" 2> /dev/null; echo $?))"
echo

curl -fs "$UPSTREAM/getEvents" > "$WORK/stored.json"
python3 - "$WORK/answers" "$WORK/stored.json" <<'PY'
import collections, json, sys
answers = [line.split() for line in open(sys.argv[1])]
stored = json.load(open(sys.argv[2]))
per_key = collections.Counter(e["name"] for e in stored if e["name"].startswith("key-"))
stored_ids = {e["id"] for e in stored}
ids = collections.defaultdict(set)
acked = set()
for key, code, eid in answers:
    if code == "200":
        ids[key].add(eid)
        acked.add((key, eid))
keys = {a[0] for a in answers}
codes = collections.Counter(a[1] for a in answers)
print(f"writes sent:                                  {len(answers)}")
print(f"answered 200:                                 {codes['200']}   (others: {dict((c, n) for c, n in codes.items() if c != '200') or 'none'})")
print(f"keys:                                         {len(keys)}")
print(f"keys stored upstream exactly once:            {sum(1 for k in keys if per_key[k] == 1)}")
print(f"keys stored more than once (must be 0):       {sum(1 for k in keys if per_key[k] > 1)}")
print(f"keys answered 200 but stored 0 times (must be 0): {sum(1 for k in ids if per_key[k] == 0)}")
print(f"keys whose answers carried >1 id (must be 0): {sum(1 for k in ids if len(ids[k]) > 1)}")
print(f"acknowledged writes missing upstream (must be 0): {sum(1 for k, e in acked if e not in stored_ids)}")
PY
