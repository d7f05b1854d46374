#!/usr/bin/env bash
# Durable accept throughput of POST /async-function: every 202 is sent only after the task is in
# SQLite with synchronous=FULL (fsync). gpufn groups concurrent accepts into one transaction.
# Baseline, same disk, same run: one fsync'd SQLite transaction per task (Python's sqlite3).
# The function cannot start (card quota 0), so the tasks stay queued and only acceptance is measured.
# Usage: bench/async_accept.sh [DURATION_S=10] [CONNECTIONS=32]
set -euo pipefail
cd "$(dirname "$0")/.."
DUR="${1:-10}"; CONN="${2:-32}"
DIR=$(mktemp -d /tmp/gpufn-async.XXXX)
# GPUFN_BENCH_PROFILE=debug (the CI smoke) uses the debug build as it is.
PROFILE="${GPUFN_BENCH_PROFILE:-release}"
[ "$PROFILE" != release ] || cargo build --release --quiet --bin gpufn
"target/$PROFILE/gpufn" serve --listen 127.0.0.1:18701 --data-dir "$DIR/data" --simulate-gpus 1xbench:16 \
  --quota-cards 0 --deploy bench/gateway.yaml 2>"$DIR/gpufn.log" &
PID=$!
trap 'kill -TERM $PID 2>/dev/null; wait $PID 2>/dev/null' EXIT
for _ in $(seq 1 200); do curl -fsS -o /dev/null http://127.0.0.1:18701/healthz 2>/dev/null && break; sleep 0.05; done
source bench/auth.sh
AUTH=$(bench_auth "$DIR/data")
wrk -t2 -c"$CONN" -d"${DUR}s" --latency -H "$AUTH" -s bench/async_post.lua http://127.0.0.1:18701/async-function/bench/run > "$DIR/wrk.txt"
RPS=$(awk '/Requests\/sec/ {print $2}' "$DIR/wrk.txt")
P50=$(awk '$1=="50%" {print $2}' "$DIR/wrk.txt"); P99=$(awk '$1=="99%" {print $2}' "$DIR/wrk.txt")
NON2XX=$(awk '/Non-2xx/ {print $NF}' "$DIR/wrk.txt"); NON2XX=${NON2XX:-0}
STORED=$(curl -fsS -H "$AUTH" "http://127.0.0.1:18701/api/v1/tasks?limit=1" >/dev/null && sqlite3 "$DIR/data/gpufn.db" "select count(*) from tasks" 2>/dev/null || echo "?")
BASE=$(python3 - "$DIR/baseline.db" <<'PY'
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("PRAGMA journal_mode=WAL"); db.execute("PRAGMA synchronous=FULL")
db.execute("CREATE TABLE t (id TEXT PRIMARY KEY, body BLOB)")
n, t0 = 0, time.perf_counter()
while time.perf_counter() - t0 < 3:
    db.execute("BEGIN"); db.execute("INSERT INTO t VALUES (?, ?)", (str(n), b"x" * 40)); db.execute("COMMIT")
    n += 1
print(f"{n / (time.perf_counter() - t0):.0f}")
PY
)
echo "wrk -t2 -c$CONN -d${DUR}s POST /async-function (40-byte JSON body), $(nproc) cores"
echo "gpufn durable accepts:        $RPS tasks/s   p50 $P50   p99 $P99   non-2xx $NON2XX"
echo "baseline, 1 fsync per task:   $BASE tasks/s"
echo "tasks in the store: $STORED"
