#!/usr/bin/env bash
# Runs every test against the cluster KUBECONFIG names (started by
# e2e/cluster/with-cluster.sh): installs the CRDs, starts the operator and
# moto's SageMaker emulator, runs `cargo test --workspace`, and stops what it
# started, also when a test fails.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
# shellcheck source=../e2e/cluster/lib.sh
source e2e/cluster/lib.sh
state="${ALEPH_STATE:-${XDG_CACHE_HOME:-$HOME/.cache}/aleph/cluster}"
# Build outside the clone so a second run (and a fresh clone) reuses the dependencies.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/aleph/target}"
claim_target_dir "$CARGO_TARGET_DIR" "$root"
# Incremental state is for editing; here it would only fill the disk (the real
# node needs room for its images).
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
mkdir -p "$state/logs"
# Nothing here has AWS configuration of its own: the SDK's default chain must
# not ask the EC2 metadata address (it would leave this machine).
export AWS_EC2_METADATA_DISABLED=true
# The model cache downloads with the image e2e/images builds and the real node has.
export ALEPH_MODEL_CACHE_IMAGE="${ALEPH_MODEL_CACHE_IMAGE:-aleph.local/model-cache:dev}"
# The address pods on the real node reach this machine at (up.sh), where the
# S3 and SageMaker emulator listens; moto's state belongs to this run.
if [ -f "$state/ports.env" ]; then
  # shellcheck disable=SC1091
  source "$state/ports.env"
  export ALEPH_HOST_IP="${HOST_IP:-127.0.0.1}" ALEPH_APISERVER_PORT="$APISERVER_PORT"
  export ALEPH_MOTO_HOST="$ALEPH_HOST_IP" ALEPH_MOTO_STATE="$state/moto"
fi

echo "==> building the workspace" >&2
cargo build --workspace --all-targets --quiet

echo "==> installing the CRDs" >&2
kubectl apply --server-side --force-conflicts -f crds/ >/dev/null
kubectl wait --for=condition=Established --timeout=60s -f crds/ >/dev/null

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  "$root/e2e/sagemaker/moto.sh" stop >/dev/null 2>&1 || true
}
trap cleanup EXIT

eval "$("$root/e2e/sagemaker/moto.sh" start)"
export ALEPH_MOTO_URL="${ALEPH_MOTO_URL:-$("$root/e2e/sagemaker/moto.sh" url)}"

# The operator under test, with leader election on (the chart's default).
# Objects labelled aleph.dev/e2e-operator belong to operators a test starts itself.
export ALEPH_OPERATOR_METRICS="127.0.0.1:18080"
# Its SageMaker is moto's server, with moto's placeholder credentials.
AWS_ENDPOINT_URL_SAGEMAKER="$ALEPH_MOTO_URL" AWS_REGION=us-east-1 \
  AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing \
  "$CARGO_TARGET_DIR/debug/aleph-operator" run --sagemaker-max-poll-seconds 2 --metrics-addr "$ALEPH_OPERATOR_METRICS" \
  --lease-namespace default --lease-name aleph-operator-e2e --log-format json \
  --watch-label-selector '!aleph.dev/e2e-operator' \
  >"$state/logs/operator.log" 2>&1 &
pids+=($!)
export ALEPH_OPERATOR_LOG="$state/logs/operator.log"
for _ in $(seq 1 60); do
  curl -fsS "http://$ALEPH_OPERATOR_METRICS/readyz" >/dev/null 2>&1 && break
  sleep 1
done
curl -fsS "http://$ALEPH_OPERATOR_METRICS/readyz" >/dev/null || {
  echo "the operator did not become ready; its log:" >&2
  tail -50 "$state/logs/operator.log" >&2
  exit 1
}

# Arguments select tests (`scripts/run-tests.sh -p aleph-e2e --test tenant`);
# without any, everything runs.
selection=("$@")
[ ${#selection[@]} -gt 0 ] || selection=(--workspace)
echo "==> cargo test ${selection[*]}" >&2
status=0
# --show-output: the figures passing tests print (takeover times, quota peaks,
# SageMaker object counts) show in the log too.
cargo test "${selection[@]}" --no-fail-fast -- --test-threads="${ALEPH_TEST_THREADS:-4}" --show-output 2>&1 | tee "$state/logs/test.log" || status=$?
if [ "${PIPESTATUS[0]}" -ne 0 ]; then status=1; fi
if [ "$status" -ne 0 ]; then
  echo "==> some tests failed; the operator's log tail:" >&2
  tail -30 "$state/logs/operator.log" >&2
fi
# Why each failing test failed, at the end where a truncated log still shows it.
if grep -qE "^thread '[^']*'.* panicked at" "$state/logs/test.log"; then
  echo "==> the failing tests' panics:"
  awk "/^thread '[^']*'.* panicked at/ { n = 8 } /^stack backtrace:/ { n = 0 } n > 0 { print; n-- }" \
    "$state/logs/test.log" | cut -c1-300 | head -150
  # Pods that never start are often a full disk (the real node's images and pods).
  echo "==> room left on the disk: $(df -Ph "$state" | awk 'NR == 2 { print $4 " free of " $2 " (" $5 " used)" }')"
fi
# One summary line for the whole run.
# From cargo's own "test result:" lines only (what tests print may say "failed").
passed=$(grep -E '^test result:' "$state/logs/test.log" | grep -Eo '[0-9]+ passed' | awk '{s+=$1} END {print s+0}')
failed=$(grep -E '^test result:' "$state/logs/test.log" | grep -Eo '[0-9]+ failed' | awk '{s+=$1} END {print s+0}')
echo "total: $passed passed, $failed failed"
exit "$status"
