#!/usr/bin/env bash
# A real Kubernetes control plane on loopback for gpufn's Kubernetes backend tests (issue 19):
# etcd, kube-apiserver, kube-controller-manager and kube-scheduler (1.20.2, built from Debian
# bookworm's source package, offline once the package is fetched), and gpufn's test node agent
# (`gpufn-node-agent`) standing in for kubelets on N simulated GPU nodes.
#
#   scripts/kube-testbed.sh build                         # build (or reuse) the binaries
#   scripts/kube-testbed.sh up [--nodes N] [--gpus-per-node G] [--dir DIR]
#   scripts/kube-testbed.sh env [--dir DIR]               # the export line again
#   scripts/kube-testbed.sh down [--dir DIR]              # stops exactly what `up` started
#
# The binaries are cached outside the repository, keyed by the package version:
# ${GPUFN_KUBE_CACHE:-~/.cache/gpufn-kube}/1.20.2/bin.
set -euo pipefail
KUBE_VERSION=1.20.2
CACHE="${GPUFN_KUBE_CACHE:-$HOME/.cache/gpufn-kube}/$KUBE_VERSION"
BIN="$CACHE/bin"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DIR="${GPUFN_KUBE_DIR:-/tmp/gpufn-kube-testbed}"
NODES=2
GPUS=1

die() { echo "kube-testbed: $*" >&2; exit 1; }

have_binaries() {
  for b in kube-apiserver kube-controller-manager kube-scheduler; do
    [ -x "$BIN/$b" ] || return 1
  done
}

