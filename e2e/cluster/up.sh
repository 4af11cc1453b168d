#!/usr/bin/env bash
# Starts the local control plane: etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler and the kwok controller as processes on 127.0.0.1, then
# registers the fake CPU and GPU nodes. State (certificates, data, logs, pids)
# lives in $ALEPH_STATE, outside the clone.
#
# Idempotent: when the cluster recorded in $ALEPH_STATE is up and healthy it only
# prints the export line. Anything else recorded there is stopped and replaced.
#
# Ports are picked free at random unless set: ALEPH_ETCD_PORT,
# ALEPH_ETCD_PEER_PORT, ALEPH_APISERVER_PORT, ALEPH_KCM_PORT,
# ALEPH_SCHEDULER_PORT, ALEPH_KWOK_PORT. ALEPH_START_TIMEOUT (seconds, default
# 120) bounds the wait for each component. ALEPH_APISERVER_PROFILING=true serves
# the API server's Go profiles (/debug/pprof, for cluster admins), to see
# where its CPU goes while a benchmark runs.
set -Eeuo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

timeout=${ALEPH_START_TIMEOUT:-120}
PKI=$ALEPH_STATE/pki
KUBECONFIG_FILE=$ALEPH_STATE/kubeconfig
started_at=$SECONDS

mkdir -p "$ALEPH_CACHE" "$(dirname "$ALEPH_STATE")"
exec 9>"$ALEPH_STATE.lock"
flock 9

for bin in "${COMPONENTS[@]}" kubectl; do
  if [ ! -x "$(bin_path "$bin")" ]; then
    log "$bin is not built: run $CLUSTER_DIR/build.sh first"
    exit 1
  fi
done
KUBECTL=$(bin_path kubectl)

print_export() { echo "export KUBECONFIG=$KUBECONFIG_FILE"; }

apiserver_ready() {
  [ -f "$ALEPH_STATE/ports.env" ] || return 1
  # shellcheck disable=SC1091
  source "$ALEPH_STATE/ports.env"
  curl -fsS --max-time 5 --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key" \
    "https://127.0.0.1:$APISERVER_PORT/readyz" >/dev/null 2>&1
}

cluster_healthy() {
  local name
  for name in "${COMPONENTS[@]}"; do
    component_pid "$name" >/dev/null || return 1
  done
  if real_node_enabled; then
    for name in node-init containerd kubelet kube-proxy kube-router; do
      [ -f "$ALEPH_STATE/node/pids/$name.pid" ] && kill -0 "$(cat "$ALEPH_STATE/node/pids/$name.pid")" 2>/dev/null || return 1
    done
  fi
  apiserver_ready
}

if cluster_healthy; then
  log "the local control plane is already up ($ALEPH_STATE)"
  print_export
  exit 0
fi

if [ -d "$ALEPH_STATE" ]; then
  ensure_state_dir_is_ours
  log "replacing the stale cluster state in $ALEPH_STATE"
  "$CLUSTER_DIR/node.sh" down
  stop_components
  rm -rf "$ALEPH_STATE"
fi
mkdir -p "$ALEPH_STATE"/{pki,logs,pids}

on_error() {
  log "the control plane did not start; logs are in $ALEPH_STATE/logs"
  "$CLUSTER_DIR/node.sh" down || true
  stop_components
}
trap on_error ERR

# --- ports -------------------------------------------------------------------

# Random ports are taken below the kernel's range for outgoing connections, so
# that no client socket holds one, and are checked against every socket in use.
# The ports lock, held until every component listens, keeps clusters starting at
# the same time from picking the same ports.
exec 8>"$ALEPH_CACHE/ports.lock"
flock 8
read -r ephemeral_low ephemeral_high </proc/sys/net/ipv4/ip_local_port_range
if [ "$ephemeral_low" -gt 12000 ]; then
  range_low=10000 range_size=$((ephemeral_low - 10000))
else
  range_low=$((ephemeral_high + 1)) range_size=$((65535 - ephemeral_high))
fi

