#!/usr/bin/env bash
# `make bench-gateway` (and the gateway part of `make bench`): builds
# aleph-gateway and aleph-gateway-bench in release mode, installs nginx from
# Debian if it is missing, and runs aleph-gateway-bench, which starts a stub
# engine, the gateway and nginx itself (no cluster) and prints one table.
# Arguments go to aleph-gateway-bench, for example
#   scripts/bench-gateway.sh --seconds 5 --warmup-seconds 1
# The report is also written to $BENCH_GATEWAY_OUTPUT (default
# ~/.cache/aleph/bench/latest-gateway.md); docs/benchmarks.md records the
# latest one. ALEPH_BENCH_NO_BUILD=1 skips the build (bench.sh has built both);
# ALEPH_BENCH_NICE=0 leaves the benchmark at normal priority.
# shellcheck source=scripts/bench-env.sh
source "$(dirname "${BASH_SOURCE[0]}")/bench-env.sh"
output="$(bench_output BENCH_GATEWAY_OUTPUT latest-gateway.md)"

if [ "${ALEPH_BENCH_NO_BUILD:-}" != 1 ]; then
  echo "==> building aleph-gateway and aleph-gateway-bench (release)" >&2
  # The gateway on its own, so that its features are its own and not those
  # unified with the benchmark's dependencies.
  cargo build --release --quiet -p aleph-gateway --bin aleph-gateway
  cargo build --release --quiet -p aleph-e2e --bin aleph-gateway-bench
fi

nginx_bin="${ALEPH_NGINX_BIN:-}"
if [ -z "$nginx_bin" ]; then
  nginx_bin="$(PATH="$PATH:/usr/sbin:/sbin" command -v nginx || true)"
fi
if [ -z "$nginx_bin" ]; then
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "bench-gateway: nginx is missing; install it (Debian: apt-get install nginx-light) or set ALEPH_NGINX_BIN" >&2
    exit 1
  fi
  echo "==> installing nginx from Debian (nginx-light)" >&2
  # Debian's packages start their service when installed unless the
  # machine's policy says no; the benchmark runs its own nginx, so the
  # service is stopped again if it was started.
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q nginx-light >/dev/null; then
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q nginx-light >/dev/null
  fi
  if [ -f /run/nginx.pid ]; then
    service nginx stop >/dev/null 2>&1 || kill "$(cat /run/nginx.pid)" 2>/dev/null || true
  fi
  nginx_bin="$(PATH="$PATH:/usr/sbin:/sbin" command -v nginx)"
fi
command -v taskset >/dev/null || echo "bench-gateway: no taskset: pass --no-pin" >&2

# As root, the benchmark's processes (the proxies, the stub and the load
# generator inherit it) run at the highest priority, so that other work on
# the machine (builds) takes less of their CPUs; the report says which. The
# kernel shares the CPUs between sessions first (autogroups) and only then
# by nice value within one, so the benchmark gets a session of its own whose
# autogroup is at -20 too.
priority=()
if [ "$(id -u)" = 0 ] && [ "${ALEPH_BENCH_NICE:-1}" != 0 ]; then
  priority=(setsid --wait bash -c 'echo -20 >/proc/self/autogroup 2>/dev/null || true; exec nice -n -20 "$@"' bench)
fi
"${priority[@]}" "$CARGO_TARGET_DIR/release/aleph-gateway-bench" \
  --gateway-bin "$CARGO_TARGET_DIR/release/aleph-gateway" \
  --nginx-bin "$nginx_bin" \
  --output "$output" "$@"
echo "==> report written to $output" >&2
