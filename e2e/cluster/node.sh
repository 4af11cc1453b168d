#!/usr/bin/env bash
# The real node: kubelet, containerd (runc, CNI bridge), kube-proxy and
# kube-router's network policy controller, beside the kwok nodes.
#
#   node.sh check          exits non-zero naming each missing prerequisite
#   node.sh network        makes the node's network namespace and link (before the API server starts)
#   node.sh up             starts the node's processes and waits until the Node is Ready
#   node.sh down           stops everything the node made and removes it
#   node.sh sweep          removes the real nodes of clusters whose state is gone
#
# Everything the node makes lives in places that go away as a whole, so that
# `down` leaves nothing behind even after a `kill -9` of the run:
# - a network namespace `aleph-n<N>` holding the node's address, the pods'
#   bridge, every iptables/ipset rule of kube-proxy, kube-router and kubelet;
#   deleting it removes them all. The host only has the other end of the link
#   (`aleph-h<N>`) and a route to the pods, both gone with the namespace;
# - a private mount namespace for the node's processes: containerd's
#   snapshots, the pods' volumes and network namespace files are mounted
#   there and vanish when its last process exits;
# - the cgroup tree `aleph/<N>` (every controller): the node's daemons, their
#   shims and every container run under it, so `down` finds and kills them all;
# - files under $ALEPH_STATE/node (containerd's root and state, kubelet's
#   root, logs), removed with the state directory.
# Addresses: link 10.210.N.0/30 (host .1, node .2), pods 10.211.N.0/24 (bridge
# .1). The node's namespace has no default route: pods reach the host's link
# address, each other and Services, and nothing beyond this machine; so do
# processes run in the namespace (`ip netns exec aleph-nN`), through a route
# of the Service range to loopback.
set -Eeuo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

NODE_DIR=$ALEPH_STATE/node
REGISTRY_DIR=${ALEPH_NODE_REGISTRY:-/run/aleph-nodes}
CGROUP_ROOT=/sys/fs/cgroup

cmd=${1:-}

# --- prerequisites -----------------------------------------------------------

# Prints one line per missing prerequisite.
missing_prerequisites() {
  [ "$(id -u)" -eq 0 ] || echo "root (the real node makes network namespaces, mounts and cgroups; run as root or set ALEPH_REAL_NODE=0 to run without it)"
  local c
  for c in containerd containerd-shim-runc-v2 runc ctr iptables ip6tables ipset ip unshare nsenter mount conntrack; do
    command -v "$c" >/dev/null 2>&1 || echo "the command $c (Debian packages: containerd runc iptables ipset iproute2 util-linux mount conntrack; scripts/setup.sh installs them)"
  done
  for c in bridge host-local loopback portmap; do
    [ -x "$CNI_BIN_DIR/$c" ] || echo "the CNI plugin $CNI_BIN_DIR/$c (Debian package containernetworking-plugins; scripts/setup.sh installs it)"
  done
  for c in kubelet kube-proxy kube-router; do
    [ -x "$(bin_path "$c")" ] || echo "the binary $c (run e2e/cluster/build.sh)"
  done
  local ctl
  for ctl in $NODE_CGROUP_CONTROLLERS; do
    [ -d "$CGROUP_ROOT/$ctl" ] || echo "the cgroup v1 hierarchy $CGROUP_ROOT/$ctl"
  done
  [ -d /proc/sys/net/bridge ] || echo "the kernel's bridge netfilter (/proc/sys/net/bridge: modprobe br_netfilter)"
  grep -qw overlay /proc/filesystems || echo "the kernel's overlay filesystem"
  for image in "$PAUSE_IMAGE_TAR"; do
    [ -f "$image" ] || echo "the pause image $image (run e2e/images/build.sh)"
  done
}

check() {
  local missing
  missing=$(missing_prerequisites)
  if [ -n "$missing" ]; then
    log "the real node cannot start; missing:"
    sed 's/^/    - /' <<<"$missing" >&2
    return 1
  fi
}

# --- the node's index and addresses ------------------------------------------

# Claims a free index N for this state directory, recorded both in
# $NODE_DIR/index and in $REGISTRY_DIR/N (which names the owning state, so a
# sweep can find the nodes of clusters that are gone).
claim_index() {
  mkdir -p "$REGISTRY_DIR" "$NODE_DIR"
  exec 7>"$REGISTRY_DIR/.lock"
  flock 7
  local n
  for ((n = 1; n < 250; n++)); do
    [ -e "$REGISTRY_DIR/$n" ] && continue
    ip netns list 2>/dev/null | grep -qw "aleph-n$n" && continue
    ip link show "aleph-h$n" >/dev/null 2>&1 && continue
    echo "$ALEPH_STATE" >"$REGISTRY_DIR/$n"
    echo "$n" >"$NODE_DIR/index"
    flock -u 7
    echo "$n"
    return 0
  done
  flock -u 7
  log "no free real-node index (1-249) in $REGISTRY_DIR"
  return 1
}

