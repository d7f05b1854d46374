#!/usr/bin/env python3
"""Container cold starts from a cached image, against the same app started as a process.

Builds an OCI image of target/release/gpufn-testapp (plus the shared libraries ldd lists), pushes
it to a docker-registry on loopback, deploys it twice on one gpufn: `runtime: container` and
`runtime: process` (the same binary on the host), both with idle_timeout_s 0. Then N cold starts
of each, alternating, each from zero; prints the phases gpufn recorded and the request's total.

Usage: bench/container_coldstart.py [N=20]   (as root, from the repository root, after
`cargo build --release --bin gpufn --bin gpufn-testapp`; needs runc and docker-registry)."""

import gzip
import hashlib
import io
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request

import benchauth

PROFILE = os.environ.get("GPUFN_BENCH_PROFILE", "release")  # "debug" for the CI smoke
N = int(sys.argv[1]) if len(sys.argv) > 1 else 20
BIN = os.path.abspath(f"target/{PROFILE}/gpufn")
APP = os.path.abspath(f"target/{PROFILE}/gpufn-testapp")
WORK = tempfile.mkdtemp(prefix="gpufn-ctr-cold.")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def http(method, url, data=None, headers=None):
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    t0 = time.perf_counter()
    with urllib.request.urlopen(req, timeout=60) as r:
        body = r.read()
        return (time.perf_counter() - t0) * 1000, dict(r.headers), body


def wait(cond, what, within=30):
    deadline = time.time() + within
    while not cond():
        if time.time() > deadline:
            sys.exit(f"timed out waiting for {what}")
        time.sleep(0.005)


def layer(files):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for inside, real in files:
            info = tar.gettarinfo(real, arcname=inside)
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            with open(real, "rb") as f:
                tar.addfile(info, f)
    return gzip.compress(buf.getvalue(), compresslevel=1)


def push(registry, repo, tag):
    libs = []
    for line in subprocess.run(["ldd", APP], capture_output=True, text=True).stdout.splitlines():
        parts = line.split("=>")[-1].split()
        if parts and parts[0].startswith("/"):
            libs.append((parts[0].lstrip("/"), os.path.realpath(parts[0])))
    blobs = [layer(libs), layer([("app/gpufn-testapp", APP)])]
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "config": {"Entrypoint": ["/app/gpufn-testapp"]},
                         "rootfs": {"type": "layers", "diff_ids": []}}).encode()
    base = f"http://{registry}/v2/{repo}"

    def upload(data):
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        _, h, _ = http("POST", f"{base}/blobs/uploads/")
        loc = h["Location"]
        loc = loc if loc.startswith("http") else f"http://{registry}{loc}"
        sep = "&" if "?" in loc else "?"
        http("PUT", f"{loc}{sep}digest={digest}", data,
             {"Content-Type": "application/octet-stream"})
        return {"digest": digest, "size": len(data)}

    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **upload(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **upload(b)}
                   for b in blobs],
    }
    http("PUT", f"{base}/manifests/{tag}", json.dumps(manifest).encode(),
         {"Content-Type": "application/vnd.oci.image.manifest.v1+json"})
    return f"{registry}/{repo}:{tag}", sum(len(b) for b in blobs)


reg_port = free_port()
with open(f"{WORK}/registry.yml", "w") as f:
    f.write(f"version: 0.1\nlog: {{level: error}}\nstorage: {{filesystem: {{rootdirectory: {WORK}/reg}}}}\n"
            f"http: {{addr: 127.0.0.1:{reg_port}}}\n")
