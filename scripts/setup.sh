#!/usr/bin/env bash
# Installs what the build and the tests need beyond Rust, Go and Python:
# Debian packages (openssl for the control plane's certificates, lua5.1 for the
# Argo CD health checks, cmake/clang for the AWS SDK's crypto). Idempotent.
set -euo pipefail
need=()
command -v openssl >/dev/null || need+=(openssl)
command -v lua5.1 >/dev/null || need+=(lua5.1)
command -v cmake >/dev/null || need+=(cmake)
command -v flock >/dev/null || need+=(util-linux)
command -v curl >/dev/null || need+=(curl)
if [ ${#need[@]} -gt 0 ]; then
  echo "==> installing Debian packages: ${need[*]}" >&2
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
