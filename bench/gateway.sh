#!/usr/bin/env bash
# Gateway overhead: the same 1 KiB upstream (nginx) reached directly, through nginx as a reverse
# proxy (the baseline), and through gpufn. All on loopback, in one run, so ratios are comparable.
# Usage: bench/gateway.sh [DURATION_S=10] [CONNECTIONS=16]; MATRIX=1 bench/gateway.sh 5 for the
# matrix of 1/16/64 connections x 1 KiB/1 MiB bodies.
# gpufn runs twice: with its default worker threads (one per CPU) and with --worker-threads 1,
# which matches the baseline's single nginx worker.
set -euo pipefail
cd "$(dirname "$0")/.."
DUR="${1:-10}"; CONN="${2:-16}"
export BENCH_DIR=$(mktemp -d /tmp/gpufn-bench.XXXX)
# GPUFN_BENCH_PROFILE=debug (the CI smoke) uses the debug build as it is.
PROFILE="${GPUFN_BENCH_PROFILE:-release}"
[ "$PROFILE" != release ] || cargo build --release --quiet --bin gpufn
BIN=target/$PROFILE/gpufn
pids=()
cleanup() { for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

source bench/auth.sh
wait_http() { for _ in $(seq 1 200); do curl -fsS -m 5 -o /dev/null -H "${2:-x-none: 1}" "$1" 2>/dev/null && return 0; sleep 0.05; done; echo "no answer from $1" >&2; return 1; }

PORT=18201 bash bench/upstream.sh & pids+=($!)
sed -e "s|__PORT__|18202|g" -e "s|__UPSTREAM__|18201|g" -e "s|__DIR__|$BENCH_DIR|g" bench/proxy.conf.tmpl > "$BENCH_DIR/proxy.conf"
mkdir -p "$BENCH_DIR/tmp-proxy"
nginx -p "$BENCH_DIR" -c "$BENCH_DIR/proxy.conf" & pids+=($!)
"$BIN" serve --listen 127.0.0.1:18203 --data-dir "$BENCH_DIR/gpufn" --simulate-gpus 1xbench:16 \
  --deploy bench/gateway.yaml 2>"$BENCH_DIR/gpufn.log" & pids+=($!)
"$BIN" serve --listen 127.0.0.1:18204 --data-dir "$BENCH_DIR/gpufn1" --simulate-gpus 1xbench:16 \
  --worker-threads 1 --deploy bench/gateway.yaml 2>"$BENCH_DIR/gpufn1.log" & pids+=($!)
AUTH0=$(bench_auth "$BENCH_DIR/gpufn"); AUTH1=$(bench_auth "$BENCH_DIR/gpufn1")
wait_http http://127.0.0.1:18201/
wait_http http://127.0.0.1:18202/
wait_http http://127.0.0.1:18203/function/bench/ "$AUTH0"  # also performs the cold start
wait_http http://127.0.0.1:18204/function/bench/ "$AUTH1"

run() {
  local name=$1 url=$2
  # Every target gets an authorization header of the same size (gpufn checks it, the others
  # ignore it), so all carry the same request bytes.
  local auth=$AUTH1
  case $url in *18203*) auth=$AUTH0;; esac
  wrk -t1 -c"$CONN" -d"${DUR}s" --latency -H "$auth" "$url" > "$BENCH_DIR/$name.txt"
  local rps p50 p99
  rps=$(awk '/Requests\/sec/ {print $2}' "$BENCH_DIR/$name.txt")
  p50=$(awk '$1=="50%" {print $2}' "$BENCH_DIR/$name.txt")
  p99=$(awk '$1=="99%" {print $2}' "$BENCH_DIR/$name.txt")
  printf '%-28s %12s req/s   p50 %8s   p99 %8s\n' "$name" "$rps" "$p50" "$p99"
  echo "$rps" > "$BENCH_DIR/$name.rps"
}
if [ -n "${MATRIX:-}" ]; then
  # MATRIX=1: every path at 1, 16 and 64 connections, for the 1 KiB body and a 1 MiB body.
  for body in "" 1m; do
    for c in 1 16 64; do
      CONN=$c
      echo "== body ${body:-1k}, wrk -t1 -c$c -d${DUR}s"
      run "direct (no proxy)" "http://127.0.0.1:18201/$body"
      run "nginx reverse proxy" "http://127.0.0.1:18202/$body"
      run "gpufn, --worker-threads 1" "http://127.0.0.1:18204/function/bench/$body"
      python3 -c "import sys; d=sys.argv[1]; r=lambda n: float(open(f'{d}/{n}.rps').read()); print(f'   gpufn/nginx: {r(\"gpufn, --worker-threads 1\") / r(\"nginx reverse proxy\"):.2f}')" "$BENCH_DIR"
    done
  done
  exit 0
fi
echo "wrk -t1 -c$CONN -d${DUR}s, 1 KiB body, $(nproc) cores"
run "direct (no proxy)" http://127.0.0.1:18201/
run "nginx reverse proxy" http://127.0.0.1:18202/
run "gpufn gateway" http://127.0.0.1:18203/function/bench/
run "gpufn, --worker-threads 1" http://127.0.0.1:18204/function/bench/
python3 - "$BENCH_DIR" <<'PY'
import sys
d = sys.argv[1]
r = lambda n: float(open(f"{d}/{n}.rps").read())
n = r("nginx reverse proxy")
print(f"gpufn / nginx throughput ratio: {r('gpufn gateway') / n:.2f} "
      f"(--worker-threads 1: {r('gpufn, --worker-threads 1') / n:.2f})")
PY