port_in_use() { [ -n "$(ss -Htan "sport = :$1" 2>/dev/null)" ]; }

taken=" "
# variable fixed: sets the variable to the fixed port, or to a free one.
pick_port() {
  local var=$1 fixed=$2 port
  if [ -n "$fixed" ]; then
    if port_in_use "$fixed"; then
      log "port $fixed ($var) is already in use"
      return 1
    fi
    port=$fixed
  else
    while :; do
      port=$((range_low + (RANDOM * 32768 + RANDOM) % range_size))
      [[ $taken == *" $port "* ]] && continue
      port_in_use "$port" || break
    done
  fi
  taken+="$port "
  printf -v "$var" '%s' "$port"
}

pick_port ETCD_PORT "${ALEPH_ETCD_PORT:-}"
pick_port ETCD_PEER_PORT "${ALEPH_ETCD_PEER_PORT:-}"
pick_port APISERVER_PORT "${ALEPH_APISERVER_PORT:-}"
pick_port KCM_PORT "${ALEPH_KCM_PORT:-}"
pick_port SCHEDULER_PORT "${ALEPH_SCHEDULER_PORT:-}"
pick_port KWOK_PORT "${ALEPH_KWOK_PORT:-}"
cat >"$ALEPH_STATE/ports.env" <<EOF
ETCD_PORT=$ETCD_PORT
ETCD_PEER_PORT=$ETCD_PEER_PORT
APISERVER_PORT=$APISERVER_PORT
KCM_PORT=$KCM_PORT
SCHEDULER_PORT=$SCHEDULER_PORT
KWOK_PORT=$KWOK_PORT
EOF

# The API server listens where the real node's pods reach it: the host's end
# of the node's link (node.sh). Without a real node, on loopback.
HOST_IP=127.0.0.1
if real_node_enabled; then
  "$CLUSTER_DIR/node.sh" sweep
  "$CLUSTER_DIR/node.sh" network
  # shellcheck disable=SC1091
  source "$ALEPH_STATE/node/node.env"
  HOST_IP=$NODE_HOST_IP
else
  log "ALEPH_REAL_NODE=0: no real node; only kwok's fake nodes (pods never run)"
fi
echo "HOST_IP=$HOST_IP" >>"$ALEPH_STATE/ports.env"
SERVER=https://$HOST_IP:$APISERVER_PORT

# --- certificates ------------------------------------------------------------

ssl() { openssl "$@" 2>>"$ALEPH_STATE/logs/openssl.log"; }

