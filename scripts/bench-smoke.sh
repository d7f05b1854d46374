#!/usr/bin/env bash
# A smoke run of every benchmark in bench/: each runs for a second or so against the debug build, so
# the scripts, the flags they pass and the output they parse cannot rot unnoticed. The figures it
# prints mean nothing (debug build, tiny runs); BENCHMARKS.md has the real ones and their commands.
# scripts/test.sh runs it after the tests; BENCH_SMOKE=0 skips it.
set -euo pipefail
cd "$(dirname "$0")/.."
export GPUFN_BENCH_PROFILE=debug BENCH_WRK_S=1
cargo build --quiet -p gpufn-cli --bin gpufn --bin gpufn-testapp

# check NAME PATTERN CMD...: CMD must exit 0 and print a line matching PATTERN (a figure it reports).
check() {
  local name=$1 pattern=$2; shift 2
  local out start=$SECONDS
  echo "== bench smoke: $name"
  if ! out=$("$@" 2>&1); then
    echo "$out" | tail -n 30
    echo "bench smoke FAILED: $name exited non-zero" >&2
    exit 1
  fi
  if ! grep -Eq "$pattern" <<<"$out"; then
    echo "$out" | tail -n 30
    echo "bench smoke FAILED: $name printed no line matching /$pattern/" >&2
    exit 1
  fi
  grep -E "$pattern" <<<"$out" | head -n 3 | sed 's/^/   /'
  echo "   ok ($((SECONDS - start)) s)"
}

need() { command -v "$1" >/dev/null 2>&1; }
for tool in wrk nginx curl python3; do
  need "$tool" || { echo "bench smoke needs $tool (scripts/test.sh installs it)" >&2; exit 1; }
done

check "gateway (bench/gateway.sh)" 'gpufn / nginx throughput ratio: [0-9.]+' bench/gateway.sh 1 4
check "gateway A/B (bench/gateway_ab.sh)" '^1 new [0-9.]+ ' env OLD=target/debug/gpufn NEW=target/debug/gpufn R=1 D=1 C=4 bench/gateway_ab.sh
check "gateway CPU per request, hyper vs direct (bench/gateway_cpu.sh)" '^1 new rps=[0-9.]+ .*user_ns/req=[0-9]+ ' env OLD=target/debug/gpufn OLD_FLAGS="--gateway hyper" NEW=target/debug/gpufn R=1 D=1 C=4 bench/gateway_cpu.sh
check "one connection, vCPUs kept awake (bench/c1_spin.sh)" '^spin=1 new [0-9.]+ ' env OLD=target/debug/gpufn NEW=target/debug/gpufn D=1 bench/c1_spin.sh
check "async accept (bench/async_accept.sh)" 'gpufn durable accepts: +[0-9.]+ tasks/s.*non-2xx 0$' bench/async_accept.sh 1 4
check "cold start (bench/coldstart.py)" "gpufn's own share" python3 bench/coldstart.py 2
check "cold start, READY=1 (bench/coldstart.py APP=sleep)" "gpufn's own share" env APP=sleep NOTIFY=1 python3 bench/coldstart.py 2
check "burst (bench/burst.py)" 'failed requests: 0' python3 bench/burst.py 30
check "scale (bench/scale.py)" 'RSS' python3 bench/scale.py 20
if [ "$(id -u)" = 0 ] && need runc && need docker-registry; then
  check "container cold start (bench/container_coldstart.py)" 'container / process total' \
    python3 bench/container_coldstart.py 2
else
  echo "== bench smoke: container cold start skipped (needs root, runc and docker-registry)"
fi
if [ -f examples/embed/model/model.safetensors ]; then
  cargo build --quiet -p gpufn-example-embed
  check "embeddings (bench/embed.py)" 'concurrency 8 \(batched\) / concurrency 1' python3 bench/embed.py 0.5
  check "idle mode thaw (bench/thaw.py)" 'thaw − warm p50' python3 bench/thaw.py 2
else
  echo "== bench smoke: embeddings skipped (no model: examples/embed/fetch-model.sh)"
fi
echo "bench smoke: all benchmarks ran"
