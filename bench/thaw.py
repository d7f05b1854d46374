#!/usr/bin/env python3
"""Idle mode: a request to a frozen provisioned instance (thaw to first byte) against a cold start
and a warm call of the embeddings example, same gpufn, same machine, interleaved.

Three copies of examples/embed are deployed:
- embed-frozen: min_instances 1, idle_mode freeze (frozen between calls);
- embed-warm:   min_instances 1 (idle but running);
- embed-cold:   min_instances 0, idle_timeout_s 0 (every call starts an instance: the model load).
For each round: wait until embed-frozen's instance is frozen and embed-cold has none, then one
call to each (three texts), timed to the first byte of the response.

Usage: bench/thaw.py [ROUNDS=20]   (from the repository root, after
`examples/embed/fetch-model.sh && cargo build --release -p gpufn-cli -p gpufn-example-embed`)."""

import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import benchauth

PROFILE = os.environ.get("GPUFN_BENCH_PROFILE", "release")
ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 20
GPUFN = os.path.abspath(os.environ.get("GPUFN_BIN", f"target/{PROFILE}/gpufn"))
EMBED_DIR = os.path.abspath("examples/embed")
PORT = 18311
BODY = json.dumps({"texts": ["serverless GPUs", "a frozen instance", "thawed in milliseconds"]})

work = tempfile.mkdtemp(prefix="gpufn-thaw.")
data = os.path.join(work, "data")
server = subprocess.Popen([GPUFN, "serve", "--listen", f"127.0.0.1:{PORT}", "--data-dir", data,
                           "--simulate-gpus", "4xtesla-t4:16"], stderr=subprocess.DEVNULL)


def call(method, path, body=None, headers=None):
    c = http.client.HTTPConnection("127.0.0.1", PORT, timeout=120)
    h = dict(AUTH)
    h.update(headers or {})
    t0 = time.perf_counter()
    c.request(method, path, body=body, headers=h)
    r = c.getresponse()
    first = (time.perf_counter() - t0) * 1000
    payload = r.read()
    c.close()
    return r.status, dict(r.getheaders()), payload, first


def wait(cond, what, within=60):
    deadline = time.time() + within
    while not cond():
        if time.time() > deadline:
            sys.exit(f"timed out waiting for {what}")
        time.sleep(0.01)


def instances(name):
    return json.loads(call("GET", f"/api/v1/functions/{name}/instances")[2])


def deploy(name, scaling):
    spec = (f"name: {name}\ncommand: [./serve.sh]\nworkdir: {EMBED_DIR}\n"
            f"env: {{MODEL_DIR: model, MAX_WAIT_MS: '0'}}\ngpu: {{memory_gb: 2}}\ncpu: 2\n"
            f"memory_mb: 2048\nhealth_check: {{path: /health, startup_timeout_s: 120}}\n"
            f"scaling: {scaling}\n")
    status, _, body, _ = call("POST", "/api/v1/functions", spec, {"content-type": "application/yaml"})
    assert status in (200, 201), body


try:
    AUTH = benchauth.headers(data)
    wait(lambda: call("GET", "/healthz")[0] == 200, "gpufn")
    deploy("embed-frozen", "{min_instances: 1, idle_mode: freeze}")
    deploy("embed-warm", "{min_instances: 1}")
    deploy("embed-cold", "{min_instances: 0, idle_timeout_s: 0}")
    results = {"thaw": [], "warm": [], "cold": []}
    colds = []
    for _ in range(ROUNDS):
        wait(lambda: [i["frozen"] for i in instances("embed-frozen")] == [True], "frozen")
        wait(lambda: [i["state"] for i in instances("embed-warm")] == ["ready"], "warm idle")
        wait(lambda: instances("embed-cold") == [], "cold at zero")
        for kind, name in (("thaw", "embed-frozen"), ("warm", "embed-warm"), ("cold", "embed-cold")):
            status, headers, payload, first = call("POST", f"/function/{name}/embed", BODY,
                                                   {"content-type": "application/json"})
            assert status == 200, payload
            cold = headers.get("x-gpufn-cold-start") == "true"
            assert cold == (kind == "cold"), (kind, headers)
            results[kind].append(first)
        p = json.loads(call("GET", "/api/v1/functions/embed-cold/cold-starts?limit=1")[2])[0]
        colds.append(p["ready_ms"])

    def q(v, p):
        v = sorted(v)
        return v[min(len(v) - 1, int(p * len(v)))]

    print(f"{ROUNDS} rounds, embeddings example (3 texts), {os.cpu_count()} cores")
    for kind in ("warm", "thaw", "cold"):
        v = results[kind]
        print(f"  {kind:5s} first byte  p50 {q(v, 0.5):8.2f} ms   p90 {q(v, 0.9):8.2f} ms   "
              f"mean {statistics.mean(v):8.2f} ms")
    print(f"  cold start's model load (ready_ms) p50 {q(colds, 0.5):.1f} ms")
    print(f"  thaw − warm p50 {q(results['thaw'], 0.5) - q(results['warm'], 0.5):.2f} ms; "
          f"cold / thaw p50 {q(results['cold'], 0.5) / q(results['thaw'], 0.5):.1f}×")
finally:
    server.terminate()
    server.wait(timeout=30)
