#!/usr/bin/env bash
# Builds the local control plane from Go modules into .cache/bin, one version stamp
# per binary. A binary whose stamp matches its pinned version is not rebuilt, so a
# warm `make binaries` only reads the stamps.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=versions.env
source "$root/hack/versions.env"
bin="$root/.cache/bin"
mkdir -p "$bin"
export GOTOOLCHAIN=local GOFLAGS=-mod=mod CGO_ENABLED=0

# Every binary built is also kept machine-wide (as the images are: docs/images.md), so a
# fresh clone copies it instead of linking it again (87 s of a clean clone's `make test`
# on the 2-core machine, warm Go caches and all). The folder is named by the recipe: this
# script, the pinned versions and modules, and the Go toolchain; any change builds anew.
machine_root=${SPOTRUN_BINARY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/spotrun/bin}
recipe=$( (cat "$root/hack/build-binaries.sh" "$root/hack/versions.env" \
  "$root"/hack/gomod/*/go.mod "$root"/hack/gomod/*/go.sum; go version) | sha256sum | cut -c1-16)
machine="$machine_root/$recipe"

stamped() { [ -x "$1/$2" ] && [ "$(cat "$1/.$2.version" 2>/dev/null)" = "$3" ]; }
# The clone's binary at its stamp, or the machine's copy of it.
stamp_ok() {
  stamped "$bin" "$1" "$2" && return 0
  stamped "$machine" "$1" "$2" || return 1
  cp -f "$machine/$1" "$bin/$1" && echo "$2" >"$bin/.$1.version"
}
# The stamp goes last, the copy through a rename: an interrupted write is never taken.
stamp() {
  mkdir -p "$machine"
  for name in "$@"; do
    echo "$STAMP" >"$bin/.$name.version"
    cp -f "$bin/$name" "$machine/.$name.$$" && mv -f "$machine/.$name.$$" "$machine/$name"
    echo "$STAMP" >"$machine/.$name.version"
  done
}
log() { printf '[binaries] %s\n' "$*" >&2; }

