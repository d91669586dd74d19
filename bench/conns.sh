#!/usr/bin/env bash
# Client connections: opens N keep-alive connections to eventgate (each
# sends one GET /health, then stays open and idle), and prints the
# gateway's RSS and goroutines, the connections it holds and refused, and
# how long a new client waits for GET /health meanwhile.
#
#   bench/conns.sh                  # N="1000 5000 12000", MAX_CONNECTIONS default
#   REV=87bc9ac bench/conns.sh      # an earlier commit
source "$(dirname "$0")/lib.sh"
NS=${NS:-"1000 5000 12000"}
build_rev
printf '%8s %8s %11s %8s %8s %9s %14s\n' opened RSS_MB goroutines held refused idle_cut new_client_ms
for n in $NS; do
  start_server 3192 "$@"
  python3 - "$n" 3192 <<'PY' &
import socket, sys, time
n, port = int(sys.argv[1]), int(sys.argv[2])
socks = []
for _ in range(n):
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        s.recv(4096)
        socks.append(s)
    except OSError:
        pass
open("/dev/stdout", "w").close()
time.sleep(30)
PY
  holder=$!
  ALL_PIDS+=("$holder")
  # Wait until the holder has opened its connections (the gauge settles).
  last=-1
  for _ in $(seq 200); do
    now=$(metric eventgate_client_connections 2> /dev/null || echo "$last")
    [ "$now" = "$last" ] && [ "$now" != 0 ] && break
    last=$now; sleep 0.5
  done
  goroutines=$(curl -fs "$BASE/health" | python3 -c 'import json, sys; print(json.load(sys.stdin)["goroutines"])')
  ms=$(latency_ms /health)
  printf '%8s %8s %11s %8s %8s %9s %14s\n' "$n" "$(rss_mb)" "$goroutines" "$(metric eventgate_client_connections)" \
    "$(metric eventgate_client_connections_refused_total)" "$(metric eventgate_client_connections_idle_closed_total)" "$ms"
  kill "$holder" 2> /dev/null; wait "$holder" 2> /dev/null || true
  stop_server
done
