#!/usr/bin/env python3
"""Scale: many functions deployed, all at zero but one. Reports gpufn's RSS and the warm-path
routing (wrk, 1 KiB, c16) to the one warm function with 1 function deployed and again with N — the
baseline is the same server before the bulk deploy.

Usage: bench/scale.py [N=10000]   (run from the repository root after `cargo build --release`)."""

import http.client
import json
import os
import subprocess
import sys
import tempfile
import time

import benchauth

PROFILE = os.environ.get("GPUFN_BENCH_PROFILE", "release")  # "debug" for the CI smoke
WRK_S = os.environ.get("BENCH_WRK_S", "5")
N = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
HOST, PORT = "127.0.0.1", 18901
tmp = tempfile.mkdtemp(prefix="gpufn-scale.")
os.environ["BENCH_DIR"] = tmp
bench = os.path.abspath("bench")


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024


def wrk(url, conns=16):
    out = subprocess.run(["wrk", "-t1", f"-c{conns}", f"-d{WRK_S}s", "--latency", "-H", AUTH_LINE, url],
                         capture_output=True,
                         text=True).stdout
    rps = float(next(l.split()[1] for l in out.splitlines() if l.startswith("Requests/sec")))
    p50 = next(l.split()[1] for l in out.splitlines() if l.strip().startswith("50%"))
    return rps, p50


server = subprocess.Popen([f"target/{PROFILE}/gpufn", "serve", "--listen", f"{HOST}:{PORT}", "--data-dir",
                           os.path.join(tmp, "data"), "--simulate-gpus", "2xbench:16",
                           "--worker-threads", "1"], stderr=subprocess.DEVNULL)
try:
    conn = None
    for _ in range(200):
        try:
            conn = http.client.HTTPConnection(HOST, PORT)
            conn.request("GET", "/healthz")
            conn.getresponse().read()
            break
        except OSError:
            time.sleep(0.05)

    auth = benchauth.headers(os.path.join(tmp, "data"))

    def deploy(spec):
        conn.request("POST", "/api/v1/functions", json.dumps(spec), {"content-type": "application/json", **auth})
        r = conn.getresponse()
        body = r.read()
        assert r.status in (200, 201), body

    warm = {"name": "warm", "command": ["bash", "upstream.sh"], "workdir": bench, "gpu": {"memory_gb": 1},
            "instance_concurrency": 200, "scaling": {"max_instances": 1, "idle_timeout_s": 3600}}
    deploy(warm)
    # Concurrency 1, one request at a time: every request leaves the instance idle, which wakes
    # the reconciler — the path whose cost must not grow with the number of functions.
    deploy(dict(warm, name="seq", instance_concurrency=1))
    url = f"http://{HOST}:{PORT}/function/warm/"
    seq = f"http://{HOST}:{PORT}/function/seq/"
    AUTH_LINE = f"authorization: {auth['authorization']}"
    subprocess.run(["curl", "-fsS", "-o", "/dev/null", "-H", AUTH_LINE, url], check=True)
    subprocess.run(["curl", "-fsS", "-o", "/dev/null", "-H", AUTH_LINE, seq], check=True)
    rss1 = rss_mb(server.pid)
    rps1, p50_1 = wrk(url)
    srps1, sp50_1 = wrk(seq, 1)
    t0 = time.perf_counter()
    for i in range(N - 2):
        deploy({"name": f"fn-{i}", "command": ["true"], "workdir": "/", "gpu": {"memory_gb": 1}})
    deploy_s = time.perf_counter() - t0
    rssn = rss_mb(server.pid)
    rpsn, p50_n = wrk(url)
    srpsn, sp50_n = wrk(seq, 1)
    conn.request("GET", "/api/v1/functions", headers=auth)
    listed = len(json.loads(conn.getresponse().read()))
    print(f"{N} functions ({listed} listed), one warm, {os.cpu_count()} cores, --worker-threads 1")
    print(f"  deploy rate: {(N - 2) / deploy_s:.0f} functions/s (each fsync'd)")
    print(f"  RSS: {rss1:.1f} MB with 1 function, {rssn:.1f} MB with {N}")
    print(f"  warm routing: {rps1:.0f} req/s p50 {p50_1} with 1 function; {rpsn:.0f} req/s p50 {p50_n} with {N}"
          f" (ratio {rpsn / rps1:.2f})")
    print(f"  one at a time, concurrency 1: {srps1:.0f} req/s p50 {sp50_1} with 1 function; {srpsn:.0f} req/s"
          f" p50 {sp50_n} with {N} (ratio {srpsn / srps1:.2f})")
finally:
    server.terminate()
    server.wait(timeout=60)
