# Sourced by bench.sh and bench-gateway.sh: strict mode, the repository's
# root as the working directory, and the release builds' target directory
# (default ~/.cache/aleph/target). `bench_output VAR FILE` prints where a
# report goes, $VAR or FILE under ~/.cache/aleph/bench, and makes its folder.
# shellcheck shell=bash
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
# shellcheck source=../e2e/cluster/lib.sh
source e2e/cluster/lib.sh
aleph_cache="${XDG_CACHE_HOME:-$HOME/.cache}/aleph"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$aleph_cache/target}"
claim_target_dir "$CARGO_TARGET_DIR" "$root"

bench_output() {
  local path="${!1:-$aleph_cache/bench/$2}"
  mkdir -p "$(dirname "$path")"
  echo "$path"
}
