#!/usr/bin/env bash
# `make bench`: builds the gateway and the benchmarks in release mode and the
# operator as its image does (the `image` profile, static), starts a local
# control plane of its own (e2e/cluster/with-cluster.sh), installs the CRDs
# and runs aleph-bench, which starts the operator itself (with the chart's
# allocator setting) and prints one table; then, once the control plane is down, the gateway's part
# (scripts/bench-gateway.sh: the gateway and nginx against a stub engine, no
# cluster). Arguments go to aleph-bench, for example
#   scripts/bench.sh --sizes 100 --idle-seconds 30
# and $BENCH_GATEWAY_ARGS to aleph-gateway-bench; BENCH_GATEWAY=0 leaves the
# gateway's part out (the long runs up to N = 5,000 of docs/benchmarks.md).
# The report of both is written to $BENCH_OUTPUT (default
# ~/.cache/aleph/bench/latest.md); docs/benchmarks.md records the latest one.
# `make bench-gateway` runs the gateway's part alone.
# shellcheck source=scripts/bench-env.sh
source "$(dirname "${BASH_SOURCE[0]}")/bench-env.sh"
output="$(bench_output BENCH_OUTPUT latest.md)"

echo "==> building the benchmarks and the gateway (release)" >&2
cargo build --release --quiet -p aleph-e2e --bin aleph-bench --bin aleph-gateway-bench
# The gateway on its own, so that its features are its own.
if [ "${BENCH_GATEWAY:-1}" != 0 ]; then
  cargo build --release --quiet -p aleph-gateway --bin aleph-gateway
fi
# The operator measured is the image's build: the `image` profile, linked
# statically (as e2e/images/build.sh and the Dockerfile build it), in the
# images' target directory, so a build made for the images is reused.
static_target="${ALEPH_STATIC_TARGET_DIR:-$aleph_cache/target-static}"
echo "==> building aleph-operator as the image does (--profile image, static) into $static_target" >&2
CARGO_TARGET_DIR="$static_target" \
  CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS="$STATIC_RUSTFLAGS" \
  cargo build --quiet --profile image --locked -p aleph-operator --bin aleph-operator \
  --target x86_64-unknown-linux-gnu
export ALEPH_OPERATOR_BIN="$static_target/x86_64-unknown-linux-gnu/image/aleph-operator"

# No real node: the benchmark's pods go to kwok's fake nodes, and a real
# node's agents (containerd, kubelet, kube-proxy, kube-router, which follows
# every NetworkPolicy the Tenants make) would take most of a core of the two
# the control plane and the operator share. On a cluster they run on the
# nodes, not beside the API server. ALEPH_REAL_NODE=1 puts it back.
export ALEPH_REAL_NODE="${ALEPH_REAL_NODE:-0}"

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

if [ "${BENCH_GATEWAY:-1}" = 0 ]; then
  echo "==> report written to $output (BENCH_GATEWAY=0: no gateway part)" >&2
  exit 0
fi
# The gateway's part, after the control plane has stopped, so that it does
# not share the CPUs with it.
gateway_output="${output%.md}-gateway.md"
# shellcheck disable=SC2086 # BENCH_GATEWAY_ARGS is a list of arguments
ALEPH_BENCH_NO_BUILD=1 BENCH_GATEWAY_OUTPUT="$gateway_output" \
  scripts/bench-gateway.sh ${BENCH_GATEWAY_ARGS:-}
printf '\n## Gateway\n\n' >>"$output"
cat "$gateway_output" >>"$output"
echo "==> report written to $output" >&2
