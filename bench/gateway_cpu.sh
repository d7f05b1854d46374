#!/usr/bin/env bash
# CPU time per proxied request (user and system, from /proc/PID/stat) of nginx as a reverse proxy,
# gpufn $OLD and gpufn $NEW (the A/B setup of bench/ab_setup.sh), in alternating rounds of wrk.
# CPU per request is steadier than requests/s on a shared machine.
# Usage: OLD=target/release/gpufn OLD_FLAGS="--gateway hyper" NEW=target/release/gpufn \
#        [R=3 rounds] [D=4 s] [C=16 conns] [B=1m body] bench/gateway_cpu.sh
source "$(dirname "$0")/ab_setup.sh"
npid=$(pgrep -P "$(cat "$BENCH_DIR/proxy.pid")")
opid=$(pgrep -f "listen 127.0.0.1:18503" | tail -1)
gpid=$(pgrep -f "listen 127.0.0.1:18504" | tail -1)
tck=$(getconf CLK_TCK)
st() { awk '{print $14, $15}' "/proc/$1/stat"; }
for r in $(seq 1 "${R:-3}"); do
  for t in "nginx:$npid:18502/" "old:$opid:18503/function/bench/" "new:$gpid:18504/function/bench/"; do
    n=${t%%:*}; rest=${t#*:}; p=${rest%%:*}; u=${rest#*:}
    a=($(st "$p"))
    wrk -t1 -c"${C:-16}" -d"${D:-4}"s --latency -H "$(auth_of $n)" "http://127.0.0.1:$u${B:-}" > "$BENCH_DIR/wrk-$n.txt"
    b=($(st "$p"))
    reqs=$(awk '/requests in/ {print $1}' "$BENCH_DIR/wrk-$n.txt")
    rps=$(awk '/Requests\/sec/ {print $2}' "$BENCH_DIR/wrk-$n.txt")
    p99=$(awk '$1=="99%" {print $2}' "$BENCH_DIR/wrk-$n.txt")
    echo "$r $n rps=$rps p99=$p99 user_ns/req=$(( (b[0]-a[0]) * 1000000000 / tck / reqs )) sys_ns/req=$(( (b[1]-a[1]) * 1000000000 / tck / reqs ))"
  done
done
