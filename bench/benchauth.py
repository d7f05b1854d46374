"""gpufn asks every caller for a token: the benchmarks send the first admin token of the server
they started (written to <data-dir>/admin.token before it listens), as real callers would."""

import os
import time
import urllib.request


def token(data_dir, within=30):
    path = os.path.join(data_dir, "admin.token")
    deadline = time.time() + within
    while not (os.path.exists(path) and os.path.getsize(path) > 0):
        if time.time() > deadline:
            raise SystemExit(f"no {path}: did gpufn start?")
        time.sleep(0.02)
    with open(path) as f:
        return f.read().strip()


def headers(data_dir):
    """The header dict for http.client requests."""
    return {"authorization": f"Bearer {token(data_dir)}"}


def install(data_dir):
    """Makes every urllib.request.urlopen call send the token; returns the header dict."""
    h = headers(data_dir)
    opener = urllib.request.build_opener()
    opener.addheaders = list(h.items())
    urllib.request.install_opener(opener)
    return h
