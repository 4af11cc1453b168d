#!/usr/bin/env bash
# Brings up a working system on this machine: the local control plane, the
# CRDs, the operator (in the background) and the examples.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
"$root/scripts/setup.sh"
source "$root/e2e/cluster/lib.sh"
"$root/e2e/cluster/build.sh"
for bin in kubectl helm; do PATH="$(dirname "$(bin_path "$bin")"):$PATH"; done
"$root/e2e/cluster/up.sh" >/dev/null
export KUBECONFIG="$ALEPH_STATE/kubeconfig"
cargo build --release -p aleph-operator --quiet
kubectl apply --server-side -f crds/ >/dev/null
kubectl wait --for=condition=Established --timeout=60s -f crds/ >/dev/null
if [ -f "$ALEPH_STATE/pids/operator.pid" ] && kill -0 "$(cat "$ALEPH_STATE/pids/operator.pid")" 2>/dev/null; then
  echo "==> the operator is already running" >&2
else
  mkdir -p "$ALEPH_STATE/pids" "$ALEPH_STATE/logs"
  nohup "$root/target/release/aleph-operator" run --leader-elect=false --metrics-addr 127.0.0.1:8080 \
    >"$ALEPH_STATE/logs/operator.log" 2>&1 &
  echo $! >"$ALEPH_STATE/pids/operator.pid"
fi
kubectl apply -f examples/tenant.yaml
kubectl wait --for=condition=Ready --timeout=120s tenant/acme
for f in examples/*.yaml; do
  [ "$f" = examples/tenant.yaml ] || kubectl apply -n acme-research -f "$f"
done
kubectl get aleph -A
cat <<EOT

Aleph is running. In this shell:
  export KUBECONFIG=$KUBECONFIG
  export PATH=$(dirname "$(bin_path kubectl)"):\$PATH
  kubectl get aleph -A
Operator log: $ALEPH_STATE/logs/operator.log   Stop everything: make down
EOT
