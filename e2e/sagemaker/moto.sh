#!/usr/bin/env bash
# Runs moto's server (a SageMaker API emulator from PyPI) for the SageMaker tests.
#
#   moto.sh start   installs moto into a cached virtualenv (once), starts
#                   moto_server on $ALEPH_MOTO_HOST (default 127.0.0.1; the
#                   local cluster's host address, so that pods reach it) on a free port, writes its URL to
#                   $ALEPH_MOTO_STATE/url and prints the export lines
#   moto.sh stop    stops the server recorded in $ALEPH_MOTO_STATE/pid
#   moto.sh url     prints the URL of the running server
#   moto.sh python  installs the virtualenv (once) and prints its Python, which
#                   has boto3 (for putting objects into the emulator's S3)
#
# The virtualenv lives in ${ALEPH_CACHE:-$HOME/.cache/aleph}/venv-moto-<version>,
# outside the clone. Idempotent: start with a healthy server running only prints.
set -euo pipefail

MOTO_VERSION=5.2.5
# ALEPH_CACHE, log and cmdline_of.
# shellcheck source=../cluster/lib.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/../cluster/lib.sh"
VENV="$ALEPH_CACHE/venv-moto-$MOTO_VERSION"
STATE="${ALEPH_MOTO_STATE:-$ALEPH_CACHE/moto}"
PYTHON="${PYTHON:-python3}"
HOST="${ALEPH_MOTO_HOST:-127.0.0.1}"

install_moto() {
  if [ -x "$VENV/bin/moto_server" ] && [ -f "$VENV/.installed" ]; then
    return 0
  fi
  mkdir -p "$ALEPH_CACHE"
  exec 8>"$ALEPH_CACHE/venv-moto.lock"
  flock 8
  if [ -x "$VENV/bin/moto_server" ] && [ -f "$VENV/.installed" ]; then
    return 0
  fi
  log "installing moto[server]==$MOTO_VERSION into $VENV"
  rm -rf "$VENV"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "moto[server]==$MOTO_VERSION" >&2
  touch "$VENV/.installed"
}

# The pid recorded, if that process is still our moto_server.
recorded_pid() {
  local pid
  [ -f "$STATE/pid" ] || return 1
  pid=$(cat "$STATE/pid")
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  [[ "$(cmdline_of "$pid")" == *moto_server* ]] || return 1
  echo "$pid"
}

healthy() {
  [ -f "$STATE/url" ] || return 1
  recorded_pid >/dev/null || return 1
  curl -fsS --max-time 5 "$(cat "$STATE/url")/moto-api/" >/dev/null 2>&1
}

free_port() {
  "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("'"$HOST"'", 0)); print(s.getsockname()[1]); s.close()'
}

print_export() {
  echo "export AWS_ENDPOINT_URL_SAGEMAKER=$(cat "$STATE/url")"
  echo "export ALEPH_MOTO_URL=$(cat "$STATE/url")"
}

start() {
  install_moto
  mkdir -p "$STATE"
  if healthy; then
    log "moto is already running ($(cat "$STATE/url"))"
    print_export
    return 0
  fi
  stop_server
  local port url pid deadline
  port=${ALEPH_MOTO_PORT:-$(free_port)}
  url="http://$HOST:$port"
  log "starting moto_server on $url (log: $STATE/moto.log)"
  # setsid: the server outlives this script and is not in the caller's process group.
  setsid "$VENV/bin/moto_server" -H "$HOST" -p "$port" >"$STATE/moto.log" 2>&1 </dev/null &
  pid=$!
  echo "$pid" >"$STATE/pid"
  echo "$url" >"$STATE/url"
  deadline=$((SECONDS + ${ALEPH_START_TIMEOUT:-60}))
  until curl -fsS --max-time 2 "$url/moto-api/" >/dev/null 2>&1; do
    if ! kill -0 "$pid" 2>/dev/null; then
      log "moto_server exited; its log:"
      tail -n 30 "$STATE/moto.log" >&2 || true
      exit 1
    fi
    if [ $SECONDS -ge $deadline ]; then
      log "moto_server did not answer on $url in time"
      stop_server
      exit 1
    fi
    sleep 0.3
  done
  print_export
}

stop_server() {
  local pid deadline
  if pid=$(recorded_pid); then
    log "stopping moto_server (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    deadline=$((SECONDS + 10))
    while kill -0 "$pid" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.2; done
    if kill -0 "$pid" 2>/dev/null; then
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  rm -f "$STATE/pid" "$STATE/url"
}

case "${1:-}" in
  start) start ;;
  stop) stop_server ;;
  url) healthy && cat "$STATE/url" ;;
  install) install_moto ;;
  python) install_moto && echo "$VENV/bin/python" ;;
  *) echo "usage: $0 start|stop|url|install|python" >&2; exit 2 ;;
esac