install_packages() {
  local need=()
  command -v go >/dev/null || need+=(golang-go)
  command -v etcd >/dev/null || need+=(etcd-server)
  command -v rsync >/dev/null || need+=(rsync)
  command -v jq >/dev/null || need+=(jq)
  command -v openssl >/dev/null || need+=(openssl)
  command -v kubectl >/dev/null || need+=(kubernetes-client)
  command -v dpkg-source >/dev/null || need+=(dpkg-dev)
  [ -d /usr/share/gocode/src/github.com/modern-go/reflect2 ] || need+=(golang-github-modern-go-reflect2-dev)
  [ -d /usr/share/gocode/src/github.com/json-iterator/go ] || need+=(golang-github-json-iterator-go-dev)
  if ((${#need[@]})); then
    [ "$(id -u)" = 0 ] || die "needs: ${need[*]} (apt-get install, as root)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  fi
}

build() {
  install_packages
  if have_binaries; then
    return 0
  fi
  local work="$CACHE/src"
  rm -rf "$work" && mkdir -p "$work"
  # Debian's sources list carries only binary packages: add the matching deb-src once.
  if ! apt-get source --print-uris kubernetes >/dev/null 2>&1; then
    [ "$(id -u)" = 0 ] || die "add a deb-src line for bookworm, or run as root"
    sed 's/^Types: deb$/Types: deb-src/' /etc/apt/sources.list.d/debian.sources \
      >/etc/apt/sources.list.d/gpufn-deb-src.sources
    apt-get update -qq
  fi
  (cd "$work" && apt-get source -qq "kubernetes=$KUBE_VERSION*" >/dev/null 2>&1 ||
    apt-get source -qq kubernetes >/dev/null)
  local tree
  tree="$(find "$work" -maxdepth 1 -mindepth 1 -type d -name 'kubernetes-*' | head -1)"
  [ -n "$tree" ] || die "apt-get source kubernetes gave no tree"
  # The vendored reflect2 1.0.1 crashes the apiserver under Go >= 1.18 (writing a custom
  # resource): use Debian's packaged reflect2 and json-iterator instead.
  for pkg in github.com/modern-go/reflect2 github.com/json-iterator/go; do
    rm -rf "$tree/vendor/$pkg"
    cp -r "/usr/share/gocode/src/$pkg" "$tree/vendor/$pkg"
    find "$tree/vendor/$pkg" -name '*_test.go' -delete
  done
  (cd "$tree" && KUBE_GIT_VERSION="v$KUBE_VERSION" KUBE_GIT_TREE_STATE=clean \
    make WHAT="cmd/kube-apiserver cmd/kube-controller-manager cmd/kube-scheduler" >"$CACHE/build.log" 2>&1) ||
    die "build failed: see $CACHE/build.log"
  mkdir -p "$BIN"
  for b in kube-apiserver kube-controller-manager kube-scheduler; do
    cp "$tree/_output/bin/$b" "$BIN/$b"
  done
  rm -rf "$work"
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Waits (up to $2 seconds) until command $1 succeeds.
wait_until() {
  local i
  for ((i = 0; i < $2 * 10; i++)); do
    if eval "$1" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  return 1
}

start() { # name, command...
  local name=$1
  shift
  "$@" >"$DIR/$name.log" 2>&1 &
  echo $! >"$DIR/$name.pid"
}

agent_binary() {
  local bin="${GPUFN_NODE_AGENT:-$ROOT/target/debug/gpufn-node-agent}"
  if [ ! -x "$bin" ]; then
    (cd "$ROOT" && cargo build -q -p gpufn-node-agent) || die "cannot build gpufn-node-agent"
  fi
  echo "$bin"
}

up() {
  build
  [ ! -f "$DIR/kubeconfig" ] || die "already up in $DIR (scripts/kube-testbed.sh down --dir $DIR)"
  mkdir -p "$DIR"
  local etcd_port peer_port api_port token
  etcd_port=$(free_port)
  peer_port=$(free_port)
  api_port=$(free_port)
  token=$(openssl rand -hex 16)
  # A CA and a serving certificate for 127.0.0.1, the service-account signing key, and one admin
  # token (the testbed's only user; gpufn's own account is made by deploy/kubernetes).
  (
    cd "$DIR"
    openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 30 \
      -subj /CN=gpufn-testbed-ca 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -keyout apiserver.key -out apiserver.csr \
      -subj /CN=kube-apiserver 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes.default.svc\n' >san.ext
    openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial \
      -out apiserver.crt -days 30 -extfile san.ext 2>/dev/null
    openssl genrsa -out sa.key 2048 2>/dev/null
    echo "$token,admin,admin,system:masters" >tokens.csv
  )
  cat >"$DIR/kubeconfig" <<KC
apiVersion: v1
kind: Config
clusters:
- name: testbed
  cluster:
    server: https://127.0.0.1:$api_port
    certificate-authority-data: $(base64 -w0 "$DIR/ca.crt")
users:
- name: admin
  user:
    token: $token
contexts:
- name: testbed
  context: {cluster: testbed, user: admin}
current-context: testbed
KC
  start etcd etcd --name testbed --data-dir "$DIR/etcd" \
    --listen-client-urls "http://127.0.0.1:$etcd_port" \
    --advertise-client-urls "http://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$peer_port" \
    --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
    --initial-cluster "testbed=http://127.0.0.1:$peer_port"
  start apiserver "$BIN/kube-apiserver" --etcd-servers "http://127.0.0.1:$etcd_port" \
    --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$api_port" \
    --insecure-port 0 --tls-cert-file "$DIR/apiserver.crt" \
    --tls-private-key-file "$DIR/apiserver.key" --client-ca-file "$DIR/ca.crt" \
    --token-auth-file "$DIR/tokens.csv" --authorization-mode Node,RBAC \
    --service-account-issuer https://kubernetes.default.svc \
    --service-account-key-file "$DIR/sa.key" --service-account-signing-key-file "$DIR/sa.key" \
    --service-cluster-ip-range 10.96.0.0/24 --endpoint-reconciler-type none
  wait_until "kubectl --kubeconfig '$DIR/kubeconfig' get --raw /readyz" 60 ||
    die "the apiserver did not come up: $(tail -5 "$DIR/apiserver.log")"
  start controller-manager "$BIN/kube-controller-manager" --kubeconfig "$DIR/kubeconfig" \
    --port 0 --secure-port 0 --leader-elect=false \
    --service-account-private-key-file "$DIR/sa.key" --root-ca-file "$DIR/ca.crt" \
    --use-service-account-credentials=false --controllers '*,-nodeipam,-service,-route,-cloud-node-lifecycle'
  start scheduler "$BIN/kube-scheduler" --kubeconfig "$DIR/kubeconfig" --port 0 \
    --secure-port 0 --leader-elect=false
  start node-agent "$(agent_binary)" --kubeconfig "$DIR/kubeconfig" --nodes "$NODES" \
    --gpus-per-node "$GPUS" --state-dir "$DIR/agent"
  wait_until "[ \$(kubectl --kubeconfig '$DIR/kubeconfig' get nodes --no-headers 2>/dev/null | grep -c ' Ready') -ge $NODES ]" 60 ||
    die "the nodes did not become Ready: $(tail -5 "$DIR/node-agent.log")"
  env_line
}

env_line() {
  [ -f "$DIR/kubeconfig" ] || die "not up (no $DIR/kubeconfig)"
  echo "export KUBECONFIG=$DIR/kubeconfig"
}

down() {
  local name pid
  # Reverse order: the agent stops its containers before the control plane goes.
  for name in node-agent scheduler controller-manager apiserver etcd; do
    [ -f "$DIR/$name.pid" ] || continue
    pid=$(cat "$DIR/$name.pid")
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid" 2>/dev/null || true
      wait_until "! kill -0 $pid" 20 || kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$DIR/$name.pid"
  done
  rm -rf "$DIR"
}

cmd="${1:-}"
[ $# -eq 0 ] || shift
while [ $# -gt 0 ]; do
  case "$1" in
    --nodes) NODES=$2; shift 2 ;;
    --gpus-per-node) GPUS=$2; shift 2 ;;
    --dir) DIR=$2; shift 2 ;;
    *) die "unknown option $1" ;;
  esac
done
case "$cmd" in
  build) build ;;
  up) up ;;
  env) env_line ;;
  down) down ;;
  *) die "usage: $0 build|up|env|down [--nodes N] [--gpus-per-node G] [--dir DIR]" ;;
esac
