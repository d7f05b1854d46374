"""Mandelbrot renderer: a gpufn example function.

A real (if small) image-generation service in the shape gpufn expects of any function:
- it is its own web server and listens on $PORT;
- it does its expensive set-up before it answers /health (here it precomputes a colour palette
  and, to make cold starts visible in a demo, waits LOAD_SECONDS as a model load would);
- it serves requests that take from milliseconds to seconds depending on their size.

Routes:
  GET /health                      200 once loaded
  GET /                            what this instance is (function, instance, GPU it was given)
  GET /render?w=256&h=192&iter=200&x=-0.6&y=0&zoom=1   a PNG image
  POST /render                     the same, parameters as a JSON body
Standard library only: copy this directory, replace render() with your model.
"""

import json
import os
import struct
import sys
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

LIMITS = {"w": (1, 2048), "h": (1, 2048), "iter": (1, 5000)}


def load():
    """The 'model load': build a 256-colour palette (and optionally wait, for demos)."""
    time.sleep(float(os.environ.get("LOAD_SECONDS", "0")))
    palette = []
    for i in range(256):
        t = i / 255
        palette.append((
            int(9 * (1 - t) * t ** 3 * 255),
            int(15 * (1 - t) ** 2 * t ** 2 * 255),
            int(8.5 * (1 - t) ** 3 * t * 255),
        ))
    return palette


PALETTE = None


def png(width, height, rows):
    def chunk(kind, data):
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    raw = b"".join(b"\x00" + bytes(row) for row in rows)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))


def render(w, h, max_iter, cx, cy, zoom):
    scale = 3.0 / (zoom * w)
    rows = []
    for j in range(h):
        row = []
        ci = cy + (j - h / 2) * scale
        for i in range(w):
            c = complex(cx + (i - w / 2) * scale, ci)
            z = 0j
            n = 0
            while n < max_iter and (z.real * z.real + z.imag * z.imag) <= 4.0:
                z = z * z + c
                n += 1
            row.extend((0, 0, 0) if n == max_iter else PALETTE[(n * 255) // max_iter])
        rows.append(row)
    return png(w, h, rows)


def parse(params):
    out = {"w": 256, "h": 192, "iter": 200, "x": -0.6, "y": 0.0, "zoom": 1.0}
    for key, value in params.items():
        if key not in out:
            raise ValueError(f"unknown parameter {key!r}")
        try:
            out[key] = type(out[key])(value)
        except (TypeError, ValueError):
            raise ValueError(f"{key}: not a number ({value!r})")
    for key, (lo, hi) in LIMITS.items():
        if not lo <= out[key] <= hi:
            raise ValueError(f"{key}: must be {lo}..{hi} (got {out[key]})")
    if out["zoom"] <= 0:
        raise ValueError("zoom: must be > 0")
    return out


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def send(self, code, body, content_type, extra=None):
        self.send_response(code)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(body)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def json(self, code, obj):
        self.send(code, (json.dumps(obj) + "\n").encode(), "application/json")

    def do_GET(self):
        url = urlsplit(self.path)
        if url.path == "/health":
            return self.json(200, {"ok": True})
        if url.path == "/":
            return self.json(200, {
                "function": os.environ.get("GPUFN_FUNCTION"),
                "instance": os.environ.get("GPUFN_INSTANCE_ID"),
                "gpu": os.environ.get("CUDA_VISIBLE_DEVICES"),
                "gpu_memory_gb": os.environ.get("GPUFN_GPU_MEMORY_GB"),
                "try": "/render?w=256&h=192&iter=200",
            })
        if url.path == "/render":
            return self.render({k: v[0] for k, v in parse_qs(url.query).items()})
        return self.json(404, {"error": f"no route {url.path}"})

    def do_POST(self):
        if urlsplit(self.path).path != "/render":
            return self.json(404, {"error": "POST only on /render"})
        n = int(self.headers.get("content-length") or 0)
        try:
            params = json.loads(self.rfile.read(n) or b"{}")
            if not isinstance(params, dict):
                raise ValueError("body must be a JSON object")
        except ValueError as e:
            return self.json(400, {"error": str(e)})
        return self.render(params)

    def render(self, params):
        try:
            p = parse(params)
        except ValueError as e:
            return self.json(400, {"error": str(e)})
        t0 = time.perf_counter()
        image = render(p["w"], p["h"], p["iter"], p["x"], p["y"], p["zoom"])
        ms = (time.perf_counter() - t0) * 1000
        self.send(200, image, "image/png", {"x-render-ms": f"{ms:.1f}"})


def main():
    global PALETTE
    PALETTE = load()
    server = ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler)
    server.daemon_threads = True
    print(f"mandelbrot: ready on port {os.environ['PORT']}", file=sys.stderr, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
