#!/usr/bin/env python3
"""Cold-start cost of gpufn itself: N cold starts of a function whose app starts in milliseconds
(the upstream nginx of gateway.sh), each from zero. For each: total latency of the request at zero,
and the phases gpufn recorded (GPU allocate, spawn, ready). What gpufn adds is the total minus the
app's own readiness time (ready_ms) minus a warm request.

Usage: bench/coldstart.py [N=20]   (run from the repository root; builds nothing: run
`cargo build --release --bin gpufn` first).
APP=sleep: the app is `gpufn sleep-app` instead, which says READY=1 on $NOTIFY_SOCKET as soon as it
listens (NOTIFY=0: it does not, and gpufn finds it by probing alone)."""

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

import benchauth

PROFILE = os.environ.get("GPUFN_BENCH_PROFILE", "release")  # "debug" for the CI smoke
N = int(sys.argv[1]) if len(sys.argv) > 1 else 20
BIN = os.environ.get("GPUFN_BIN", f"target/{PROFILE}/gpufn")  # GPUFN_BIN: another build (A/B)
ADDR = "127.0.0.1:18303"
URL = f"http://{ADDR}"
os.environ["BENCH_DIR"] = tempfile.mkdtemp(prefix="gpufn-cold.")


def get(path):
    t0 = time.perf_counter()
    with urllib.request.urlopen(URL + path, timeout=30) as r:
        body = r.read()
        return (time.perf_counter() - t0) * 1000, dict(r.headers), body


def wait(cond, what, within=30):
    deadline = time.time() + within
    while not cond():
        if time.time() > deadline:
            sys.exit(f"timed out waiting for {what}")
        time.sleep(0.01)


def instances():
    return json.loads(get("/api/v1/functions/bench/instances")[2])


APP = os.environ.get("APP", "nginx")
NOTIFY = os.environ.get("NOTIFY", "1")
spec = os.path.join(os.environ["BENCH_DIR"], "cold.yaml")
if APP == "sleep":
    CALL = "/function/bench/work"
    APP_CMD = [os.path.abspath(BIN), "sleep-app"]
    with open(spec, "w") as f:
        f.write(f"name: bench\ncommand: {json.dumps(APP_CMD)}\nworkdir: /\ngpu: {{memory_gb: 1}}\n"
                f"env: {{SLEEP_APP_NOTIFY: '{NOTIFY}'}}\n"
                "scaling: {max_instances: 1, idle_timeout_s: 0}\n")
else:
    CALL = "/function/bench/"
    APP_CMD = ["bash", "bench/upstream.sh"]
    with open("bench/gateway.yaml") as f:
        text = f.read().replace("idle_timeout_s: 600", "idle_timeout_s: 0")
    with open(spec, "w") as f:
        f.write(text.replace("workdir: .", f"workdir: {os.path.abspath('bench')}"))
server = subprocess.Popen([BIN, "serve", "--listen", ADDR, "--data-dir",
                           os.path.join(os.environ["BENCH_DIR"], "data"),
                           "--simulate-gpus", "1xbench:16", "--deploy", spec],
                          stderr=subprocess.DEVNULL)
try:
    wait(lambda: subprocess.run(["curl", "-fs", URL + "/healthz"], capture_output=True).returncode == 0,
         "gpufn")
    benchauth.install(os.path.join(os.environ["BENCH_DIR"], "data"))
    totals, readies, spawns, allocs, overheads = [], [], [], [], []
    for _ in range(N):
        wait(lambda: instances() == [], "scale to zero")
        total, headers, _ = get(CALL)
        assert headers["x-gpufn-cold-start"] == "true", headers
        # With idle_timeout_s 0 the instance goes at once: its phases are read from the stored
        # cold-start record (the newest first), which outlives it.
        p = json.loads(get("/api/v1/functions/bench/cold-starts?limit=1")[2])[0]
        totals.append(total)
        readies.append(p["ready_ms"])
        spawns.append(p["start_ms"])
        allocs.append(p["gpu_allocate_ms"])
    # A warm request for reference: keep the instance by sending two at once is overkill; use the
    # gateway benchmark for warm latency. Here: gpufn's own share of a cold start.
    for t, r, s in zip(totals, readies, spawns):
        overheads.append(t - r - s)

    # Baseline: the same app started by hand and polled every 0.5 ms: its own start-up time.
    base = []
    for i in range(N):
        port = 18400 + i
        env = dict(os.environ, PORT=str(port), SLEEP_APP_NOTIFY="0")
        t0 = time.perf_counter()
        app = subprocess.Popen(APP_CMD, env=env, stderr=subprocess.DEVNULL)
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1).read()
                break
            except OSError:
                time.sleep(0.0005)
        base.append((time.perf_counter() - t0) * 1000)
        app.terminate()
        app.wait()

    def q(v, p):
        v = sorted(v)
        return v[min(len(v) - 1, int(p * len(v)))]

    print(f"{len(totals)} cold starts of a millisecond-start app ({APP}, notify {NOTIFY}), {os.cpu_count()} cores")
    for name, v in [("request at zero, total", totals), ("spawn (start_ms)", spawns),
                    ("app ready (ready_ms)", readies), ("gpu allocate", allocs),
                    ("gpufn's own share (total - spawn - ready)", overheads),
                    ("baseline: same app by hand, 0.5 ms polling", base)]:
        print(f"  {name:44s} p50 {q(v, 0.5):8.2f} ms   p90 {q(v, 0.9):8.2f} ms   mean {statistics.mean(v):8.2f} ms")
finally:
    server.terminate()
    server.wait(timeout=30)

