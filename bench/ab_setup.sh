# Sourced by bench/gateway_ab.sh and bench/c1_spin.sh: starts the nginx upstream (18501), nginx as
# the baseline reverse proxy (18502), and two gpufn builds with --worker-threads 1 — $OLD on 18503,
# $NEW (default target/release/gpufn) on 18504 — and waits until all four answer. Extra `serve`
# flags go in $OLD_FLAGS / $NEW_FLAGS (e.g. OLD=target/release/gpufn OLD_FLAGS="--gateway hyper"
# compares the two gateway paths of one build); the specs deployed in $OLD_SPEC / $NEW_SPEC (default
# bench/gateway.yaml; bench/gateway-anon.yaml is the same function with auth: anonymous, to
# measure the token check). Everything it
# started (and whatever the caller adds to `pids`) is stopped on exit.
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export BENCH_DIR=$(mktemp -d /tmp/gpufn-ab.XXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
source bench/auth.sh
wait_http() { for _ in $(seq 1 200); do curl -fsS -m 5 -o /dev/null -H "${2:-x-none: 1}" "$1" 2>/dev/null && return 0; sleep 0.05; done; return 1; }
PORT=18501 bash bench/upstream.sh & pids+=($!)
upstream_pid=$!
sed -e "s|__PORT__|18502|g" -e "s|__UPSTREAM__|18501|g" -e "s|__DIR__|$BENCH_DIR|g" bench/proxy.conf.tmpl > "$BENCH_DIR/proxy.conf"
mkdir -p "$BENCH_DIR/tmp-proxy"
nginx -p "$BENCH_DIR" -c "$BENCH_DIR/proxy.conf" & pids+=($!)
"${OLD:?set OLD to the previous gpufn binary}" serve --listen 127.0.0.1:18503 --data-dir "$BENCH_DIR/old" --simulate-gpus 1xbench:16 --worker-threads 1 --deploy "${OLD_SPEC:-bench/gateway.yaml}" ${OLD_FLAGS:-} 2>/dev/null & pids+=($!)
"${NEW:-target/release/gpufn}" serve --listen 127.0.0.1:18504 --data-dir "$BENCH_DIR/new" --simulate-gpus 1xbench:16 --worker-threads 1 --deploy "${NEW_SPEC:-bench/gateway.yaml}" ${NEW_FLAGS:-} 2>/dev/null & pids+=($!)
# The header each target gets (nginx the same as the new build's, so the bytes match).
export AUTH_OLD=$(bench_auth "$BENCH_DIR/old") AUTH_NEW=$(bench_auth "$BENCH_DIR/new")
export AUTH_NGINX=$AUTH_NEW
wait_http http://127.0.0.1:18501/
# APP_CGROUP=1: the baseline's app (the nginx upstream) in a CPU cgroup of its own, as gpufn puts
# every process instance (running as root, cgroup v1): both proxies then face the same kernel
# scheduling of their app, so the comparison is of the proxies alone (BENCHMARKS.md, session 6).
if [ "${APP_CGROUP:-0}" = 1 ] && [ -d /sys/fs/cgroup/cpu ]; then
  cg=/sys/fs/cgroup/cpu/gpufn-bench-baseline-$$
  mkdir -p "$cg"
  for p in $(pgrep -P "$upstream_pid") "$upstream_pid" $(pgrep -f "upstream-18501.conf"); do echo "$p" > "$cg/cgroup.procs" 2>/dev/null || true; done
  trap 'cleanup; for p in $(cat "'"$cg"'/cgroup.procs" 2>/dev/null); do echo "$p" > /sys/fs/cgroup/cpu/cgroup.procs; done; rmdir "'"$cg"'" 2>/dev/null || true' EXIT
fi
wait_http http://127.0.0.1:18502/
wait_http http://127.0.0.1:18503/function/bench/ "$AUTH_OLD"
wait_http http://127.0.0.1:18504/function/bench/ "$AUTH_NEW"
# auth_of NAME: the header for target nginx, old or new.
auth_of() { case $1 in old) echo "$AUTH_OLD";; new) echo "$AUTH_NEW";; *) echo "$AUTH_NGINX";; esac; }
