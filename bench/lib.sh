# Shared by the bench scripts: build eventgate, start it, stop it, and
# small statistics. Source it; it needs curl, and wrk for load runs
# (apt-get install -y wrk).

set -euo pipefail
BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$BENCH_DIR")
WORK=$(mktemp -d)
SERVER_PID=""  # the server the helpers below talk to
ALL_PIDS=()    # every server started, stopped on exit whatever happens
trap 'kill "${ALL_PIDS[@]}" 2> /dev/null || true; wait 2> /dev/null || true; rm -rf "$WORK"' EXIT

build() { (cd "$ROOT" && go build -o "$WORK/eventgate" .); }

# build_rev: build the commit REV names (for "before" figures), or, with REV
# unset, this tree.
build_rev() {
  if [ -z "${REV:-}" ]; then build; return; fi
  mkdir -p "$WORK/src" && git -C "$ROOT" archive "$REV" | tar -x -C "$WORK/src"
  (cd "$WORK/src" && go build -o "$WORK/eventgate" .)
}

# start_server PORT [VAR=value ...]: start eventgate with the embedded mock
# and wait until /health answers. Its log goes to $WORK/server.log.
start_server() {
  local port=$1; shift
  env PORT="$port" SHUTDOWN_DRAIN=0s "$@" "$WORK/eventgate" -env-file= > "$WORK/server.log" 2>&1 &
  SERVER_PID=$!
  ALL_PIDS+=("$SERVER_PID")
  BASE="http://127.0.0.1:$port"
  for _ in $(seq 100); do
    curl -fs "$BASE/health" > /dev/null 2>&1 && return 0
    sleep 0.05
  done
  echo "eventgate did not start:"; cat "$WORK/server.log"; exit 1
}

stop_server() {
  if [ -n "$SERVER_PID" ]; then
    kill "$SERVER_PID" 2> /dev/null || true
    wait "$SERVER_PID" 2> /dev/null || true
    SERVER_PID=""
  fi
}

# peak_rss_mb: the server's peak resident memory so far, in MB.
peak_rss_mb() { awk '/VmHWM/ { printf "%.0f", $2 / 1024 }' "/proc/$SERVER_PID/status"; }
rss_mb() { awk '/VmRSS/ { printf "%.0f", $2 / 1024 }' "/proc/$SERVER_PID/status"; }

# metric NAME: a sample's value from /metrics (NAME may include labels).
metric() { curl -fs "$BASE/metrics" | awk -v n="$1" 'index($0, n" ") == 1 { print $2 }'; }

# median: the median of the numbers on standard input, one a line.
median() { sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

# add_events USER N: add N events to USER through POST /addEvent, 50 at once.
add_events() {
  local user=$1 n=$2 cfg="$WORK/add.curl"
  [ "$n" -gt 0 ] || return 0
  : > "$cfg"
  for i in $(seq "$n"); do
    # "next" separates the entries: without it, curl sends every data line in every request.
    (( i > 1 )) && echo next >> "$cfg"
    printf 'url = "%s/addEvent"\nheader = "Content-Type: application/json"\ndata = "{\\"name\\": \\"bench %s\\", \\"userId\\": \\"%s\\"}"\noutput = /dev/null\n' "$BASE" "$i" "$user" >> "$cfg"
  done
  curl --no-progress-meter --parallel --parallel-max 50 -K "$cfg" 2> /dev/null
}

# latency_ms PATH: one request's total time in milliseconds.
latency_ms() { curl -fs -o /dev/null -w '%{time_total}\n' "$BASE$1" | awk '{ printf "%.1f\n", $1 * 1000 }'; }
