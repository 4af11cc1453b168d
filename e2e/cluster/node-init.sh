#!/usr/bin/env bash
# The real node's init, started by node.sh inside the node's network namespace
# and a private mount namespace: prepares both, starts containerd (and imports
# the project's images into it), kubelet, kube-proxy and kube-router, and waits.
# Every mount made here belongs to the private namespace and goes away with its
# last process.
set -Eeuo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$ALEPH_STATE/ports.env"
source "$NODE_DIR/node.env"
log "node init $$ in network namespace $NODE_NETNS"

# This namespace's own view of /sys (its network devices), with the cgroup
# hierarchies mounted again on top, as the host has them.
mount -t sysfs sysfs /sys
mount -t tmpfs -o mode=755 cgroup /sys/fs/cgroup
for ctl in $NODE_CGROUP_CONTROLLERS; do
  mkdir -p "/sys/fs/cgroup/$ctl"
  case $ctl in
    systemd) mount -t cgroup -o none,name=systemd cgroup /sys/fs/cgroup/systemd ;;
    *) mount -t cgroup -o "$ctl" cgroup "/sys/fs/cgroup/$ctl" ;;
  esac
done
if grep -qw cgroup2 /proc/filesystems && [ -d /sys/fs/cgroup/unified ] || mkdir -p /sys/fs/cgroup/unified; then
  mount -t cgroup2 cgroup2 /sys/fs/cgroup/unified 2>/dev/null || rmdir /sys/fs/cgroup/unified
fi

# Paths containerd, runc, the CNI plugins and kubelet use whatever their
# configuration says: private to this node.
for dir in /run/containerd /run/netns /run/runc /var/lib/cni; do
  mkdir -p "$dir"
  mount -t tmpfs -o mode=755 tmpfs "$dir"
done
mkdir -p "$NODE_DIR/varlog" "$ALEPH_STATE/volumes" /var/lib/kubelet /tmp/hostpath_pv
mount --bind "$NODE_DIR/kubelet" /var/lib/kubelet
mount --bind "$NODE_DIR/varlog" /var/log
# Volumes of the controller manager's hostPath provisioner (see up.sh).
mount --bind "$ALEPH_STATE/volumes" /tmp/hostpath_pv

sysctl -qw net.ipv4.ip_forward=1
sysctl -qw net.bridge.bridge-nf-call-iptables=1
sysctl -qw net.bridge.bridge-nf-call-ip6tables=1

# name args...: starts a daemon in the background, logging to the node's logs.
run() {
  local name=$1
  shift
  "$@" >"$NODE_DIR/logs/$name.log" 2>&1 </dev/null &
  echo $! >"$NODE_DIR/pids/$name.pid"
  log "started $name (pid $!)"
}

run containerd containerd --config "$NODE_DIR/containerd/config.toml"
sock=$NODE_DIR/containerd/containerd.sock
for _ in $(seq 1 100); do
  ctr -a "$sock" version >/dev/null 2>&1 && break
  sleep 0.1
done
ctr -a "$sock" version >/dev/null

# The project's images (e2e/images/build.sh): the pause image first, the
# others after; each import is a no-op when the same digest is there.
import_images() {
  local tar
  for tar in "$@"; do
    [ -f "$tar" ] || continue
    ctr -a "$sock" -n k8s.io images import "$tar" >>"$NODE_DIR/logs/images.log" 2>&1 ||
      { log "importing $tar failed; see $NODE_DIR/logs/images.log"; return 1; }
  done
}
import_images "$PAUSE_IMAGE_TAR"

run kubelet "$(bin_path kubelet)" \
  --config="$NODE_DIR/kubelet-config.yaml" \
  --kubeconfig="$NODE_DIR/kubelet.kubeconfig" \
  --hostname-override="$REAL_NODE_NAME" \
  --node-ip="$NODE_IP" \
  --node-labels="aleph.dev/node-pool=real,aleph.dev/real-node=true" \
  --v=1
run kube-proxy "$(bin_path kube-proxy)" --config="$NODE_DIR/kube-proxy-config.yaml" --v=1
# kube-router finds its node by name: wait until kubelet has registered it.
for _ in $(seq 1 600); do
  "$(bin_path kubectl)" --kubeconfig "$NODE_DIR/kube-router.kubeconfig" get node "$REAL_NODE_NAME" \
    -o name >/dev/null 2>&1 && break
  sleep 0.2
done
run kube-router "$(bin_path kube-router)" \
  --kubeconfig="$NODE_DIR/kube-router.kubeconfig" \
  --hostname-override="$REAL_NODE_NAME" \
  --run-firewall=true --run-router=false --run-service-proxy=false \
  --health-port=20244 --metrics-port=0 \
  --v=1

# images.tsv: name, reference, digest, archive (e2e/images/build.sh).
mapfile -t archives < <(awk -F'\t' '$1 != "pause" { print $4 }' "$IMAGE_ARCHIVES_DIR/images.tsv" 2>/dev/null)
import_images "${archives[@]}"
log "images imported"
touch "$NODE_DIR/images-imported"

# Stay while the daemons run: a daemon that exits is reported by node.sh.
wait
