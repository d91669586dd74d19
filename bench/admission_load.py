#!/usr/bin/env python3
"""Writes offered at a steady rate, for bench/admission.sh.

    python3 bench/admission_load.py URL PHASES OUT
        PHASES is SECONDS:RATE[,SECONDS:RATE...], e.g. 60:2,40:3: each phase
        offers RATE POST /addEvent per second for SECONDS, each its own
        request (no retries: a refused write is a client told no). Before
        each phase after the first it prints "phase N" on standard output
        and flushes, so that the caller can read the upstream's counters
        there. One JSON line per write goes to OUT: the phase it arrived in,
        status, Retry-After, latency in seconds, and the id acknowledged.
"""
import http.client
import json
import sys
import threading
import time
import urllib.parse


def write(url, phase, n, results, lock):
    u = urllib.parse.urlsplit(url)
    began = time.monotonic()
    record = {"phase": phase, "status": 0, "retry_after": None, "seconds": 0, "id": None}
    try:
        c = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
        body = json.dumps({"name": f"paced {phase}-{n}", "userId": "1"})
        c.request("POST", "/addEvent", body, {"Content-Type": "application/json"})
        r = c.getresponse()
        data = r.read()
        record["status"] = r.status
        record["retry_after"] = r.getheader("Retry-After")
        if r.status == 200:
            record["id"] = json.loads(data).get("id")
        c.close()
    except Exception as e:  # a socket error is a write not acknowledged
        record["error"] = str(e)
    record["seconds"] = time.monotonic() - began
    with lock:
        results.append(record)


def main():
    url, phases, out = sys.argv[1], sys.argv[2], sys.argv[3]
    results, lock, threads = [], threading.Lock(), []
    start = time.monotonic()
    offset = 0.0
    for i, spec in enumerate(phases.split(",")):
        seconds, rate = (float(x) for x in spec.split(":"))
        if i > 0:
            print(f"phase {i + 1}", flush=True)
        n = 0
        while n / rate < seconds:
            due = start + offset + n / rate
            time.sleep(max(0, due - time.monotonic()))
            t = threading.Thread(target=write, args=(url, i + 1, n, results, lock))
            t.start()
            threads.append(t)
            n += 1
        offset += seconds
        time.sleep(max(0, start + offset - time.monotonic()))
    for t in threads:
        t.join()
    with open(out, "w") as f:
        for r in results:
            f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
