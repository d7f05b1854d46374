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

case "${1:-}" in
  build) build ;;
  *) die "usage: $0 build|up|env|down" ;;
esac
