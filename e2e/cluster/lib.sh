# Shared settings for the local control plane scripts. Sourced, not run.
# shellcheck shell=bash

CLUSTER_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ALEPH_CACHE="${ALEPH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/aleph}"
ALEPH_STATE="${ALEPH_STATE:-$ALEPH_CACHE/cluster}"
export GOTOOLCHAIN=local
export GOFLAGS="${GOFLAGS:--mod=mod}"

KUBERNETES_VERSION=v1.35.4
ETCD_VERSION=v3.6.16
KWOK_VERSION=v0.8.0
HELM_VERSION=v3.21.4

# The directory holding the binaries of one pinned module: keyed by the module's
# go.mod and go.sum and by the Go version, so a change of any of them rebuilds.
module_bin_dir() {
  local module=$1 key
  key=$(cat "$CLUSTER_DIR/go/$module/go.mod" "$CLUSTER_DIR/go/$module/go.sum" | sha256sum | cut -c1-12)
  echo "$ALEPH_CACHE/bin/$module-$key-$(go env GOVERSION)"
}

# Where each binary lives after build.sh.
bin_path() {
  case $1 in
    kube-apiserver|kube-controller-manager|kube-scheduler|kubectl) echo "$(module_bin_dir kubernetes)/$1" ;;
    etcd) echo "$(module_bin_dir etcd)/etcd" ;;
    kwok) echo "$(module_bin_dir kwok)/kwok" ;;
    helm) echo "$(module_bin_dir helm)/helm" ;;
    *) echo "unknown binary $1" >&2; return 1 ;;
  esac
}

log() { printf '\033[1m==>\033[0m %s\n' "$*" >&2; }
