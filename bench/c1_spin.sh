#!/usr/bin/env bash
# One connection, with and without two `nice -n 19` busy loops keeping the vCPUs awake: shows how
# much of the c1 figure on a VM is idle-state wake-up latency rather than proxy work.
# Usage: OLD=path/to/gpufn NEW=path/to/gpufn [D=4 s per run] bench/c1_spin.sh
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
"${OLD:?set OLD}" serve --listen 127.0.0.1:18503 --data-dir "$BENCH_DIR/old" --simulate-gpus 1xbench:16 --worker-threads 1 --deploy bench/gateway.yaml 2>/dev/null & pids+=($!)
"${NEW:-target/release/gpufn}" serve --listen 127.0.0.1:18504 --data-dir "$BENCH_DIR/new" --simulate-gpus 1xbench:16 --worker-threads 1 --deploy bench/gateway.yaml 2>/dev/null & pids+=($!)
for p in 18501/ 18502/ 18503/function/bench/ 18504/function/bench/; do wait_http http://127.0.0.1:$p; done
for spin in 0 1 0 1; do
  sp=()
  if [ $spin = 1 ]; then for i in 1 2; do nice -n 19 bash -c 'while :; do :; done' & sp+=($!); pids+=($!); done; fi
  for t in nginx:18502/ old:18503/function/bench/ new:18504/function/bench/; do
    n=${t%%:*}; u=${t#*:}
    r=$(wrk -t1 -c1 -d${D:-4}s --latency http://127.0.0.1:$u | awk '/Requests\/sec/ {rps=$2} $1=="50%" {p50=$2} $1=="99%" {p99=$2} END {print rps, p50, p99}')
    echo "spin=$spin $n $r"
  done
  for p in "${sp[@]}"; do kill $p; done
done
