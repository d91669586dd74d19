#!/usr/bin/env python3
"""A hostile Event API, for bench/hostile.sh: it answers eventgate with the
attacks of the README's Reliability section, in a process of its own so that
the gateway's memory is measured alone.

    python3 bench/hostile_upstream.py PORT MODE

MODE is one of:
  dup-ids       user 1 lists the event "e" 1,000,000 times; "e" is 8 MB (under 8 MiB)
  large-events  user 1 lists 500 events of 1 MB each
  near-cap      user 1 lists 500 events of 200 KiB each (under the event cap)
  under-cap     user 1 lists 150 events of 200 KiB each (30 MiB: under the answer cap)
  large-headers user 1 lists 100 events, each answered with 9 MB of headers
  many-ids      user 1 lists 500,000 distinct events
"""
import http.server
import json
import sys

MB = 1 << 20


def user_events(mode):
    if mode == "dup-ids":
        return ["e"] * 1_000_000
    if mode in ("large-events", "near-cap"):
        return [f"e{i}" for i in range(500)]
    if mode == "under-cap":
        return [f"e{i}" for i in range(150)]
    if mode == "large-headers":
        return [f"e{i}" for i in range(100)]
    if mode == "many-ids":
        return [f"e{i}" for i in range(500_000)]
    raise SystemExit(f"unknown mode {mode}")


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def send(self, body, headers=()):
        try:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for k, v in headers:
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the gateway gave up reading, as it should

    def do_GET(self):
        mode = self.server.mode
        if self.path.startswith("/getUserById/"):
            self.send(self.server.user)
        elif self.path.startswith("/getEventById/"):
            eid = self.path.rsplit("/", 1)[1]
            size = {"dup-ids": 8_000_000, "large-events": MB, "near-cap": 200 << 10, "under-cap": 200 << 10}.get(mode, 100)
            body = json.dumps({"id": eid, "userId": "1", "details": "x" * size}).encode()
            headers = [("X-Junk", "j" * (9 * MB))] if mode == "large-headers" else []
            self.send(body, headers)
        else:
            self.send(b"[]")


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass  # resets by the gateway are the expected end of most attacks


def main():
    port, mode = int(sys.argv[1]), sys.argv[2]
    server = Server(("127.0.0.1", port), Handler)
    server.mode = mode
    server.user = json.dumps({"id": "1", "events": user_events(mode)}).encode()
    server.serve_forever()


if __name__ == "__main__":
    main()
