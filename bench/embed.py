#!/usr/bin/env python3
"""The embeddings example on this CPU: model load, latency and throughput per batch size, and what
dynamic batching gains for concurrent one-text requests.

1. Model load: spawn target/release/gpufn-embed → first 200 from /health (what a cold start's
   ready_ms is), 5 times.
2. Batch 1 / 8 / 32 texts per request, one client, sequential: p50/p99 latency and texts/s.
3. Dynamic batching: 8 concurrent clients sending one text each, against the app with
   MAX_BATCH=1 (every request its own forward pass: what instance_concurrency 1 gets) and
   MAX_BATCH=32 (requests share forward passes), same run.
4. Through gpufn: the same 8 clients via /function/..., the example deployed with
   instance_concurrency 1 and then 8 (max_instances 1, so batching is the only difference).

Usage: bench/embed.py [SECONDS_PER_POINT=5]   (from the repository root, after
`examples/embed/fetch-model.sh && cargo build --release -p gpufn-cli -p gpufn-example-embed`)."""

import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import benchauth

AUTH = {}  # the token header, once gpufn is started

PROFILE = os.environ.get("GPUFN_BENCH_PROFILE", "release")  # "debug" for the CI smoke
SECS = float(sys.argv[1]) if len(sys.argv) > 1 else 5.0
APP = os.path.abspath(f"target/{PROFILE}/gpufn-embed")
GPUFN = os.path.abspath(f"target/{PROFILE}/gpufn")
MODEL = os.path.abspath("examples/embed/model")
WORDS = ("gpu serverless function instance cold start batch model image request scale zero card "
         "memory latency throughput queue token embedding vector sentence").split()


def text(i):
    return " ".join(WORDS[(i * 7 + k) % len(WORDS)] for k in range(12))


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def start_app(env_extra):
    port = free_port()
    env = dict(os.environ, PORT=str(port), MODEL_DIR=MODEL, **env_extra)
    t0 = time.perf_counter()
    proc = subprocess.Popen([APP], env=env, stderr=subprocess.DEVNULL)
    while True:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            c.request("GET", "/health")
            if c.getresponse().status == 200:
                break
        except OSError:
            time.sleep(0.002)
    return proc, port, (time.perf_counter() - t0) * 1000


def post(conn, path, n, start):
    body = json.dumps({"texts": [text(start + i) for i in range(n)]})
    t0 = time.perf_counter()
    conn.request("POST", path, body, {"content-type": "application/json", **AUTH})
    r = conn.getresponse()
    r.read()
    assert r.status == 200, r.status
    return (time.perf_counter() - t0) * 1000


def run_clients(port, path, clients, n_texts):
    lat, stop, lock = [], time.time() + SECS, threading.Lock()

    def worker(k):
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        i = k * 100000
        while time.time() < stop:
            ms = post(c, path, n_texts, i)
            i += n_texts
            with lock:
                lat.append(ms)
    t0 = time.perf_counter()
    ts = [threading.Thread(target=worker, args=(k,)) for k in range(clients)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    wall = time.perf_counter() - t0
    return lat, len(lat) * n_texts / wall


def q(v, p):
    v = sorted(v)
    return v[min(len(v) - 1, int(p * len(v)))]


print(f"{os.cpu_count()} cores; {SECS:.0f} s per point")
loads = []
for _ in range(5):
    proc, port, ms = start_app({})
    loads.append(ms)
    proc.terminate()
    proc.wait()
print(f"model load (spawn -> /health 200): p50 {q(loads, .5):.0f} ms, min {min(loads):.0f}, max {max(loads):.0f}")

proc, port, _ = start_app({"MAX_BATCH": "32"})
print("one client, sequential requests:")
for n in (1, 8, 32):
    lat, tps = run_clients(port, "/embed", 1, n)
    print(f"  batch {n:2d}: p50 {q(lat, .5):7.2f} ms  p99 {q(lat, .99):7.2f} ms  {tps:7.1f} texts/s")
proc.terminate()
proc.wait()

print("8 concurrent clients, 1 text each, straight to the app:")
res = {}
for mb in (1, 32):
    proc, port, _ = start_app({"MAX_BATCH": str(mb), "MAX_WAIT_MS": "5"})
    lat, tps = run_clients(port, "/embed", 8, 1)
    c = http.client.HTTPConnection("127.0.0.1", port)
    c.request("GET", "/stats")
    st = json.loads(c.getresponse().read())
    res[mb] = tps
    print(f"  MAX_BATCH {mb:2d}: {tps:7.1f} texts/s  p50 {q(lat, .5):7.2f} ms  p99 {q(lat, .99):7.2f} ms"
          f"  ({st['texts'] / max(st['batches'], 1):.1f} texts per forward pass)")
    proc.terminate()
    proc.wait()
print(f"  dynamic batching gain: {res[32] / res[1]:.2f}x")

print("8 concurrent clients through gpufn (max_instances 1):")
work = tempfile.mkdtemp(prefix="gpufn-embed-bench.")
gport = free_port()
server = subprocess.Popen([GPUFN, "serve", "--listen", f"127.0.0.1:{gport}", "--data-dir",
                           f"{work}/data", "--simulate-gpus", "1xtesla-t4:16"],
                          stderr=subprocess.DEVNULL)
try:
    while True:
        try:
            c = http.client.HTTPConnection("127.0.0.1", gport)
            c.request("GET", "/healthz")
            if c.getresponse().status == 200:
                break
        except OSError:
            time.sleep(0.01)
    # gpufn asks for a token (the app alone ignores the header).
    AUTH.update(benchauth.headers(f"{work}/data"))
    with open("examples/embed/gpufn.yaml") as f:
        base = f.read().replace("workdir: .", f"workdir: {os.path.abspath('examples/embed')}")
    out = {}
    for conc in (1, 8):
        spec = (base.replace("instance_concurrency: 8", f"instance_concurrency: {conc}")
                .replace("max_instances: 4", "max_instances: 1")
                .replace("max_queue: 200", "max_queue: 1000"))
        c = http.client.HTTPConnection("127.0.0.1", gport)
        c.request("POST", "/api/v1/functions", spec, {"content-type": "application/yaml", **AUTH})
        r = c.getresponse()
        r.read()
        assert r.status in (200, 201), r.status
        post(http.client.HTTPConnection("127.0.0.1", gport, timeout=60), "/function/embed/embed", 1, 0)
        lat, tps = run_clients(gport, "/function/embed/embed", 8, 1)
        out[conc] = tps
        print(f"  instance_concurrency {conc}: {tps:7.1f} texts/s  p50 {q(lat, .5):7.2f} ms  p99 {q(lat, .99):7.2f} ms")
    print(f"  concurrency 8 (batched) / concurrency 1: {out[8] / out[1]:.2f}x")
finally:
    server.terminate()
    server.wait(timeout=60)
