#!/usr/bin/env python3
"""A hostile Event API, for bench/hostile.sh: it answers eventgate with the
attacks of the README's Reliability section, in a process of its own so that
the gateway's memory is measured alone.

    python3 bench/hostile_upstream.py PORT MODE

GET /__stats answers what it received: requests by kind and connections
accepted. MODE is one of:
  dup-ids       user 1 lists the event "e" 1,000,000 times; "e" is 8 MB (under 8 MiB)
  large-events  user 1 lists 500 events of 1 MB each
  near-cap      user 1 lists 500 events of 200 KiB each (under the event cap)
  under-cap     user 1 lists 150 events of 200 KiB each (30 MiB: under the answer cap)
  large-headers user 1 lists 100 events, each answered with 9 MB of headers
  many-ids      user 1 lists 500,000 distinct events
  padded        users u0..u3 list 1,000 events each, each padded with 248 KB of spaces
  foreign       user 1 lists 4,000 events of 60 KB, each of user 2
  many-keys     user 1 lists 1,000 events of 230 KB with 22,000 keys each
  stall         user 1 lists 2,500 events that declare 200 KB and stall one byte short
  big-answers   users u0..u19 list 150 events of 200 KiB each (30 MiB answers)
  missing       user 1 lists 10,000 events, each answered 404
  slow-events   user 1 lists 2,500 events; each lookup takes 500 ms
  drop-users    GET /getUsers drops the connection; GET /getEvents waits 200 ms, answers []
  big-list      GET /getEvents answers a list of 8,000,000 bytes
  writes        POST /addEvent stores events (an id once) and confirms; POST /__fail
                toggles answering every write 500; GET /__event/ID shows what is stored
"""
import http.server
import json
import sys
import threading
import time

MB = 1 << 20


def user_events(mode, user):
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
    if mode == "padded":
        return [f"{user}-e{i}" for i in range(1000)]
    if mode == "foreign":
        return [f"e{i}" for i in range(4000)]
    if mode == "many-keys":
        return [f"e{i}" for i in range(1000)]
    if mode in ("stall", "slow-events"):
        return [f"e{i}" for i in range(2500)]
    if mode == "big-answers":
        return [f"{user}-e{i}" for i in range(150)]
    if mode == "missing":
        return [f"gone{i}" for i in range(10_000)]
    return ["e0"]


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def setup(self):
        super().setup()
        with self.server.lock:
            self.server.connections += 1

    def count(self, kind):
        with self.server.lock:
            self.server.requests[kind] = self.server.requests.get(kind, 0) + 1

    def send(self, body, headers=(), status=200):
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for k, v in headers:
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the gateway gave up reading, as it should

    def event(self, eid):
        mode = self.server.mode
        owner = eid.split("-")[0] if "-" in eid else "1"
        if mode == "padded":
            pad = b" " * 124_000
            return pad + json.dumps({"id": eid, "userId": owner}).encode() + pad
        if mode == "foreign":
            return json.dumps({"id": eid, "userId": "2", "details": "x" * 60_000}).encode()
        if mode == "many-keys":
            members = {"id": eid, "userId": "1"}
            members.update({f"k{i}": 1 for i in range(22_000)})
            return json.dumps(members).encode()
        size = {"dup-ids": 8_000_000, "large-events": MB, "near-cap": 200 << 10, "under-cap": 200 << 10,
                "big-answers": 200 << 10}.get(mode, 100)
        if size not in self.server.details:
            self.server.details[size] = b"x" * size
        return b'{"id": "%s", "userId": "%s", "details": "%s"}' % (eid.encode(), owner.encode(), self.server.details[size])

    def do_GET(self):
        mode, path = self.server.mode, self.path
        if path == "/__stats":
            with self.server.lock:
                stats = {"connections": self.server.connections, "requests": dict(self.server.requests)}
            return self.send(json.dumps(stats).encode())
        if path.startswith("/__event/"):
            ev = self.server.stored.get(path.rsplit("/", 1)[1])
            return self.send(json.dumps(ev).encode(), status=200 if ev else 404)
        if path.startswith("/getUserById/"):
            self.count("user")
            user = path.rsplit("/", 1)[1]
            return self.send(json.dumps({"id": user, "events": user_events(mode, user)}).encode())
        if path.startswith("/getEventById/"):
            self.count("event")
            eid = path.rsplit("/", 1)[1]
            if mode == "missing":
                return self.send(b"{}", status=404)
            if mode == "slow-events":
                time.sleep(0.5)
            if mode == "stall":
                return self.stall(200_000)
            headers = [("X-Junk", "j" * (9 * MB))] if mode == "large-headers" else []
            return self.send(self.event(eid), headers)
        if path == "/getUsers":
            self.count("users")
            if mode == "drop-users":
                self.close_connection = True
                self.connection.close()
                return
            return self.send(b"[]")
        if path == "/getEvents":
            self.count("events")
            if mode == "drop-users":
                time.sleep(0.2)
            if mode == "big-list":
                return self.send(b"[" + b'"x",' * 1_999_998 + b'"x"]')
            return self.send(b"[]")
        self.send(b"[]")

    def stall(self, size):
        try:
            self.send_response(200)
            self.send_header("Content-Length", str(size))
            self.end_headers()
            self.wfile.write(b" " * (size - 1))
            self.wfile.flush()
            time.sleep(30)
        except (BrokenPipeError, ConnectionResetError):
            pass
        self.close_connection = True

    def do_POST(self):
        if self.path == "/__fail":
            self.server.failing = not self.server.failing
            return self.send(b"{}")
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.count("write")
        if self.server.failing:
            return self.send(b"{}", status=500)
        ev = json.loads(body)
        self.server.stored.setdefault(ev["id"], ev)
        self.send(json.dumps({"success": True, "id": ev["id"]}).encode())


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 4096

    def handle_error(self, request, client_address):
        pass  # resets by the gateway are the expected end of most attacks


def main():
    port, mode = int(sys.argv[1]), sys.argv[2]
    server = Server(("127.0.0.1", port), Handler)
    server.mode = mode
    server.lock = threading.Lock()
    server.connections, server.requests, server.stored, server.failing = 0, {}, {}, False
    server.details = {}  # size → the bytes of a details string, made once
    server.serve_forever()


if __name__ == "__main__":
    main()
