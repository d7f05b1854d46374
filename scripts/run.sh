#!/usr/bin/env bash
# Builds gpufn and the embeddings example, fetches the model (once, from PyPI), starts gpufn with
# the example deployed (on simulated GPUs when this machine has no NVIDIA GPU), shows a cold call
# and a warm call, then keeps serving until Ctrl-C.
# GPUFN_EXAMPLE=examples/mandelbrot/gpufn.yaml deploys the other example instead.
set -euo pipefail
cd "$(dirname "$0")/.."

LISTEN="${GPUFN_LISTEN:-127.0.0.1:8080}"
DATA_DIR="${GPUFN_DATA_DIR:-./gpufn-data}"
SPEC="${GPUFN_EXAMPLE:-examples/embed/gpufn.yaml}"
URL="http://$LISTEN"

NAME=$(sed -n 's/^name: *\([a-z0-9-]*\).*/\1/p' "$SPEC")
if [ "$NAME" = embed ]; then
  ./examples/embed/fetch-model.sh
  echo "building gpufn and the embed example (release; the first build takes a few minutes) ..." >&2
  cargo build --release --quiet -p gpufn-cli -p gpufn-example-embed
else
  cargo build --release --quiet --bin gpufn
fi
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

export GPUFN_SERVER="$URL"
# The CLI finds the admin token gpufn wrote on its first start in the data dir.
export GPUFN_DATA_DIR="$DATA_DIR"
TOKEN_FILE="$DATA_DIR/admin.token"
phases() {
  "$BIN" instances "$NAME" --json | python3 -c '
import json, sys
for i in json.load(sys.stdin):
    p = i.get("cold_start") or {}
    print("   cold-start phases of %s: gpu_allocate %.2f ms, image_pull %.0f ms, start %.1f ms, ready %.0f ms (the app loading its model)"
          % (i["id"], p.get("gpu_allocate_ms", 0), p.get("image_pull_ms", 0), p.get("start_ms", 0), p.get("ready_ms", 0)))'
}
summarize() {
  python3 -c '
import json, sys
v = json.load(sys.stdin)
e = v["embeddings"]
dot = lambda a, b: sum(x * y for x, y in zip(a, b))
print("   %d embeddings of %d dimensions; first: [%s, ...]" % (len(e), v["dim"], ", ".join("%.4f" % x for x in e[0][:4])))
if len(e) >= 3:
    print("   similarity eating/eating %.3f, eating/movie %.3f" % (dot(e[0], e[1]), dot(e[0], e[2])))'
}

echo
echo "== gpufn is serving on $URL with function '$NAME' deployed"
if [ "$NAME" = embed ]; then
  BODY='{"texts": ["A man is eating food.", "A man is eating a piece of bread.", "The new movie is awesome."]}'
  echo "== first call (cold start: a GPU is allocated, the app started, its model loaded, then probed):"
  "$BIN" invoke embed /embed -X POST -H 'content-type: application/json' -d "$BODY" | summarize
  phases
  echo "== second call (warm):"
  "$BIN" invoke embed /embed -X POST -H 'content-type: application/json' -d "$BODY" | summarize
  echo
  echo "Try it yourself (functions take a token unless their spec says auth: {type: anonymous}):"
  echo "  curl -s -X POST $URL/function/embed/embed -H \"authorization: Bearer \$(cat $TOKEN_FILE)\" \\"
  echo "       -H 'content-type: application/json' -d '{\"texts\": [\"serverless GPUs\", \"GPU functions on demand\"]}'"
else
  echo "== first call (cold start: a GPU is allocated, the app started and probed):"
  "$BIN" invoke "$NAME" "/render?w=160&h=120&iter=120" > /tmp/gpufn-first.png
  phases
  echo "== second call (warm):"
  "$BIN" invoke "$NAME" "/render?w=160&h=120&iter=120" > /tmp/gpufn-second.png
  echo
  echo "Try it yourself:"
  echo "  curl -H \"authorization: Bearer \$(cat $TOKEN_FILE)\" -o mandelbrot.png '$URL/function/$NAME/render?w=512&h=384&iter=300'"
fi
echo "  open \"$URL/console#token=\$(cat $TOKEN_FILE)\"   # the web console, signed in as admin"
echo "  $BIN token create --role invoker   # a token that may only call functions"
echo "  curl -s -H \"authorization: Bearer \$(cat $TOKEN_FILE)\" $URL/api/v1/functions/$NAME/instances"
echo "  $BIN list      # (GPUFN_SERVER=$URL)"
echo "Idle instances stop after the spec's idle_timeout_s (scale to zero). Ctrl-C stops gpufn."
wait $SERVER
