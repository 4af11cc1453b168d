#!/usr/bin/env bash
# Installs what the build and the tests need beyond Rust, Go and Python, from
# Debian's packages. Idempotent.
# - openssl: the control plane's certificates; lua5.1: the Argo CD health checks;
#   cmake: the AWS SDK's crypto; curl, flock (util-linux).
# - The real node (e2e/cluster/node.sh): containerd, runc, the CNI plugins,
#   iptables, ipset, iproute2, conntrack; unshare/nsenter (util-linux).
# - The images (e2e/images): gcc and libc6-dev for the static pause binary; g++,
#   cmake, ninja-build, binutils (strip) and file for the static llama-server.
set -euo pipefail
need=()
have() { command -v "$1" >/dev/null 2>&1; }
have openssl || need+=(openssl)
have lua5.1 || need+=(lua5.1)
have cmake || need+=(cmake)
have flock || need+=(util-linux)
have curl || need+=(curl)
have containerd || need+=(containerd)
have runc || need+=(runc)
[ -x /usr/lib/cni/bridge ] || need+=(containernetworking-plugins)
have iptables || need+=(iptables)
have ipset || need+=(ipset)
have ip || need+=(iproute2)
have conntrack || need+=(conntrack)
have gcc || need+=(gcc)
have g++ || need+=(g++)
have ninja || need+=(ninja-build)
have strip || need+=(binutils)
have file || need+=(file)
[ -f /usr/lib/x86_64-linux-gnu/libc.a ] || need+=(libc6-dev)
if [ ${#need[@]} -gt 0 ]; then
  echo "==> installing Debian packages: ${need[*]}" >&2
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
