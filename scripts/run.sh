#!/usr/bin/env bash
# Builds gpufn, starts it with the example function deployed (on simulated GPUs when this machine
# has no NVIDIA GPU), shows a cold call and a warm call, then keeps serving until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."

LISTEN="${GPUFN_LISTEN:-127.0.0.1:8080}"
DATA_DIR="${GPUFN_DATA_DIR:-./gpufn-data}"
SPEC="${GPUFN_EXAMPLE:-examples/mandelbrot/gpufn.yaml}"
URL="http://$LISTEN"

cargo build --release --quiet --bin gpufn
BIN=target/release/gpufn

"$BIN" serve --listen "$LISTEN" --data-dir "$DATA_DIR" \
  --simulate-gpus-if-none 2xtesla-t4:16 --deploy "$SPEC" &
SERVER=$!
trap 'kill -TERM $SERVER 2>/dev/null; wait $SERVER' EXIT INT TERM

for _ in $(seq 1 200); do
  curl -fsS "$URL/healthz" >/dev/null 2>&1 && break
  kill -0 $SERVER 2>/dev/null || { echo "gpufn failed to start" >&2; exit 1; }
  sleep 0.05
done

NAME=$(sed -n 's/^name: *\([a-z0-9-]*\).*/\1/p' "$SPEC")
export GPUFN_SERVER="$URL"
echo
echo "== gpufn is serving on $URL with function '$NAME' deployed"
echo "== first call (cold start: a GPU is allocated, the app started and probed):"
"$BIN" invoke "$NAME" "/render?w=160&h=120&iter=120" > /tmp/gpufn-first.png
"$BIN" instances "$NAME" --json | python3 -c '
import json, sys
for i in json.load(sys.stdin):
    p = i.get("cold_start") or {}
    print("   cold-start phases of %s: gpu_allocate %.2f ms, image_pull %.0f ms, start %.1f ms, ready %.0f ms"
          % (i["id"], p.get("gpu_allocate_ms", 0), p.get("image_pull_ms", 0), p.get("start_ms", 0), p.get("ready_ms", 0)))'
echo "== second call (warm):"
"$BIN" invoke "$NAME" "/render?w=160&h=120&iter=120" > /tmp/gpufn-second.png
echo
echo "Try it yourself:"
echo "  curl -o mandelbrot.png '$URL/function/$NAME/render?w=512&h=384&iter=300'"
echo "  curl -s $URL/api/v1/functions/$NAME/instances"
echo "  $BIN list      # (GPUFN_SERVER=$URL)"
echo "Idle instances stop after the spec's idle_timeout_s (scale to zero). Ctrl-C stops gpufn."
wait $SERVER
