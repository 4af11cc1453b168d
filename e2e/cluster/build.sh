#!/usr/bin/env bash
# Builds the local control plane's binaries from the pinned Go modules under go/
# into a cache outside the clone ($ALEPH_CACHE/bin), skipping what is built.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

k8s_ldflags() {
  local v=$KUBERNETES_VERSION minor
  minor=$(echo "$v" | cut -d. -f2)
  local flags="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    flags+=" -X $pkg.gitVersion=$v -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    flags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  echo "$flags"
}

# name module package ldflags
targets=(
  "etcd etcd go.etcd.io/etcd/server/v3 -s -w"
  "kube-apiserver kubernetes k8s.io/kubernetes/cmd/kube-apiserver K8S"
  "kube-controller-manager kubernetes k8s.io/kubernetes/cmd/kube-controller-manager K8S"
  "kube-scheduler kubernetes k8s.io/kubernetes/cmd/kube-scheduler K8S"
  "kubectl kubernetes k8s.io/kubernetes/cmd/kubectl K8S"
  "kubelet kubernetes k8s.io/kubernetes/cmd/kubelet K8S"
  "kube-proxy kubernetes k8s.io/kubernetes/cmd/kube-proxy K8S"
  "kwok kwok sigs.k8s.io/kwok/cmd/kwok -s -w"
  "coredns coredns github.com/coredns/coredns -s -w"
  "kube-router kube-router github.com/cloudnativelabs/kube-router/v2/cmd/kube-router -s -w"
  "helm helm helm.sh/helm/v3/cmd/helm -s -w"
)

total=${#targets[@]}
n=0
start_all=$SECONDS
for t in "${targets[@]}"; do
  read -r name module pkg ldflags <<<"$t"
  n=$((n + 1))
  [ "$ldflags" = K8S ] && ldflags=$(k8s_ldflags)
  out=$(bin_path "$name")
  if [ -x "$out" ]; then
    log "[$n/$total] $name: cached at $out"
    continue
  fi
  mkdir -p "$(dirname "$out")"
  log "[$n/$total] building $name from $pkg (the first build takes minutes)"
  started=$SECONDS
  # CoreDNS runs in an image with nothing but itself: a static binary.
  cgo=1
  [ "$name" = coredns ] && cgo=0
  (cd "$CLUSTER_DIR/go/$module" && CGO_ENABLED=$cgo go build -trimpath -ldflags "$ldflags" -o "$out.tmp" "$pkg")
  mv "$out.tmp" "$out"
  log "[$n/$total] $name built in $((SECONDS - started))s"
done
log "all binaries ready in $((SECONDS - start_all))s under $ALEPH_CACHE/bin"
