#!/usr/bin/env bash
# w3gate developer entry point. On a fresh Debian / Raspberry Pi OS machine:
#   ./dev.sh demo    install everything, then run the demo (broker + gateway + emulated Pebbles)
#   ./dev.sh test    install everything, then run the test suite
#   ./dev.sh soak    the slow soak tests (not part of `test`)
#   ./dev.sh bench   the benchmarks in bench/ (prints figures)
set -euo pipefail
cd "$(dirname "$0")"

APT_PACKAGES=(mosquitto python3-venv python3-dev build-essential)
VENV=.venv

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

setup() {
  local missing=()
  command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || missing+=(mosquitto)
  python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
  command -v gcc >/dev/null || missing+=(build-essential python3-dev)
  if [ ${#missing[@]} -gt 0 ]; then
    echo "installing Debian packages: ${missing[*]}" >&2
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${APT_PACKAGES[@]}" >/dev/null
  fi
  python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
    echo "w3gate needs Python 3.11 or newer (found $(python3 --version))" >&2; exit 1; }
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip >/dev/null
  "$VENV/bin/pip" install -q -e ".[test]"
  # solc and anvil for the contract and chain tests, pinned in package-lock.json
  command -v npm >/dev/null || {
    echo "w3gate needs Node.js 20 and npm for its contract and chain tests (https://nodejs.org)" >&2; exit 1; }
  if [ package-lock.json -nt node_modules/.package-lock.json ]; then
    npm ci --no-audit --no-fund --loglevel=error >/dev/null
  fi
}

cmd=${1:-help}
shift || true
case "$cmd" in
  demo)  setup; exec "$VENV/bin/w3gate" demo "$@" ;;
  test)  setup; exec "$VENV/bin/python" -m pytest "$@" ;;
  soak)  setup; exec "$VENV/bin/python" -m pytest -m slow "$@" ;;
  bench) setup; exec "$VENV/bin/python" -m bench "$@" ;;
  setup) setup ;;
  *) sed -n '2,7p' "$0"; exit 2 ;;
esac
