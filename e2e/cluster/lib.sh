# Shared settings for the local control plane scripts. Sourced, not run.
# shellcheck shell=bash

CLUSTER_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ALEPH_CACHE="${ALEPH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/aleph}"
ALEPH_STATE="${ALEPH_STATE:-$ALEPH_CACHE/cluster}"
export GOTOOLCHAIN=local
export GOFLAGS="${GOFLAGS:--mod=mod}"

# shellcheck disable=SC2034 # for the scripts that source this file
declare KUBERNETES_VERSION=v1.35.4 ETCD_VERSION=v3.6.16 KWOK_VERSION=v0.8.0 HELM_VERSION=v3.22.0

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
    kube-apiserver|kube-controller-manager|kube-scheduler|kubectl|kubelet|kube-proxy) echo "$(module_bin_dir kubernetes)/$1" ;;
    etcd) echo "$(module_bin_dir etcd)/etcd" ;;
    kwok) echo "$(module_bin_dir kwok)/kwok" ;;
    helm) echo "$(module_bin_dir helm)/helm" ;;
    coredns) echo "$(module_bin_dir coredns)/coredns" ;;
    kube-router) echo "$(module_bin_dir kube-router)/kube-router" ;;
    *) echo "unknown binary $1" >&2; return 1 ;;
  esac
}

# The real node (node.sh).
REAL_NODE_NAME=aleph-real-0
# The Services' ClusterIP range (kube-apiserver --service-cluster-ip-range).
SERVICE_CIDR=10.96.0.0/16
CLUSTER_DNS_IP=10.96.0.10
CNI_BIN_DIR=${ALEPH_CNI_BIN_DIR:-/usr/lib/cni}
PAUSE_IMAGE=aleph.local/pause:3.10
# Where e2e/images/build.sh writes the images, and so where the node imports them from.
IMAGE_ARCHIVES_DIR=${ALEPH_IMAGES_DIR:-$ALEPH_CACHE/images}
PAUSE_IMAGE_TAR=$IMAGE_ARCHIVES_DIR/pause.tar
# The cgroup v1 hierarchies mounted under /sys/fs/cgroup (cpu, memory, ...).
NODE_CGROUP_CONTROLLERS=$(awk '$3 == "cgroup" && $2 ~ "^/sys/fs/cgroup/" { sub("^/sys/fs/cgroup/", "", $2); print $2 }' /proc/self/mounts 2>/dev/null | sort -u | tr '\n' ' ')
# Whether this cluster has a real node: on unless ALEPH_REAL_NODE=0.
real_node_enabled() { [ "${ALEPH_REAL_NODE:-1}" != 0 ]; }

log() { printf '\033[1m==>\033[0m %s\n' "$*" >&2; }

# The static build of the operator and the gateway (the images' binaries and
# the one `make bench` measures): glibc linked statically, and not
# position-independent. A static-pie binary relocates itself as it starts:
# it reads its whole relocation table (3 MB for the operator) and writes the
# pointers of its read-only data, pages that then stay resident, the second
# kind as private memory; at a fixed address neither happens (Go builds
# Kubernetes' own binaries that way). The operator's peak resident memory at
# N = 1,000 fell by about 7 MiB (docs/benchmarks.md).
STATIC_RUSTFLAGS='-C target-feature=+crt-static -C relocation-model=static'

# Makes the target directory $1 (shared by every clone, so that a second
# run reuses the built dependencies) safe for the clone at $2. A test embeds
# its package's path (CARGO_MANIFEST_DIR) when it is built, and cargo does
# not rebuild a workspace crate whose unchanged sources now sit at another
# path: a clone at another path would run tests that look for their files
# in the first clone. So the first use from another path (or from a path
# not recorded) cleans the workspace's own crates there; the dependencies
# stay built.
claim_target_dir() {
  local dir="$1" clone="$2" stamp="$1/.aleph-workspace" pkg
  mkdir -p "$dir"
  if [ "$(cat "$stamp" 2>/dev/null)" = "$clone" ]; then
    return
  fi
  if [ -n "$(ls -A "$dir" 2>/dev/null | grep -vx "$(basename "$stamp")")" ]; then
    log "$dir was built from $(cat "$stamp" 2>/dev/null || echo 'a path not recorded'): rebuilding the workspace's own crates for $clone"
    for pkg in $(cd "$clone" && cargo metadata --no-deps --format-version 1 --locked |
      python3 -c 'import json, sys; print(" ".join(p["name"] for p in json.load(sys.stdin)["packages"]))'); do
      (cd "$clone" && CARGO_TARGET_DIR="$dir" cargo clean --quiet -p "$pkg")
    done
  fi
  echo "$clone" >"$stamp"
}

