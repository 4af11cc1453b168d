#!/usr/bin/env bash
# Prints the Python of a cached virtualenv with the official `openai` client from
# PyPI (pinned), which the gateway tests call the gateway with. Installed once,
# outside the clone: ${ALEPH_CACHE:-$HOME/.cache/aleph}/venv-openai-<version>.
set -euo pipefail

OPENAI_VERSION=3.57.0
# ALEPH_CACHE and log.
# shellcheck source=../cluster/lib.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/../cluster/lib.sh"
VENV="$ALEPH_CACHE/venv-openai-$OPENAI_VERSION"
PYTHON="${PYTHON:-python3}"

if ! [ -f "$VENV/.installed" ]; then
  mkdir -p "$ALEPH_CACHE"
  exec 8>"$ALEPH_CACHE/venv-openai.lock"
  flock 8
  if ! [ -f "$VENV/.installed" ]; then
    log "installing openai==$OPENAI_VERSION into $VENV"
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "openai==$OPENAI_VERSION" >&2
    touch "$VENV/.installed"
  fi
fi
echo "$VENV/bin/python"
