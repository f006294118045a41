"""What the Raspberry Pi image is made of: the Debian suite and mirrors, the packages of its base
root file system and of the arm64 build root, and the partition sizes.

Why a module of plain data: the base root file system takes about 45 minutes under qemu-user, so
it is cached under a key made from exactly these values (:func:`key`). Change a package here and
the next build makes a new base; change anything else (the w3gate layer, first boot, assembly)
and the cached base is reused.
"""
from __future__ import annotations

import hashlib
import json

SUITE = "bookworm"
ARCH = "arm64"
COMPONENTS = ("main", "non-free-firmware")
MIRRORS = (
    f"deb http://deb.debian.org/debian {SUITE} {' '.join(COMPONENTS)}",
    f"deb http://deb.debian.org/debian {SUITE}-updates {' '.join(COMPONENTS)}",
    f"deb http://deb.debian.org/debian-security {SUITE}-security {' '.join(COMPONENTS)}",
)

# The appliance: Debian's kernel and Raspberry Pi firmware (Pi 3, 3+, 4, 400, CM3, CM4 and
# Zero 2 W; bookworm's 6.1 kernel has no Pi 5 device tree), Wi-Fi and Bluetooth firmware,
# cloud-init reading the boot partition, netplan on systemd-networkd (what cloud-init renders
# Wi-Fi to), mDNS for w3gate.local, BlueZ for BLE sensors, and the Python and mosquitto w3gate
# runs on. fake-hwclock: a Pi has no real-time clock; starting from the last shutdown's time
# keeps Pebble readings from looking years in the future until NTP answers.
BASE_PACKAGES = (
    "avahi-daemon", "bluez", "bluez-firmware", "ca-certificates", "cloud-guest-utils",
    "cloud-init", "dbus", "dosfstools", "fake-hwclock", "firmware-brcm80211", "iproute2",
    "iputils-ping", "less", "libnss-mdns", "linux-image-arm64", "mosquitto", "nano",
    "netplan.io", "openssh-server", "python3", "python3-venv", "raspi-firmware", "sudo",
    "systemd-resolved", "systemd-sysv", "systemd-timesyncd", "tzdata", "wpasupplicant",
)

# The arm64 build root: pywasm3 publishes no aarch64 wheel, so it is compiled from its sdist
# here, under qemu-user, and never in the image (which carries no compiler). Its packages are
# only unpacked (mmdebstrap's "extract" variant: no maintainer scripts under qemu, seconds
# instead of minutes), which is all gcc and Python need.
BUILDER_PACKAGES = ("build-essential", "python3-dev", "python3-setuptools", "python3-venv", "python3-wheel")

# The fast check's arm64 root (the test suite): Debian's Python, unpacked, for the w3gate layer.
CHECK_PACKAGES = ("python3", "python3-venv")

BOOT_LABEL = "RASPIFIRM"
ROOT_LABEL = "RASPIROOT"
BOOT_MB = 256
ROOT_SPARE_MB = 600  # free space in the root file system beyond its contents; growpart takes the card
RECIPE_VERSION = 1  # bump when the way a base is made changes without its package list changing


def key(kind: str, packages: tuple[str, ...], variant: str) -> str:
    """The cache key of a root file system made from these inputs."""
    blob = json.dumps({"kind": kind, "suite": SUITE, "arch": ARCH, "mirrors": MIRRORS,
                       "packages": sorted(packages), "variant": variant, "recipe": RECIPE_VERSION},
                      sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