build_kube() {
  local names=(kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet) missing=0
  STAMP=$KUBE_VERSION
  for n in "${names[@]}"; do stamp_ok "$n" "$STAMP" || missing=1; done
  [ "$missing" = 1 ] || return 0
  log "building ${names[*]} $KUBE_VERSION"
  local minor=${KUBE_VERSION#v1.}; minor=${minor%%.*}
  local ld="-s -w" pkg
  # kwokctl and the clients read the version these print, so stamp the real release.
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X $pkg.gitVersion=$KUBE_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    ld+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  (cd "$root/hack/gomod/kube" && go build -ldflags "$ld" -o "$bin/" \
    "${names[@]/#/k8s.io/kubernetes/cmd/}")
  stamp "${names[@]}"
}

build_etcd() {
  STAMP=$ETCD_VERSION
  stamp_ok etcd "$STAMP" && return 0
  log "building etcd $ETCD_VERSION"
  (cd "$root/hack/gomod/etcd" && go build -ldflags "-s -w" -o "$bin/etcd" go.etcd.io/etcd/server/v3)
  stamp etcd
}

# Modules without replace lines install straight from the proxy at a version.
install_at() {  # name version package
  STAMP=$2
  stamp_ok "$1" "$STAMP" && return 0
  log "building $1 $2"
  GOBIN="$bin" GOFLAGS= go install -ldflags "${4:-}-s -w" "$3@$2"
  # go install names the binary after its package folder.
  [ "$(basename "$3")" = "$1" ] || mv -f "$bin/$(basename "$3")" "$bin/$1"
  stamp "$1"
}

build_tools() {
  install_at kwok "$KWOK_VERSION" sigs.k8s.io/kwok/cmd/kwok
  install_at kwokctl "$KWOK_VERSION" sigs.k8s.io/kwok/cmd/kwokctl
  install_at helm "$HELM_VERSION" helm.sh/helm/v3/cmd/helm \
    "-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION "
  install_at training-operator "$TRAINING_OPERATOR_VERSION" \
    github.com/kubeflow/training-operator/cmd/training-operator.v1
  # CoreDNS runs as a host process on the real nodes' bridge; it resolves the headless
  # Service names a PyTorchJob gives as MASTER_ADDR.
  install_at coredns "$COREDNS_VERSION" github.com/coredns/coredns
  # The OCI registry on the same bridge (plain HTTP): the nodes' containerd pulls from it.
  install_at registry "$DISTRIBUTION_VERSION" \
    github.com/distribution/distribution/v3/cmd/registry
}

# containerd has no replace lines: one `go install` builds the daemon, its runc shim (the
# nodes' config names it by path, not PATH) and ctr (the golden root's imports). No cgo:
# the btrfs/devmapper/zfs snapshotters are left out; the nodes use overlayfs.
build_containerd() {
  local names=(containerd containerd-shim-runc-v2 ctr) missing=0 n
  STAMP=$CONTAINERD_VERSION
  for n in "${names[@]}"; do stamp_ok "$n" "$STAMP" || missing=1; done
  [ "$missing" = 1 ] || return 0
  log "building ${names[*]} $CONTAINERD_VERSION"
  local mod=github.com/containerd/containerd/v2 pkgs=()
  for n in "${names[@]}"; do pkgs+=("$mod/cmd/$n@$CONTAINERD_VERSION"); done
  GOBIN="$bin" GOFLAGS= go install -tags "no_btrfs no_devmapper no_zfs" \
    -ldflags "-s -w -X $mod/version.Version=$CONTAINERD_VERSION" "${pkgs[@]}"
  stamp "${names[@]}"
}

build_kueue() {
  STAMP=$KUEUE_VERSION
  stamp_ok kueue "$STAMP" && return 0
  grep -q "sigs.k8s.io/kueue $KUEUE_VERSION" "$root/hack/gomod/kueue/go.mod" \
    || { log "hack/gomod/kueue/go.mod does not require kueue $KUEUE_VERSION"; return 1; }
  log "building kueue $KUEUE_VERSION"
  (cd "$root/hack/gomod/kueue" && go build -ldflags "-s -w" -o "$bin/kueue" sigs.k8s.io/kueue/cmd/kueue)
  stamp kueue
}

# The fake-GPU device plugin of the real nodes: our own source, stamped by its hash.
build_gpu_plugin() {
  STAMP=$(sha256sum "$root/hack/gomod/kube/cmd/spotrun-gpu-plugin/main.go" | cut -c1-16)
  stamp_ok spotrun-gpu-plugin "$STAMP" && return 0
  log "building spotrun-gpu-plugin"
  (cd "$root/hack/gomod/kube" && go build -ldflags "-s -w" -o "$bin/spotrun-gpu-plugin" ./cmd/spotrun-gpu-plugin)
  stamp spotrun-gpu-plugin
}

# Lazy pulling (the provisioner's `lazy` image mode): a containerd proxy snapshotter over
# stargz-snapshotter's service, and the converter of an OCI layout to zstd:chunked layers.
# Our own mains on the pinned library, stamped by the version and their sources.
build_stargz() {
  local names=(containerd-stargz-grpc spotrun-esgz) missing=0 n dir="$root/hack/gomod/stargz"
  grep -q "containerd/stargz-snapshotter $STARGZ_VERSION" "$dir/go.mod" \
    || { log "hack/gomod/stargz/go.mod does not require stargz-snapshotter $STARGZ_VERSION"; return 1; }
  STAMP=$STARGZ_VERSION-$(cat "$dir"/cmd/*/main.go "$dir/go.sum" | sha256sum | cut -c1-12)
  for n in "${names[@]}"; do stamp_ok "$n" "$STAMP" || missing=1; done
  [ "$missing" = 1 ] || return 0
  log "building ${names[*]} $STARGZ_VERSION"
  (cd "$dir" && go build -ldflags "-s -w" -o "$bin/" "${names[@]/#/./cmd/}")
  stamp "${names[@]}"
}

case "${1:-all}" in
  kube) build_kube ;;
  etcd) build_etcd ;;
  tools) build_tools; build_kueue ;;
  containerd) build_containerd ;;
  plugin) build_gpu_plugin ;;
  kueue) build_kueue ;;
  stargz) build_stargz ;;
  all) build_tools; build_kueue; build_etcd; build_kube; build_gpu_plugin; build_containerd
    build_stargz ;;
  *) echo "usage: $0 [all|kube|etcd|tools|plugin|kueue|containerd|stargz]" >&2; exit 2 ;;
esac
