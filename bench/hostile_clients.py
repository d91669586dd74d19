#!/usr/bin/env python3
"""Hostile clients, for bench/hostile.sh: raw sockets, so that a client can
hang up, stop reading or never finish its headers.

    python3 bench/hostile_clients.py hang PORT PATH N SECONDS
        N clients ask for PATH at once and hang up after SECONDS.
    python3 bench/hostile_clients.py noread PORT PATH N SECONDS
        N clients ask for PATH at once and read nothing for SECONDS.
    python3 bench/hostile_clients.py lockout PORT HELD HONEST [body]
        one client holds HELD connections that never finish their headers
        (with "body": that send whole headers of a POST /addEvent declaring
        a body, and never the body), opening a new one as each is closed,
        while HONEST requests for /health are made one after another; prints
        how many were answered.
    python3 bench/hostile_clients.py loop PORT PATH CLIENTS SECONDS
        CLIENTS clients ask for PATH again and again for SECONDS; prints the
        statuses they got.
"""
import collections
import socket
import sys
import threading
import time


def request(path):
    return f"GET {path} HTTP/1.1\r\nHost: eventgate\r\n\r\n".encode()


def hang(port, path, n, seconds, read):
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port))
        if not read:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.sendall(request(path))
        socks.append(s)
    time.sleep(seconds)
    for s in socks:
        s.close()


def lockout(port, held, honest, body=False):
    stop = threading.Event()
    stalled = b"GET /health HTTP/1.1\r\nHo"
    if body:
        stalled = b"POST /addEvent HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 30\r\n\r\n"

    def hold():
        while not stop.is_set():
            try:
                s = socket.create_connection(("127.0.0.1", port), timeout=30)
                s.sendall(stalled)  # and never the rest
                s.recv(1)  # returns when the gateway closes it
                s.close()
            except OSError:
                time.sleep(0.01)

    threads = [threading.Thread(target=hold, daemon=True) for _ in range(held)]
    for t in threads:
        t.start()
    time.sleep(2)
    answered = 0
    for _ in range(honest):
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.sendall(request("/health"))
            if s.recv(12).startswith(b"HTTP/1.1 200"):
                answered += 1
            s.close()
        except OSError:
            pass
    stop.set()
    print(f"{answered} of {honest} honest requests answered")


def loop(port, path, clients, seconds):
    statuses = collections.Counter()
    lock = threading.Lock()
    end = time.time() + seconds

    def run():
        while time.time() < end:
            try:
                s = socket.create_connection(("127.0.0.1", port), timeout=30)
                s.sendall(f"GET {path} HTTP/1.1\r\nHost: eventgate\r\nConnection: close\r\n\r\n".encode())
                head = s.recv(12)
                while s.recv(65536):
                    pass
                s.close()
                status = head[9:12].decode() or "closed"
            except OSError:
                status = "error"
            with lock:
                statuses[status] += 1

    threads = [threading.Thread(target=run) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(" ".join(f"{n}×{s}" for s, n in sorted(statuses.items())))


def main():
    cmd, port = sys.argv[1], int(sys.argv[2])
    if cmd in ("hang", "noread"):
        hang(port, sys.argv[3], int(sys.argv[4]), float(sys.argv[5]), cmd == "hang")
    elif cmd == "lockout":
        lockout(port, int(sys.argv[3]), int(sys.argv[4]), sys.argv[5:] == ["body"])
    elif cmd == "loop":
        loop(port, sys.argv[3], int(sys.argv[4]), float(sys.argv[5]))
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main()