# ECDSA P-256 keys: as good as RSA here, and made in a millisecond.
genkey() { ssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1"; }

# name subject: a self-signed CA.
make_ca() {
  genkey "$PKI/$1.key"
  ssl req -x509 -new -key "$PKI/$1.key" -subj "$2" -days 3650 -sha256 \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" -out "$PKI/$1.crt"
}

# ca name subject extensions: a key and a certificate signed by the CA.
issue() {
  local ca=$1 name=$2 subject=$3 ext=$4
  genkey "$PKI/$name.key"
  ssl req -new -key "$PKI/$name.key" -subj "$subject" -out "$PKI/$name.csr"
  printf '%b\n' "$ext" >"$PKI/$name.ext"
  ssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/$ca.crt" -CAkey "$PKI/$ca.key" -CAcreateserial \
    -days 365 -sha256 -extfile "$PKI/$name.ext" -out "$PKI/$name.crt"
  rm -f "$PKI/$name.csr" "$PKI/$name.ext"
}

client_ext='basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth'
serving_ext='basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth'
serving_ext+="\nsubjectAltName=IP:127.0.0.1,IP:$HOST_IP,IP:10.96.0.1,"
serving_ext+='DNS:localhost,DNS:kubernetes,DNS:kubernetes.default'
serving_ext+=',DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local'

log "making certificates"
make_ca ca "/CN=aleph-local-ca"
issue ca apiserver "/CN=kube-apiserver" "$serving_ext"
issue ca admin "/O=system:masters/CN=aleph-admin" "$client_ext"
issue ca kube-controller-manager "/CN=system:kube-controller-manager" "$client_ext"
issue ca kube-scheduler "/CN=system:kube-scheduler" "$client_ext"
issue ca kwok "/O=system:masters/CN=kwok-controller" "$client_ext"
# How the API server authenticates to kubelets (logs, exec, port-forward).
issue ca apiserver-kubelet-client "/CN=aleph:apiserver-kubelet-client" "$client_ext"
# The front proxy (request header) CA: how the API server authenticates itself
# to aggregated API servers, and what the components' delegated authentication
# expects to find in kube-system/extension-apiserver-authentication.
make_ca front-proxy-ca "/CN=aleph-local-front-proxy-ca"
issue front-proxy-ca front-proxy-client "/CN=front-proxy-client" "$client_ext"
genkey "$PKI/sa.key"
ssl pkey -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub"

# name user file: a kubeconfig with the user's certificate embedded.
kubeconfig() {
  local name=$1 file=$2
  cat >"$file" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: aleph-local
  cluster:
    server: $SERVER
    certificate-authority-data: $(base64 -w0 <"$PKI/ca.crt")
users:
- name: $name
  user:
    client-certificate-data: $(base64 -w0 <"$PKI/$name.crt")
    client-key-data: $(base64 -w0 <"$PKI/$name.key")
contexts:
- name: aleph-local
  context:
    cluster: aleph-local
    user: $name
current-context: aleph-local
EOF
  chmod 600 "$file"
}
kubeconfig admin "$KUBECONFIG_FILE"
for name in kube-controller-manager kube-scheduler kwok; do
  kubeconfig "$name" "$ALEPH_STATE/$name.kubeconfig"
done

# --- processes ---------------------------------------------------------------

# name args...: starts a component in its own session, logging to logs/<name>.log.
start() {
  local name=$1 bin
  shift
  bin=$(bin_path "$name")
  local wrap=()
  if [ "$name" = kube-controller-manager ] && [ "$(id -u)" -eq 0 ]; then
    # The hostPath provisioner writes its volumes under /tmp/hostpath_pv: in a
    # mount namespace of its own, that is this cluster's $ALEPH_STATE/volumes
    # (the real node binds the same directory there), so they go with the state.
    mkdir -p "$ALEPH_STATE/volumes" /tmp/hostpath_pv
    wrap=(unshare --mount --propagation private sh -c 'mount --bind "$0" /tmp/hostpath_pv && exec "$@"' "$ALEPH_STATE/volumes")
  fi
  # fds 8 and 9 hold this script's locks: the daemons must not keep them.
  setsid "${wrap[@]}" "$bin" "$@" >"$ALEPH_STATE/logs/$name.log" 2>&1 </dev/null 8>&- 9>&- &
  local pid=$!
  echo "$pid" >"$ALEPH_STATE/pids/$name.pid"
  # Until the forked shell has exec'd the binary, the pid's command line is
  # still this script's, and component_pid would take it for an exited
  # component: wait (at most 10 s) for the exec.
  local i
  for ((i = 0; i < 100; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    component_pid "$name" >/dev/null && break
    sleep 0.1
  done
}

# name check...: waits until the check command succeeds; on timeout or when the
# process exits, prints the end of its log and fails.
wait_healthy() {
  local name=$1 deadline=$((SECONDS + timeout))
  shift
  until "$@" >/dev/null 2>&1; do
    if component_gone "$name"; then
      log "$name exited; the end of $ALEPH_STATE/logs/$name.log:"
      tail -n 40 "$ALEPH_STATE/logs/$name.log" >&2
      return 1
    fi
    if [ $SECONDS -ge $deadline ]; then
      log "$name not healthy after ${timeout}s; the end of $ALEPH_STATE/logs/$name.log:"
      tail -n 40 "$ALEPH_STATE/logs/$name.log" >&2
      return 1
    fi
    sleep 0.25
  done
  log "$name is healthy ($((SECONDS - started_at))s)"
}

https_ok() { curl -fsSk --max-time 2 "$@"; }

log "starting etcd on 127.0.0.1:$ETCD_PORT"
start etcd \
  --name=aleph \
  --data-dir="$ALEPH_STATE/etcd" \
  --listen-client-urls="http://127.0.0.1:$ETCD_PORT" \
  --advertise-client-urls="http://127.0.0.1:$ETCD_PORT" \
  --listen-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
  --initial-advertise-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
  --initial-cluster="aleph=http://127.0.0.1:$ETCD_PEER_PORT" \
  --initial-cluster-state=new \
  --unsafe-no-fsync \
  --log-level=warn
wait_healthy etcd curl -fsS --max-time 2 "http://127.0.0.1:$ETCD_PORT/health"

# The `kubernetes` Service's endpoint is the API server's own address, which
# only makes sense when pods can reach it.
endpoint_reconciler=none
real_node_enabled && endpoint_reconciler=lease
log "starting kube-apiserver on $SERVER"
start kube-apiserver \
  --etcd-servers="http://127.0.0.1:$ETCD_PORT" \
  --bind-address="$HOST_IP" \
  --advertise-address="$HOST_IP" \
  --secure-port="$APISERVER_PORT" \
  --tls-cert-file="$PKI/apiserver.crt" \
  --tls-private-key-file="$PKI/apiserver.key" \
  --client-ca-file="$PKI/ca.crt" \
  --requestheader-client-ca-file="$PKI/front-proxy-ca.crt" \
  --requestheader-allowed-names=front-proxy-client \
  --requestheader-username-headers=X-Remote-User \
  --requestheader-group-headers=X-Remote-Group \
  --requestheader-extra-headers-prefix=X-Remote-Extra- \
  --proxy-client-cert-file="$PKI/front-proxy-client.crt" \
  --proxy-client-key-file="$PKI/front-proxy-client.key" \
  --authorization-mode=Node,RBAC \
  --enable-admission-plugins=NodeRestriction,PodNodeSelector,PodTolerationRestriction \
  --service-account-issuer=https://kubernetes.default.svc.cluster.local \
  --service-account-key-file="$PKI/sa.pub" \
  --service-account-signing-key-file="$PKI/sa.key" \
  --service-cluster-ip-range=$SERVICE_CIDR \
  --endpoint-reconciler-type="$endpoint_reconciler" \
  --kubelet-client-certificate="$PKI/apiserver-kubelet-client.crt" \
  --kubelet-client-key="$PKI/apiserver-kubelet-client.key" \
  --kubelet-preferred-address-types=InternalIP \
  --allow-privileged=true \
  --profiling="${ALEPH_APISERVER_PROFILING:-false}"
wait_healthy kube-apiserver https_ok --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key" "$SERVER/readyz"

# The node objects are created before kwok starts, which then takes them over.
"$KUBECTL" --kubeconfig "$KUBECONFIG_FILE" apply -f "$CLUSTER_DIR/manifests/nodes.yaml" >/dev/null

log "starting kube-controller-manager, kube-scheduler and kwok"
cp "$CLUSTER_DIR/manifests/kwok-stages.yaml" "$ALEPH_STATE/kwok.yaml"
# The flags kube-controller-manager and kube-scheduler share, in `flags`:
# their own kubeconfig for everything, health on a local port, no leader
# election and no profiling.
component_flags() { # NAME PORT
  local kubeconfig="$ALEPH_STATE/$1.kubeconfig"
  flags=(--kubeconfig="$kubeconfig" --authentication-kubeconfig="$kubeconfig"
    --authorization-kubeconfig="$kubeconfig"
    --authorization-always-allow-paths=/healthz,/readyz,/livez,/metrics
    --bind-address=127.0.0.1 --secure-port="$2" --leader-elect=false --profiling=false)
}
component_flags kube-controller-manager "$KCM_PORT"
start kube-controller-manager "${flags[@]}" \
  --controllers='*' \
  --use-service-account-credentials=true \
  --root-ca-file="$PKI/ca.crt" \
  --service-account-private-key-file="$PKI/sa.key" \
  --cluster-signing-cert-file="$PKI/ca.crt" \
  --cluster-signing-key-file="$PKI/ca.key" \
  --enable-hostpath-provisioner=true
component_flags kube-scheduler "$SCHEDULER_PORT"
start kube-scheduler "${flags[@]}"
start kwok \
  --kubeconfig="$ALEPH_STATE/kwok.kubeconfig" \
  --config="$ALEPH_STATE/kwok.yaml" \
  --manage-all-nodes=false \
  --manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake \
  --server-address="127.0.0.1:$KWOK_PORT" \
  --cidr=10.244.0.1/16 \
  --node-ip=10.240.0.1 \
  --node-lease-duration-seconds=40
wait_healthy kube-controller-manager https_ok "https://127.0.0.1:$KCM_PORT/healthz"
wait_healthy kube-scheduler https_ok "https://127.0.0.1:$SCHEDULER_PORT/healthz"
wait_healthy kwok curl -fsS --max-time 2 "http://127.0.0.1:$KWOK_PORT/healthz"
flock -u 8

kc() { "$KUBECTL" --kubeconfig "$KUBECONFIG_FILE" "$@"; }

# description check...: waits until the check prints nothing and succeeds.
wait_until_empty() {
  local what=$1 deadline=$((SECONDS + timeout)) out
  shift
  until out=$("$@" 2>&1) && [ -z "$out" ]; do
    if [ $SECONDS -ge $deadline ]; then
      log "timed out after ${timeout}s waiting for $what: $out"
      kc get nodes -o wide >&2 || true
      return 1
    fi
    sleep 0.25
  done
  log "$what: done ($((SECONDS - started_at))s)"
}

# Each prints what is not there yet; nothing when all is well.
nodes_not_ready() {
  kc get nodes -o jsonpath='{range .items[*]}{.metadata.name}{" "}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' |
    awk '$2 != "True" { print $1 }'
}
nodes_tainted_not_ready() {
  kc get nodes -o jsonpath='{range .items[*]}{.metadata.name}{" "}{.spec.taints[*].key}{"\n"}{end}' |
    awk '/node.kubernetes.io\/(not-ready|unreachable)/ { print $1 }'
}
dns_not_ready() {
  [ "$(kc -n kube-system get deployment coredns -o jsonpath='{.status.readyReplicas}')" = 1 ] || echo "coredns not ready"
}
no_default_service_account() {
  kc get serviceaccount default --namespace default -o name >/dev/null 2>&1 || echo missing
}

log "waiting for the nodes to be Ready and schedulable"
wait_until_empty "the nodes to be Ready" nodes_not_ready
wait_until_empty "the not-ready taints to be lifted" nodes_tainted_not_ready
wait_until_empty "the default ServiceAccount" no_default_service_account

# The default StorageClass (the controller manager's hostPath provisioner).
kc apply -f "$CLUSTER_DIR/manifests/storage.yaml" >/dev/null
# The Gateway API's kinds (HTTPRoute: tenants' hostnames are checked at
# admission), from the module go/gateway-api pins (its CRDs, nothing built).
gateway_api=$(cd "$CLUSTER_DIR/go/gateway-api" && go mod download sigs.k8s.io/gateway-api &&
  go list -m -f '{{.Dir}}' sigs.k8s.io/gateway-api)
for kind in gatewayclasses gateways httproutes referencegrants; do
  kc apply --server-side -f "$gateway_api/config/crd/standard/gateway.networking.k8s.io_$kind.yaml" >/dev/null
done
kc wait --for=condition=Established --timeout=60s crd/httproutes.gateway.networking.k8s.io >/dev/null
if real_node_enabled; then
  kc apply -f "$CLUSTER_DIR/manifests/real-node.yaml" >/dev/null
  "$CLUSTER_DIR/node.sh" up
  wait_until_empty "cluster DNS to be ready" dns_not_ready
fi

trap - ERR
log "the local control plane is up in $((SECONDS - started_at))s ($ALEPH_STATE)"
print_export
