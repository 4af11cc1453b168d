#!/usr/bin/env bash
# `make bench`: builds the operator and the benchmark in release mode, starts a
# local control plane of its own (e2e/cluster/with-cluster.sh), installs the
# CRDs and runs aleph-bench, which starts the operator itself and prints one
# table. Arguments go to aleph-bench, for example
#   scripts/bench.sh --sizes 100 --idle-seconds 30
# The report is also written to $BENCH_OUTPUT (default
# ~/.cache/aleph/bench/latest.md); docs/benchmarks.md records the latest one.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/aleph/target}"
output="${BENCH_OUTPUT:-${XDG_CACHE_HOME:-$HOME/.cache}/aleph/bench/latest.md}"
mkdir -p "$(dirname "$output")"

echo "==> building aleph-operator and aleph-bench (release)" >&2
# One invocation: built apart, the two would unify features differently and
# build the AWS SDK twice.
cargo build --release --quiet -p aleph-operator -p aleph-e2e --bin aleph-operator --bin aleph-bench
export ALEPH_OPERATOR_BIN="$CARGO_TARGET_DIR/release/aleph-operator"

# Runs inside with-cluster.sh, with KUBECONFIG and PATH set.
run() {
  echo "==> installing the CRDs" >&2
  kubectl apply --server-side --force-conflicts -f crds/ >/dev/null
  kubectl wait --for=condition=Established --timeout=60s -f crds/ >/dev/null
  "$CARGO_TARGET_DIR/release/aleph-bench" --output "$output" "$@"
}
export -f run
export output
e2e/cluster/with-cluster.sh bash -c 'run "$@"' bench "$@"
echo "==> report written to $output" >&2
