#!/usr/bin/env bash
# Gateway A/B: nginx as a reverse proxy (baseline) vs two gpufn builds, --worker-threads 1, in
# alternating rounds on one machine, so noisy-machine drift hits all three alike.
# Usage: OLD=path/to/gpufn NEW=path/to/gpufn [R=6 rounds] [D=5 s] [C=16 conns] [B=1m body] bench/gateway_ab.sh
source "$(dirname "$0")/ab_setup.sh"
C=${C:-16}; B=${B:-}
for round in $(seq 1 ${R:-3}); do
 for t in nginx:18502/ old:18503/function/bench/ new:18504/function/bench/; do
  n=${t%%:*}; u=${t#*:}
  r=$(wrk -t1 -c$C -d${D:-6}s --latency -H "$(auth_of $n)" http://127.0.0.1:$u$B | awk '/Requests\/sec/ {rps=$2} $1=="50%" {p50=$2} $1=="99%" {p99=$2} END {print rps, p50, p99}')
  echo "$round $n $r"
 done
done
