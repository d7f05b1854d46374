#!/usr/bin/env bash
# On a machine with an NVIDIA GPU (driver + CUDA toolkit): builds the embed example with `cuda`,
# starts gpufn with NVML discovery (real cards only), deploys the example, and prints the
# cold-start phases and the warm latency. Exits non-zero if anything is not as expected.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v nvidia-smi >/dev/null || { echo "no nvidia-smi: this is not a GPU machine" >&2; exit 1; }
nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader
./examples/embed/fetch-model.sh
cargo build --release --quiet -p gpufn-cli
cargo build --release --quiet -p gpufn-example-embed --features cuda
DATA="$(mktemp -d)"
PORT="${GPUFN_CHECK_PORT:-18399}"
URL="http://127.0.0.1:$PORT"
target/release/gpufn serve --listen "127.0.0.1:$PORT" --data-dir "$DATA" &
SERVER=$!
trap 'kill -TERM $SERVER 2>/dev/null; wait $SERVER; rm -rf "$DATA"' EXIT
for _ in $(seq 1 200); do curl -fsS "$URL/healthz" >/dev/null 2>&1 && break; sleep 0.05; done
export GPUFN_SERVER="$URL" GPUFN_DATA_DIR="$DATA"
AUTH="authorization: Bearer $(cat "$DATA/admin.token")"
target/release/gpufn gpus
# The spec asks for a tesla-t4; on other cards, ask for any card.
sed 's/gpu: {type: tesla-t4, memory_gb: 2}/gpu: {memory_gb: 2}/' examples/embed/gpufn.yaml \
  | sed "s|^workdir: .*|workdir: $PWD/examples/embed|" > "$DATA/embed.yaml"
target/release/gpufn deploy -f "$DATA/embed.yaml"
BODY='{"texts": ["A man is eating food.", "A man is eating a piece of bread.", "The new movie is awesome."]}'
for call in cold warm warm; do
  echo "== $call call"
  target/release/gpufn invoke embed /embed -X POST -H 'content-type: application/json' -d "$BODY" >/dev/null
done
target/release/gpufn instances embed
curl -fsS -H "$AUTH" "$URL/api/v1/functions/embed/cold-starts?limit=1"; echo
echo "== the device the app reports (must be Cuda):"
curl -fsS -H "$AUTH" "$URL/function/embed/stats"; echo
curl -fsS -H "$AUTH" "$URL/function/embed/stats" | grep -q Cuda
