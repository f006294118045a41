#!/usr/bin/env bash
# w3gate developer entry point. On a fresh Debian / Raspberry Pi OS machine:
#   ./dev.sh demo    install everything, then run the demo (broker + gateway + emulated Pebbles)
#   ./dev.sh test    install everything, then run the test suite
#   ./dev.sh soak    the slow soak tests (not part of `test`)
#   ./dev.sh bench   the benchmarks in bench/ (prints figures)
#   ./dev.sh fuzz    the long fuzzing run (atheris, 1,000,000 inputs per target; grows tests/fuzz/corpus)
#   ./dev.sh image   build the Raspberry Pi SD-card image into build/image (root; docs/image.md)
#   ./dev.sh image-test [IMAGE]   the image's w3gate layer under qemu-user (a test), then boot the
#                                 image under QEMU and check the gateway in it
#   ./dev.sh image-flash IMAGE DEVICE   write the image to an SD card
set -euo pipefail
cd "$(dirname "$0")"

APT_PACKAGES=(mosquitto mosquitto-clients python3-venv python3-dev build-essential wabt socat systemd)
VENV=.venv

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

setup() {
  local missing=()
  command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || missing+=(mosquitto)
  command -v mosquitto_pub >/dev/null || missing+=(mosquitto-clients)  # the README's event example
  python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
  command -v gcc >/dev/null || missing+=(build-essential python3-dev)
  command -v wat2wasm >/dev/null || missing+=(wabt)  # the runtime's hand-written test modules
  command -v socat >/dev/null || missing+=(socat)  # a MicroPython REPL on a pty, for pairing benches
  command -v systemd-analyze >/dev/null || missing+=(systemd)  # the service units are verified in the tests
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
  # solc, anvil, asc and the W3bstream SDK for the contract, chain and applet tests, pinned in
  # package-lock.json. Debian's own nodejs/npm when npm is missing (Debian 12 ships Node 18;
  # assemblyscript 0.28 asks for 20, the version these tools were tested with).
  if ! command -v npm >/dev/null; then
    echo "installing Debian packages: nodejs npm" >&2
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
  fi
  node -e 'process.exit(+(parseInt(process.versions.node) < 20))' ||
    echo "warning: Node.js $(node --version) is older than the 20 that assemblyscript 0.28 asks for" >&2
  if [ package-lock.json -nt node_modules/.package-lock.json ]; then
    npm ci --no-audit --no-fund --loglevel=error >/dev/null
  fi
  # applets/build/*.wasm; a no-op when every output is newer than its sources
  node applets/build.js --quiet
}

# The image tools: `image` builds the w3gate layer in an arm64 root (mmdebstrap, qemu-user through
# binfmt_misc) and assembles partitions without mounting (genimage, mtools, dosfstools);
# `image-test` checks that layer (tests/hil/test_image_layer.py) and boots the image (qemu-system-aarch64, ssh).
image_tools() {
  local want=(mmdebstrap qemu-user-static binfmt-support arch-test) missing=()
  [ "${1:-}" = full ] && want+=(genimage mtools dosfstools e2fsprogs xz-utils qemu-system-arm openssh-client)
  for p in "${want[@]}"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p"); done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "installing Debian packages: ${missing[*]}" >&2
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
  # arm64 programs run through binfmt_misc (a container may not have it mounted)
  [ -e /proc/sys/fs/binfmt_misc/register ] || as_root mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc 2>/dev/null || true
}

# The dashboard's tests drive a real browser: Debian's Chromium and its driver, for selenium.
browser_tools() {
  local missing=()
  command -v chromium >/dev/null || missing+=(chromium)
  command -v chromedriver >/dev/null || missing+=(chromium-driver)
  if [ ${#missing[@]} -gt 0 ]; then
    echo "installing Debian packages: ${missing[*]}" >&2
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

cmd=${1:-help}
shift || true
case "$cmd" in
  demo)  setup; exec "$VENV/bin/w3gate" demo "$@" ;;
  test)  setup; browser_tools; exec "$VENV/bin/python" -m pytest "$@" ;;
  soak)  setup; exec "$VENV/bin/python" -m pytest -m slow "$@" ;;
  bench) setup; exec "$VENV/bin/python" -m bench "$@" ;;
  fuzz)  setup; "$VENV/bin/pip" install -q "atheris>=2.3"; exec "$VENV/bin/python" -m tests.fuzz "$@" ;;
  image) setup; image_tools full; as_root "$VENV/bin/python" -m image build "$@"; exit $? ;;
  image-test) setup; image_tools full
              as_root "$VENV/bin/python" -m pytest -m image tests/hil/test_image_layer.py  # the layer, under qemu-user
              as_root "$VENV/bin/python" -m image test "$@"; exit $? ;;
  image-flash) setup; as_root "$VENV/bin/python" -m image flash "$@"; exit $? ;;
  setup) setup ;;
  *) sed -n '2,11p' "$0"; exit 2 ;;
esac
