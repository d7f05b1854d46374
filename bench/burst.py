#!/usr/bin/env python3
"""Burst from zero: N concurrent requests to a function with instance concurrency 1 on a 30-card
quota (the seed's default). Reports the time until all 30 instances serve, the queue wait p50/p99
(latency minus the 200 ms service time), and failures (the goal is zero).

Usage: bench/burst.py [N=300]   (run from the repository root after `cargo build --release`)."""

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import benchauth

PROFILE = os.environ.get("GPUFN_BENCH_PROFILE", "release")  # "debug" for the CI smoke
N = int(sys.argv[1]) if len(sys.argv) > 1 else 300
SERVICE_MS = 200
ADDR = "127.0.0.1:18801"
URL = f"http://{ADDR}"
tmp = tempfile.mkdtemp(prefix="gpufn-burst.")
spec = os.path.join(tmp, "burst.yaml")
with open(spec, "w") as f:
    f.write(f"""name: burst
command: [python3, testfn.py]
workdir: {os.path.abspath('crates/gpufn-cli/tests/fixtures')}
gpu: {{type: t4, memory_gb: 4}}
instance_concurrency: 1
scaling: {{max_instances: 30, max_queue: 1000}}
""")
server = subprocess.Popen([f"target/{PROFILE}/gpufn", "serve", "--listen", ADDR, "--data-dir",
                           os.path.join(tmp, "data"), "--simulate-gpus", "30xt4:16", "--deploy", spec],
                          stderr=subprocess.DEVNULL)
try:
    for _ in range(200):
        try:
            urllib.request.urlopen(URL + "/healthz", timeout=1).read()
            break
        except OSError:
            time.sleep(0.05)
    benchauth.install(os.path.join(tmp, "data"))
    results = [None] * N
    start = threading.Barrier(N + 1)

    def one(i):
        start.wait()
        t0 = time.perf_counter()
        try:
            with urllib.request.urlopen(f"{URL}/function/burst/work?ms={SERVICE_MS}", timeout=120) as r:
                r.read()
                results[i] = (r.status, time.perf_counter() - t0, r.headers["x-gpufn-instance-id"],
                              time.perf_counter())
        except Exception as e:  # noqa: BLE001 - any failure counts
            results[i] = (getattr(e, "code", 0), time.perf_counter() - t0, None, time.perf_counter())

    threads = [threading.Thread(target=one, args=(i,)) for i in range(N)]
    for t in threads:
        t.start()
    start.wait()
    t_start = time.perf_counter()
    for t in threads:
        t.join()
    ok = [r for r in results if r and r[0] == 200]
    failed = N - len(ok)
    first_by_instance = {}
    for status, lat, inst, done in ok:
        first_by_instance[inst] = min(first_by_instance.get(inst, done), done)
    firsts = sorted(first_by_instance.values())
    all_serving = (firsts[-1] - t_start) if firsts else float("nan")
    waits = sorted(max(0.0, lat - SERVICE_MS / 1000) for _, lat, _, _ in ok)
    q = lambda p: waits[min(len(waits) - 1, int(p * len(waits)))] if waits else float("nan")
    total = max(r[3] for r in results if r) - t_start
    print(f"{N} concurrent requests from zero, concurrency 1, quota 30 cards, {os.cpu_count()} cores")
    print(f"  instances that served: {len(first_by_instance)}")
    print(f"  all {len(first_by_instance)} instances serving after: {all_serving:.2f} s")
    print(f"  queue wait p50 {q(0.5):.2f} s, p99 {q(0.99):.2f} s; all done after {total:.2f} s")
    print(f"  failed requests: {failed}")
    print(f"  ideal (30 instances, {SERVICE_MS} ms each, no start time): {N / 30 * SERVICE_MS / 1000:.2f} s")
    if failed:
        sys.exit(1)
finally:
    server.terminate()
    server.wait(timeout=60)