# Says loudly when the filesystem holding PATH has little room left: the
# real node's pods, images and model files live there, and a full disk shows
# only later, as pods that cannot start.
warn_if_disk_low() {
  local dir=$1 free_kib
  mkdir -p "$dir"
  free_kib=$(df -Pk "$dir" | awk 'NR == 2 { print $4 }')
  if [ "${free_kib:-0}" -lt $((10 * 1024 * 1024)) ]; then
    printf '\033[1;31m==> WARNING: only %s MiB free under %s; the real node needs several GiB (images, models, pod logs). Free some space, or tests on the real node will time out.\033[0m\n' \
      "$((free_kib / 1024))" "$dir" >&2
  fi
}

# The components up.sh starts, in start order (down.sh stops them in reverse).
COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok)

# pid: the process's command line, arguments separated by spaces. (Read whole:
# `tr | grep -q` under pipefail fails when grep stops reading early.)
cmdline_of() {
  tr '\0' ' ' 2>/dev/null <"/proc/$1/cmdline" || true
}

# The pid recorded for a component, if its process is still the one we started
# (the recorded pid is alive and runs that component's binary).
component_pid() {
  local name=$1 file="$ALEPH_STATE/pids/$1.pid" pid
  [ -f "$file" ] || return 1
  pid=$(cat "$file")
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  [[ "$(cmdline_of "$pid")" == *"/$name "* ]] || return 1
  echo "$pid"
}

# True when a component's process is gone. One failed look is not enough: while
# a process execs its binary, /proc/<pid>/cmdline reads empty for a moment (the
# new image's arguments are not set up yet), and a component just started would
# be taken for one that exited. Three looks over half a second are.
component_gone() {
  local i
  for ((i = 0; i < 3; i++)); do
    component_pid "$1" >/dev/null && return 1
    [ $i -lt 2 ] && sleep 0.25
  done
  return 0
}

# Stops the recorded processes: TERM to each, then KILL to what is still
# running after the grace period. Only the pids in $ALEPH_STATE/pids are touched.
stop_components() {
  local grace=${ALEPH_STOP_GRACE_SECONDS:-10} name pid pids=() i
  for ((i = ${#COMPONENTS[@]} - 1; i >= 0; i--)); do
    name=${COMPONENTS[$i]}
    if pid=$(component_pid "$name"); then
      log "stopping $name (pid $pid)"
      kill -TERM "$pid" 2>/dev/null || true
      pids+=("$pid")
    fi
    rm -f "$ALEPH_STATE/pids/$name.pid"
  done
  local deadline=$((SECONDS + grace))
  for pid in "${pids[@]}"; do
    while kill -0 "$pid" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.2; done
    if kill -0 "$pid" 2>/dev/null; then
      log "pid $pid still running after ${grace}s, sending KILL"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  done
}

# Refuses to go on when $ALEPH_STATE exists but does not look like a state
# directory these scripts made, so that a wrong setting never deletes other files.
ensure_state_dir_is_ours() {
  [ -d "$ALEPH_STATE" ] || return 0
  if [ -z "$(ls -A "$ALEPH_STATE")" ] || [ -d "$ALEPH_STATE/pids" ] || [ -f "$ALEPH_STATE/ports.env" ]; then
    return 0
  fi
  log "$ALEPH_STATE is not empty and was not made by up.sh; refusing to touch it"
  exit 1
}
