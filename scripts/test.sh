#!/usr/bin/env bash
# `make test` (and so `.ci/run`): every test, on a local control plane of its
# own (e2e/cluster/with-cluster.sh scripts/run-tests.sh).
#
# On a cold machine most of the time goes into builds: the control plane's Go
# binaries, the static operator and gateway of the images, llama.cpp's server
# and the workspace's tests. Each alone leaves the CPUs idle at times
# (downloads, single-threaded links), so the Rust and C++ builds start here,
# in the background, while with-cluster.sh builds the Go binaries; the same
# builds in the foreground later find them done (or wait for them on cargo's
# and build.sh's locks) and do nothing twice. Their output goes to
# $ALEPH_CACHE/logs/; a failure shows again, in full, when the foreground
# build runs it.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
# shellcheck source=../e2e/cluster/lib.sh
source e2e/cluster/lib.sh
# What scripts/run-tests.sh builds with, so that its build finds this one's.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/aleph/target}"
claim_target_dir "$CARGO_TARGET_DIR" "$root"
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
logs="$ALEPH_CACHE/logs"
mkdir -p "$logs"

pids=()
stop_background() {
  local pid
  for pid in "${pids[@]}"; do
    kill -- "-$pid" 2>/dev/null || kill "$pid" 2>/dev/null || true
  done
}
trap stop_background EXIT

if [ "${ALEPH_NO_BACKGROUND_BUILDS:-}" != 1 ]; then
  log "building the workspace and the images' binaries in the background (logs in $logs)"
  setsid cargo build --workspace --all-targets --quiet >"$logs/test-workspace-build.log" 2>&1 &
  pids+=($!)
  if real_node_enabled && [ "${ALEPH_USE_EXISTING_CLUSTER:-}" != 1 ]; then
    setsid e2e/images/build.sh aleph-operator aleph-gateway llama-server \
      >"$logs/test-images-build.log" 2>&1 &
    pids+=($!)
  fi
fi

e2e/cluster/with-cluster.sh scripts/run-tests.sh
