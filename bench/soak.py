#!/usr/bin/env python3
"""Soak: mixed traffic against one gpufn for a while, sampling its RSS and open file descriptors,
then checking that nothing leaked (issue 18, point 15).

Traffic, all at once: warm synchronous calls (4 threads), a function that scales to zero between
calls (a cold start every few seconds), a function whose instance crashes on every call, async
tasks, a deploy-and-delete loop, and a client that sends one byte of a body and stalls (answered
408 by --client-body-timeout-s).

After the traffic stops: every deleted function's instances are gone, the cards held equal the
instances alive, every task reached a final state, no cgroup of a deleted function is left, and
RSS / descriptors are compared between the first sample after warm-up and the last.

Usage: bench/soak.py [SECONDS=600]   (run from the repository root after `cargo build --release`).
"""

import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time

import benchauth

PROFILE = os.environ.get("GPUFN_BENCH_PROFILE", "release")
SECONDS = int(sys.argv[1]) if len(sys.argv) > 1 else 600
HOST, PORT = "127.0.0.1", 18931
tmp = tempfile.mkdtemp(prefix="gpufn-soak.")
data = os.path.join(tmp, "data")
fixtures = os.path.abspath("crates/gpufn-cli/tests/fixtures")


def spec(name, extra=None):
    s = {"name": name, "command": ["python3", "testfn.py"], "workdir": fixtures,
         "gpu": {"type": "tesla-t4", "memory_gb": 4}}
    s.update(extra or {})
    return s


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


server = subprocess.Popen([f"target/{PROFILE}/gpufn", "serve", "--listen", f"{HOST}:{PORT}", "--data-dir", data,
                           "--simulate-gpus", "4xtesla-t4:16", "--worker-threads", "2",
                           "--client-body-timeout-s", "5", "--allow-callback-to", "127.0.0.1/32"],
                          stderr=subprocess.DEVNULL)
stop = threading.Event()
counts = {}
lock = threading.Lock()


def count(what, status):
    with lock:
        counts.setdefault(what, {}).setdefault(status, 0)
        counts[what][status] += 1


try:
    for _ in range(400):
        try:
            c = http.client.HTTPConnection(HOST, PORT, timeout=5)
            c.request("GET", "/healthz")
            c.getresponse().read()
            break
        except OSError:
            time.sleep(0.05)
    auth = benchauth.headers(data)

    def call(method, path, body=None, headers=None, timeout=60):
        c = http.client.HTTPConnection(HOST, PORT, timeout=timeout)
        c.request(method, path, body, {**auth, **(headers or {})})
        r = c.getresponse()
        out = r.read()
        c.close()
        return r.status, out

    def deploy(s):
        st, out = call("POST", "/api/v1/functions", json.dumps(s), {"content-type": "application/json"})
        assert st in (200, 201), (st, out)

    deploy(spec("warm", {"instance_concurrency": 4, "scaling": {"min_instances": 1}}))
    deploy(spec("cold", {"scaling": {"idle_timeout_s": 1}}))
    deploy(spec("crashy", {"scaling": {"max_instances": 1}}))

    def loop(what, every, fn):
        while not stop.is_set():
            try:
                count(what, fn())
            except Exception as e:  # noqa: BLE001 - counted, the soak goes on
                count(what, type(e).__name__)
            stop.wait(every)

    def warm():
        return call("GET", "/function/warm/echo")[0]

    def cold():
        return call("GET", "/function/cold/echo")[0]

    def crashy():
        return call("GET", "/function/crashy/crash")[0]

    def task():
        return call("POST", "/async-function/warm/echo", b"x")[0]

    n = [0]

    def churn():
        n[0] += 1
        name = f"tmp-{n[0]}"
        deploy(spec(name))
        st = call("GET", f"/function/{name}/echo")[0]
        call("DELETE", f"/api/v1/functions/{name}")
        return st

    def slow_body():
        s = socket.create_connection((HOST, PORT), timeout=30)
        head = (f"POST /function/warm/echo HTTP/1.1\r\nhost: {HOST}\r\n"
                f"authorization: {auth['authorization']}\r\ncontent-length: 100\r\n\r\nx")
        s.sendall(head.encode())
        got = s.recv(64)
        s.close()
        return int(got.split()[1]) if got else "closed"

    threads = [threading.Thread(target=loop, args=("warm", 0.0, warm)) for _ in range(4)]
    threads += [
        threading.Thread(target=loop, args=("cold", 3.0, cold)),
        threading.Thread(target=loop, args=("crashy", 3.0, crashy)),
        threading.Thread(target=loop, args=("task", 1.0, task)),
        threading.Thread(target=loop, args=("churn", 5.0, churn)),
        threading.Thread(target=loop, args=("slow_body", 2.0, slow_body)),
    ]
    for t in threads:
        t.start()
    samples = []
    t0 = time.time()
    while time.time() - t0 < SECONDS:
        samples.append((round(time.time() - t0), round(rss_mb(server.pid), 1), fds(server.pid)))
        time.sleep(10)
    stop.set()
    for t in threads:
        t.join()
    samples.append((round(time.time() - t0), round(rss_mb(server.pid), 1), fds(server.pid)))

    # Leaks: wait for the async tasks to finish and idle instances to go.
    deadline = time.time() + 120
    while time.time() < deadline:
        tasks = json.loads(call("GET", "/api/v1/tasks?limit=10000")[1])
        if all(t["state"] in ("succeeded", "failed", "cancelled", "expired") for t in tasks):
            break
        time.sleep(1)
    states = {}
    for t in tasks:
        states[t["state"]] = states.get(t["state"], 0) + 1
    functions = json.loads(call("GET", "/api/v1/functions")[1])
    names = sorted(f["name"] for f in functions)
    alive = sum(len(json.loads(call("GET", f"/api/v1/functions/{f}/instances")[1])) for f in names)
    gpus = json.loads(call("GET", "/api/v1/gpus")[1])
    held = sum(1 for g in gpus if g.get("instance"))
    cgroups = []
    for root in ("/sys/fs/cgroup/cpu", "/sys/fs/cgroup/memory", "/sys/fs/cgroup"):
        for dirpath, dirnames, _ in os.walk(root):
            cgroups += [os.path.join(dirpath, d) for d in dirnames if d.startswith("tmp-")]
            if dirpath.count("/") > 6:
                dirnames[:] = []

    print(f"soak: {SECONDS} s, gpufn {PROFILE}, 2 worker threads")
    print("requests by kind and status:", json.dumps(counts, sort_keys=True))
    print("| t (s) | RSS (MB) | open fds |")
    print("|---|---|---|")
    for t, rss, fd in samples:
        print(f"| {t} | {rss} | {fd} |")
    warm_i = min(2, len(samples) - 1)
    print(f"after warm-up (t={samples[warm_i][0]} s) → end: RSS {samples[warm_i][1]} → {samples[-1][1]} MB, "
          f"fds {samples[warm_i][2]} → {samples[-1][2]}")
    print(f"functions left: {names}; instances alive: {alive}; cards held: {held}")
    print(f"tasks by state: {states}")
    print(f"cgroups of deleted functions left: {len(cgroups)}")
    ok = names == ["cold", "crashy", "warm"] and set(states) <= {"succeeded"} and not cgroups
    print("soak: OK" if ok else "soak: LEAK OR FAILURE")
    sys.exit(0 if ok else 1)
finally:
    server.terminate()
    try:
        server.wait(timeout=60)
    except subprocess.TimeoutExpired:
        server.kill()