registry = subprocess.Popen(["docker-registry", "serve", f"{WORK}/registry.yml"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
gpufn_port = free_port()
URL = f"http://127.0.0.1:{gpufn_port}"
server = None
try:
    def registry_up():
        try:
            http("GET", f"http://127.0.0.1:{reg_port}/v2/")
            return True
        except OSError:
            return False
    wait(registry_up, "registry")
    image, image_bytes = push(f"127.0.0.1:{reg_port}", "bench/testapp", "1")
    server = subprocess.Popen([BIN, "serve", "--listen", f"127.0.0.1:{gpufn_port}", "--data-dir",
                               f"{WORK}/data", "--simulate-gpus", "2xbench:16"],
                              stderr=subprocess.DEVNULL)

    def up():
        try:
            http("GET", URL + "/healthz")
            return True
        except OSError:
            return False
    wait(up, "gpufn")
    benchauth.install(f"{WORK}/data")
    common = "gpu: {memory_gb: 1}\nhealth_check: {path: /health}\nscaling: {idle_timeout_s: 0}\n"
    t0 = time.perf_counter()
    http("POST", URL + "/api/v1/functions",
         f"name: ctr\nruntime: container\nimage: {image}\nport: 9000\n{common}".encode(),
         {"Content-Type": "application/yaml"})
    deploy_ms = (time.perf_counter() - t0) * 1000
    http("POST", URL + "/api/v1/functions",
         f"name: proc\ncommand: [{APP}]\n{common}".encode(), {"Content-Type": "application/yaml"})

    def instances(name):
        return json.loads(http("GET", f"{URL}/api/v1/functions/{name}/instances")[2])

    samples = {"ctr": [], "proc": []}
    for _ in range(N):
        for name in ("ctr", "proc"):
            wait(lambda: instances(name) == [], f"{name} at zero")
            total, headers, _ = http("GET", f"{URL}/function/{name}/health")
            assert headers["x-gpufn-cold-start"] == "true", headers
    for name in ("ctr", "proc"):
        rows = json.loads(http("GET", f"{URL}/api/v1/functions/{name}/cold-starts?limit={N}")[2])
        samples[name] = rows

    def q(v, p):
        v = sorted(v)
        return v[min(len(v) - 1, int(p * len(v)))]

    print(f"image: {image_bytes / 1e6:.1f} MB compressed (2 layers); deploy with pull + unpack "
          f"{deploy_ms:.0f} ms; {N} cold starts each, {os.cpu_count()} cores")
    print(f"  {'phase (p50 / p90 ms)':34s} {'container':>18s} {'process':>18s}")
    for key in ("gpu_allocate_ms", "image_pull_ms", "start_ms", "ready_ms", "first_response_ms",
                "total_ms"):
        c = [r[key] for r in samples["ctr"] if r.get(key) is not None]
        p = [r[key] for r in samples["proc"] if r.get(key) is not None]
        print(f"  {key:34s} {q(c, .5):8.2f} / {q(c, .9):7.2f} {q(p, .5):8.2f} / {q(p, .9):7.2f}")
    # Baseline: bare runc on the same unpacked rootfs (no overlay, no veth: runc makes an empty
    # network namespace), timed from `runc run -d` to its pid file, like gpufn's start_ms.
    rootfs_dir = os.path.join(WORK, "data/images/rootfs")
    rootfs = os.path.join(rootfs_dir, [d for d in os.listdir(rootfs_dir)
                                       if not d.endswith(".partial")][0])
    bundle = os.path.join(WORK, "bundle")
    os.makedirs(bundle)
    subprocess.run(["runc", "spec", "--bundle", bundle], check=True)
    with open(os.path.join(bundle, "config.json")) as f:
        cfg = json.load(f)
    cfg["root"] = {"path": rootfs, "readonly": True}
    cfg["process"]["terminal"] = False
    cfg["process"]["args"] = ["/app/gpufn-testapp"]
    with open(os.path.join(bundle, "config.json"), "w") as f:
        json.dump(cfg, f)
    bare = []
    for i in range(N):
        pid_file = os.path.join(bundle, "pid")
        t0 = time.perf_counter()
        subprocess.run(["runc", "--root", f"{WORK}/runc", "run", "-d", "--bundle", bundle,
                        "--pid-file", pid_file, f"bare{i}"], check=True,
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        bare.append((time.perf_counter() - t0) * 1000)
        subprocess.run(["runc", "--root", f"{WORK}/runc", "delete", "--force", f"bare{i}"])
        os.remove(pid_file)
    print(f"  {'baseline: bare `runc run -d`':34s} {q(bare, .5):8.2f} / {q(bare, .9):7.2f}")
    ct = statistics.median(r["total_ms"] for r in samples["ctr"])
    pt = statistics.median(r["total_ms"] for r in samples["proc"])
    print(f"  container / process total (p50): {ct / pt:.2f}x (+{ct - pt:.1f} ms)")
finally:
    if server:
        server.terminate()
        server.wait(timeout=60)
    registry.terminate()
    registry.wait()
    shutil.rmtree(WORK, ignore_errors=True)