node_index() { cat "$NODE_DIR/index" 2>/dev/null; }

# --- cgroups -----------------------------------------------------------------

# dir: makes the cgroup dir (relative to each controller's root) in every
# controller; cpuset children need their parent's cpus and mems before a task
# may join them.
make_cgroup() {
  local rel=$1 ctl path part acc
  for ctl in $NODE_CGROUP_CONTROLLERS; do
    acc=$CGROUP_ROOT/$ctl
    for part in ${rel//\// }; do
      path=$acc/$part
      mkdir -p "$path"
      if [ "$ctl" = cpuset ]; then
        [ -n "$(cat "$path/cpuset.cpus")" ] || cat "$acc/cpuset.cpus" >"$path/cpuset.cpus"
        [ -n "$(cat "$path/cpuset.mems")" ] || cat "$acc/cpuset.mems" >"$path/cpuset.mems"
      fi
      acc=$path
    done
  done
}

# pid dir: moves the process into the cgroup dir in every controller.
join_cgroup() {
  local pid=$1 rel=$2 ctl
  for ctl in $NODE_CGROUP_CONTROLLERS; do
    echo "$pid" >"$CGROUP_ROOT/$ctl/$rel/cgroup.procs"
  done
}

# dir: the pids of every process in the cgroup tree (read from the pids controller).
cgroup_tree_pids() {
  local root=$CGROUP_ROOT/pids/$1
  [ -d "$root" ] || return 0
  find "$root" -name cgroup.procs -exec cat {} + 2>/dev/null | sort -un
}

# dir: kills every process of the tree, until none is left (a process may fork
# while we read), then removes the cgroup dirs from the bottom up.
kill_cgroup_tree() {
  local rel=$1 deadline=$((SECONDS + 30)) pids ctl
  while pids=$(cgroup_tree_pids "$rel") && [ -n "$pids" ]; do
    # shellcheck disable=SC2086 # one pid per word
    kill -KILL $pids 2>/dev/null || true
    if [ $SECONDS -ge $deadline ]; then
      log "processes still in cgroup $rel after 30s: $(echo $pids)"
      return 1
    fi
    sleep 0.2
  done
  # runc also makes each container's cgroup in the cgroup v2 hierarchy of a
  # hybrid host (`unified`), though no controller of the node uses it.
  for ctl in $NODE_CGROUP_CONTROLLERS unified; do
    [ -d "$CGROUP_ROOT/$ctl/$rel" ] || continue
    # A cgroup dir is removed by rmdir only; the files in it are not real.
    find "$CGROUP_ROOT/$ctl/$rel" -depth -type d -exec rmdir {} \; 2>/dev/null || true
    if [ -d "$CGROUP_ROOT/$ctl/$rel" ]; then
      sleep 0.5
      find "$CGROUP_ROOT/$ctl/$rel" -depth -type d -exec rmdir {} \; || true
    fi
    rmdir "$CGROUP_ROOT/$ctl/aleph" 2>/dev/null || true
  done
}

# --- network -----------------------------------------------------------------

network() {
  check
  local n
  n=$(claim_index)
  local ns=aleph-n$n host_if=aleph-h$n
  log "real node $n: network namespace $ns, link $host_if (10.210.$n.1 <-> 10.210.$n.2), pods 10.211.$n.0/24"
  ip netns add "$ns"
  ip link add "$host_if" type veth peer name eth0 netns "$ns"
  ip addr add "10.210.$n.1/30" dev "$host_if"
  ip link set "$host_if" up
  ip -n "$ns" addr add "10.210.$n.2/30" dev eth0
  ip -n "$ns" link set eth0 up
  ip -n "$ns" link set lo up
  ip route add "10.211.$n.0/24" via "10.210.$n.2" dev "$host_if"
  # Processes of the node itself (what `ip netns exec aleph-nN` runs) reach
  # Services as a node's do: kube-proxy's DNAT happens after the route lookup,
  # which needs some route to the ClusterIP range. Loopback takes it (this
  # kernel has no dummy devices), so a packet no rule rewrites is dropped
  # here rather than sent off this machine.
  ip -n "$ns" route add "$SERVICE_CIDR" dev lo
  cat >"$NODE_DIR/node.env" <<EOF
NODE_INDEX=$n
NODE_NETNS=$ns
NODE_HOST_IF=$host_if
NODE_HOST_IP=10.210.$n.1
NODE_IP=10.210.$n.2
NODE_POD_CIDR=10.211.$n.0/24
NODE_POD_GATEWAY=10.211.$n.1
EOF
}

# --- up ----------------------------------------------------------------------

# name cn org: a client certificate and a kubeconfig for a node component.
node_kubeconfig() {
  local name=$1 cn=$2 org=$3 PKI=$ALEPH_STATE/pki
  local subject="/CN=$cn"
  [ -n "$org" ] && subject="/O=$org/CN=$cn"
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$PKI/$name.key" 2>/dev/null
  openssl req -new -key "$PKI/$name.key" -subj "$subject" -out "$PKI/$name.csr" 2>/dev/null
  printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n' >"$PKI/$name.ext"
  openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial \
    -days 365 -sha256 -extfile "$PKI/$name.ext" -out "$PKI/$name.crt" 2>/dev/null
  rm -f "$PKI/$name.csr" "$PKI/$name.ext"
  cat >"$NODE_DIR/$name.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: aleph-local
  cluster:
    server: https://$NODE_HOST_IP:$APISERVER_PORT
    certificate-authority: $PKI/ca.crt
users:
- name: $name
  user:
    client-certificate: $PKI/$name.crt
    client-key: $PKI/$name.key
contexts:
- name: aleph-local
  context: {cluster: aleph-local, user: $name}
current-context: aleph-local
EOF
}

write_configs() {
  local d=$NODE_DIR
  warn_if_disk_low "$d"
  mkdir -p "$d"/{containerd/root,containerd/state,cni/net.d,kubelet,pod-logs,container-logs,volumes,logs}
  cat >"$d/containerd/config.toml" <<EOF
version = 2
root = "$d/containerd/root"
state = "$d/containerd/state"
[grpc]
  address = "$d/containerd/containerd.sock"
[ttrpc]
  address = "$d/containerd/containerd.sock.ttrpc"
[debug]
  level = "warn"
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "$d/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  # The sandbox may not lower oom_score_adj: without this every pod sandbox fails.
  restrict_oom_score_adj = true
  enable_unprivileged_ports = true
  enable_unprivileged_icmp = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "$CNI_BIN_DIR"
    conf_dir = "$d/cni/net.d"
EOF
  cat >"$d/cni/net.d/10-aleph.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "aleph",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "cni0",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$d/cni/ipam",
        "ranges": [[{"subnet": "$NODE_POD_CIDR", "gateway": "$NODE_POD_GATEWAY"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
  cat >"$d/kubelet-config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# This machine has cgroup v1 only.
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: /aleph/$NODE_INDEX/pods
containerRuntimeEndpoint: unix://$d/containerd/containerd.sock
address: $NODE_IP
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $ALEPH_STATE/pki/ca.crt}
authorization: {mode: Webhook}
clusterDomain: cluster.local
clusterDNS: [$CLUSTER_DNS_IP]
resolvConf: $d/resolv.conf
failSwapOn: false
# Images cannot be pulled again here: never collect them (the threshold
# alone is not enough: a disk that is all but full reaches 100 %, and
# containerd 1.6 does not pin the sandbox image).
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
imageMinimumGCAge: 876000h
evictionHard:
  memory.available: 100Mi
  nodefs.available: 1%
  imagefs.available: 1%
  nodefs.inodesFree: 1%
podLogsDir: $d/pod-logs
serializeImagePulls: false
maxPods: 110
registerNode: true
registerWithTaints:
- {key: aleph.dev/real-node, value: "true", effect: NoSchedule}
shutdownGracePeriod: 0s
protectKernelDefaults: false
localStorageCapacityIsolation: true
EOF
  # Pods with dnsPolicy Default get no resolver beyond this machine.
  echo "options ndots:1" >"$d/resolv.conf"
  cat >"$d/kube-proxy-config.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $d/kube-proxy.kubeconfig}
hostnameOverride: $REAL_NODE_NAME
bindAddress: $NODE_IP
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
clusterCIDR: $NODE_POD_CIDR
mode: iptables
# The namespace's conntrack limits are the host's: leave them as they are.
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
iptables: {localhostNodePorts: false}
EOF
  node_kubeconfig kubelet "system:node:$REAL_NODE_NAME" system:nodes
  node_kubeconfig kube-proxy system:kube-proxy ""
  node_kubeconfig kube-router system:aleph:kube-router ""
}

# The processes of the node, in start order.
NODE_DAEMONS=(containerd kubelet kube-proxy kube-router)

daemon_pid() {
  local name=$1 file=$NODE_DIR/pids/$1.pid pid
  [ -f "$file" ] || return 1
  pid=$(cat "$file")
  kill -0 "$pid" 2>/dev/null || return 1
  echo "$pid"
}

fail_daemon() {
  local name=$1 why=$2
  log "real node: $name $why; the end of $NODE_DIR/logs/$name.log:"
  tail -n 40 "$NODE_DIR/logs/$name.log" >&2 || true
  return 1
}

up() {
  source "$ALEPH_STATE/ports.env"
  source "$NODE_DIR/node.env"
  local started=$SECONDS
  write_configs
  make_cgroup "aleph/$NODE_INDEX/daemons"
  make_cgroup "aleph/$NODE_INDEX/pods"
  mkdir -p "$NODE_DIR/pids"
  # The node's init runs in the node's network namespace and a private mount
  # namespace of its own, inside the node's cgroup: it sets the namespace up
  # and starts the daemons, which inherit all three.
  (
    join_cgroup "$BASHPID" "aleph/$NODE_INDEX/daemons"
    exec nsenter --net="/run/netns/$NODE_NETNS" \
      unshare --mount --propagation private \
      env NODE_DIR="$NODE_DIR" ALEPH_STATE="$ALEPH_STATE" \
      "$CLUSTER_DIR/node-init.sh" >"$NODE_DIR/logs/node-init.log" 2>&1 </dev/null 7>&- 8>&- 9>&-
  ) &
  echo $! >"$NODE_DIR/pids/node-init.pid"

  local name deadline=$((SECONDS + ${ALEPH_START_TIMEOUT:-120}))
  for name in "${NODE_DAEMONS[@]}"; do
    until daemon_pid "$name" >/dev/null; do
      daemon_pid node-init >/dev/null || fail_daemon node-init "exited before starting $name" || return 1
      [ $SECONDS -lt $deadline ] || fail_daemon node-init "did not start $name in time" || return 1
      sleep 0.2
    done
  done
  log "real node: containerd, kubelet, kube-proxy and kube-router started ($((SECONDS - started))s)"

  local kc=("$(bin_path kubectl)" --kubeconfig "$ALEPH_STATE/kubeconfig")
  local ready=""
  until [ "$ready" = True ]; do
    ready=$("${kc[@]}" get node "$REAL_NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null || true)
    for name in "${NODE_DAEMONS[@]}"; do
      daemon_pid "$name" >/dev/null || fail_daemon "$name" "exited" || return 1
    done
    if [ $SECONDS -ge $deadline ]; then
      fail_daemon kubelet "did not make the node $REAL_NODE_NAME Ready in time" || return 1
    fi
    sleep 0.5
  done
  log "real node $REAL_NODE_NAME is Ready ($((SECONDS - started))s)"
}

# --- down --------------------------------------------------------------------

# n state: removes real node n (whose state directory was state).
teardown() {
  local n=$1 state=$2
  log "removing real node $n"
  # Daemons first, so that kubelet does not restart containers while we kill them.
  kill_cgroup_tree "aleph/$n/daemons" || true
  kill_cgroup_tree "aleph/$n" || true
  ip netns delete "aleph-n$n" 2>/dev/null || true
  ip link delete "aleph-h$n" 2>/dev/null || true
  # Mounts of the node's private mount namespace went with its last process;
  # what is left in its directory is plain files.
  if [ -n "$state" ] && [ -d "$state/node" ]; then
    if grep -q " $state/node" /proc/self/mounts; then
      log "mounts under $state/node are still present on the host:"
      grep " $state/node" /proc/self/mounts >&2
      return 1
    fi
    # The node's logs stay with the cluster's (down.sh keeps those).
    if [ -d "$state/node/logs" ] && [ -d "$state/logs" ]; then
      rm -rf "$state/logs/node"
      cp -r "$state/node/logs" "$state/logs/node" 2>/dev/null || true
      cp -r "$state/node/pod-logs" "$state/logs/node/pods" 2>/dev/null || true
    fi
    rm -rf "$state/node"
  fi
  rm -f "$REGISTRY_DIR/$n"
}

down() {
  local n
  n=$(node_index) || true
  [ -n "$n" ] || return 0
  teardown "$n" "$ALEPH_STATE"
}

# Nodes whose cluster is gone (its state directory removed or its init dead
# without a cluster to serve).
sweep() {
  [ -d "$REGISTRY_DIR" ] || return 0
  local f n state
  for f in "$REGISTRY_DIR"/*; do
    [ -f "$f" ] || continue
    n=${f##*/}
    [[ $n =~ ^[0-9]+$ ]] || continue
    state=$(cat "$f")
    if [ ! -d "$state" ] || [ "$(cat "$state/node/index" 2>/dev/null)" != "$n" ]; then
      teardown "$n" "$state"
    fi
  done
}

case $cmd in
  check) check ;;
  network) network ;;
  up) up ;;
  down) down ;;
  sweep) sweep ;;
  *) echo "usage: $0 check|network|up|down|sweep" >&2; exit 2 ;;
esac
