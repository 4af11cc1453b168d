#!/usr/bin/env bash
# Runs a command against the local control plane:
#   e2e/cluster/with-cluster.sh cargo test -p aleph-e2e
# builds the binaries (cached after the first time), starts the cluster, puts
# the binaries (kubectl, helm, ...) on PATH, exports KUBECONFIG, runs the command
# and always stops the cluster afterwards. Exits with the command's status.
#
# Each run gets a cluster of its own (state in $ALEPH_CACHE/runs/<pid>, random
# ports), so runs at the same time do not stop each other's cluster; set
# ALEPH_STATE to use (and afterwards stop) the cluster of up.sh instead.
# ALEPH_USE_EXISTING_CLUSTER=1 with a KUBECONFIG that reaches a cluster (kind,
# for example) uses that cluster instead: nothing is started or stopped.
# ALEPH_KEEP_CLUSTER=1 leaves the local control plane running afterwards.
set -euo pipefail
own_state=false
if [ -z "${ALEPH_STATE:-}" ]; then
  own_state=true
fi
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
if $own_state; then
  ALEPH_STATE=$ALEPH_CACHE/runs/$$
fi
export ALEPH_STATE

if [ $# -eq 0 ]; then
  echo "usage: $0 COMMAND [ARGS...]" >&2
  exit 2
fi

"$CLUSTER_DIR/build.sh"
# The images the real node runs (no registry: built here, imported by node.sh).
if real_node_enabled && [ "${ALEPH_USE_EXISTING_CLUSTER:-}" != 1 ]; then
  "$CLUSTER_DIR/../images/build.sh"
fi
for bin in kubectl helm kwok kube-apiserver etcd; do
  dir=$(dirname "$(bin_path "$bin")")
  case ":$PATH:" in *":$dir:"*) ;; *) PATH="$dir:$PATH" ;; esac
done
export PATH

use_existing=false
if [ "${ALEPH_USE_EXISTING_CLUSTER:-}" = 1 ] && [ -n "${KUBECONFIG:-}" ]; then
  if kubectl version --request-timeout=10s >/dev/null 2>&1; then
    use_existing=true
    log "using the existing cluster of KUBECONFIG=$KUBECONFIG"
  else
    log "KUBECONFIG=$KUBECONFIG does not reach a cluster; starting the local control plane"
  fi
fi

if ! $use_existing; then
  # Clusters of earlier runs that could not clean up (killed): their run is gone.
  for dir in "$ALEPH_CACHE"/runs/*; do
    [ -d "$dir" ] || continue
    pid=${dir##*/}
    # Alive means still running this script (not gone, a zombie or another program).
    if [[ $pid =~ ^[0-9]+$ ]] && [ "$pid" != $$ ] &&
      [[ "$(cmdline_of "$pid")" != *with-cluster.sh* ]]; then
      log "removing the cluster of an earlier run ($dir)"
      ALEPH_STATE=$dir "$CLUSTER_DIR/down.sh" || true
    fi
  done
  # shellcheck disable=SC2317 # run by the EXIT trap
  cleanup() {
    if [ "${ALEPH_KEEP_CLUSTER:-}" = 1 ]; then
      log "leaving the local control plane running: $CLUSTER_DIR/down.sh stops it"
    else
      "$CLUSTER_DIR/down.sh" || true
    fi
  }
  trap cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  "$CLUSTER_DIR/up.sh" >/dev/null
  export KUBECONFIG=$ALEPH_STATE/kubeconfig
fi

status=0
"$@" || status=$?
exit "$status"
