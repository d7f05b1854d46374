#!/usr/bin/env bash
# One connection, with and without two `nice -n 19` busy loops keeping the vCPUs awake: shows how
# much of the c1 figure on a VM is idle-state wake-up latency rather than proxy work.
# Usage: OLD=path/to/gpufn NEW=path/to/gpufn [D=4 s per run] bench/c1_spin.sh
source "$(dirname "$0")/ab_setup.sh"
for spin in 0 1 0 1; do
  sp=()
  if [ $spin = 1 ]; then for i in 1 2; do nice -n 19 bash -c 'while :; do :; done' & sp+=($!); pids+=($!); done; fi
  for t in nginx:18502/ old:18503/function/bench/ new:18504/function/bench/; do
    n=${t%%:*}; u=${t#*:}
    r=$(wrk -t1 -c1 -d${D:-4}s --latency -H "$(auth_of $n)" http://127.0.0.1:$u | awk '/Requests\/sec/ {rps=$2} $1=="50%" {p50=$2} $1=="99%" {p99=$2} END {print rps, p50, p99}')
    echo "spin=$spin $n $r"
  done
  for p in "${sp[@]}"; do kill $p; done
done
