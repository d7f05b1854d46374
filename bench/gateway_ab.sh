#!/usr/bin/env bash
# Gateway A/B: nginx as a reverse proxy (baseline) vs two gpufn builds, --worker-threads 1, in
# alternating rounds on one machine, so noisy-machine drift hits all three alike.
# Usage: OLD=path/to/gpufn NEW=path/to/gpufn [R=6 rounds] [D=5 s] [C=16 conns] [B=1m body] bench/gateway_ab.sh
cd "$(dirname "$0")/.."
export BENCH_DIR=$(mktemp -d /tmp/gpufn-ab.XXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
wait_http() { for _ in $(seq 1 200); do curl -fsS -m 5 -o /dev/null "$1" 2>/dev/null && return 0; sleep 0.05; done; return 1; }
PORT=18501 bash bench/upstream.sh & pids+=($!)
sed -e "s|__PORT__|18502|g" -e "s|__UPSTREAM__|18501|g" -e "s|__DIR__|$BENCH_DIR|g" bench/proxy.conf.tmpl > "$BENCH_DIR/proxy.conf"
mkdir -p "$BENCH_DIR/tmp-proxy"
nginx -p "$BENCH_DIR" -c "$BENCH_DIR/proxy.conf" & pids+=($!)
"${OLD:?set OLD to the previous gpufn binary}" serve --listen 127.0.0.1:18503 --data-dir "$BENCH_DIR/old" --simulate-gpus 1xbench:16 --worker-threads 1 --deploy bench/gateway.yaml 2>/dev/null & pids+=($!)
"${NEW:-target/release/gpufn}" serve --listen 127.0.0.1:18504 --data-dir "$BENCH_DIR/new" --simulate-gpus 1xbench:16 --worker-threads 1 --deploy bench/gateway.yaml 2>/dev/null & pids+=($!)
for p in 18501/ 18502/ 18503/function/bench/ 18504/function/bench/; do wait_http http://127.0.0.1:$p; done
C=${C:-16}; B=${B:-}
for round in $(seq 1 ${R:-3}); do
 for t in nginx:18502/ old:18503/function/bench/ new:18504/function/bench/; do
  n=${t%%:*}; u=${t#*:}
  r=$(wrk -t1 -c$C -d${D:-6}s --latency http://127.0.0.1:$u$B | awk '/Requests\/sec/ {rps=$2} $1=="50%" {p50=$2} $1=="99%" {p99=$2} END {print rps, p50, p99}')
  echo "$round $n $r"
 done
done
