#!/usr/bin/env bash
# Stops the local control plane started by up.sh: exactly the processes whose
# pids it recorded (TERM, then KILL after ALEPH_STOP_GRACE_SECONDS, default 10),
# then removes $ALEPH_STATE. The component logs are kept in
# $ALEPH_CACHE/cluster-logs (replaced each time) for a look after a failed run.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# Real nodes of clusters whose state is gone (a run killed before it cleaned up).
"$CLUSTER_DIR/node.sh" sweep
if [ ! -d "$ALEPH_STATE" ]; then
  log "no local control plane state in $ALEPH_STATE"
  exit 0
fi
ensure_state_dir_is_ours

exec 9>"$ALEPH_STATE.lock"
flock 9

# The real node first: its kubelet would otherwise restart what is stopped.
"$CLUSTER_DIR/node.sh" down
stop_components
if [ -d "$ALEPH_STATE/logs" ]; then
  rm -rf "$ALEPH_CACHE/cluster-logs"
  cp -r "$ALEPH_STATE/logs" "$ALEPH_CACHE/cluster-logs"
fi
rm -rf "$ALEPH_STATE" "$ALEPH_STATE.lock"
log "the local control plane is down"
