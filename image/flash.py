"""``./dev.sh image-flash IMAGE DEVICE``: write the image (or its .xz) to an SD card, with progress,
and read it back to compare.

Why not only dd: dd writes to any device it is given, the system disk included. This refuses
what is not a whole removable-looking block device, anything mounted, and the disk the running
system lives on, asks before overwriting, and verifies what it wrote.
"""
from __future__ import annotations

import hashlib
import lzma
import os
import stat
import sys
from pathlib import Path

from image.progress import transfer
from image.rootfs import ImageError

BLOCK = 4 << 20


def _mounted_sources() -> set[str]:
    with open("/proc/self/mounts") as f:
        return {line.split()[0] for line in f if line.startswith("/dev/")}


def _disk_of(path: str) -> str:
    """The whole disk a partition (or dm device) belongs to, by sysfs: /dev/sda2 -> sda."""
    name = Path(os.path.realpath(path)).name
    sys_path = Path("/sys/class/block", name)
    if (sys_path / "partition").exists():
        return sys_path.resolve().parent.name
    return name


def check_target(device: Path, size: int) -> None:
    """Refuse anything that is not a whole, unmounted, big enough disk other than the system's."""
    try:
        mode = os.stat(device).st_mode
    except FileNotFoundError:
        raise ImageError(f"{device} does not exist") from None
    if not stat.S_ISBLK(mode):
        raise ImageError(f"{device} is not a block device (an SD card is e.g. /dev/sdb or /dev/mmcblk0)")
    name = Path(os.path.realpath(device)).name
    if (Path("/sys/class/block", name) / "partition").exists():
        raise ImageError(f"{device} is a partition; give the whole card ({'/dev/' + _disk_of(str(device))})")
    busy = [src for src in _mounted_sources() if _disk_of(src) == name]
    if busy:
        raise ImageError(f"{device} has mounted partitions ({', '.join(sorted(busy))}): unmount them first")
    root = next((line.split()[0] for line in open("/proc/self/mounts") if line.split()[1] == "/"), "")
    if root.startswith("/dev/") and _disk_of(root) == name:
        raise ImageError(f"{device} holds the running system's root file system")
    capacity = int(Path("/sys/class/block", name, "size").read_text()) * 512
    if capacity < size:
        raise ImageError(f"{device} holds {capacity >> 20} MiB; the image needs {size >> 20} MiB")


def _source(image: Path):
    return lzma.open(image, "rb") if image.suffix == ".xz" else image.open("rb")


def _image_size(image: Path) -> int:
    if image.suffix != ".xz":
        return image.stat().st_size
    with lzma.open(image, "rb") as f:  # xz keeps the uncompressed size in its index
        return f.seek(0, os.SEEK_END)


def flash(image: Path, device: Path, *, assume_yes: bool = False) -> None:
    if not image.exists():
        raise ImageError(f"{image} does not exist")
    size = _image_size(image)
    check_target(device, size)
    if not assume_yes:
        if not sys.stdin.isatty():
            raise ImageError(f"writing {device} erases it: add --yes")
        answer = input(f"Erase {device} and write {image.name} ({size >> 20} MiB)? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            raise ImageError("nothing written")
    written = hashlib.sha256()
    with _source(image) as src, open(device, "r+b", buffering=0) as dst, transfer(f"writing {device}", size) as step:
        while block := src.read(BLOCK):
            dst.write(block)
            written.update(block)
            step(len(block))
        os.fsync(dst.fileno())
    read = hashlib.sha256()
    with open(device, "rb", buffering=0) as dst, transfer(f"verifying {device}", size) as step:
        left = size
        while left:
            block = dst.read(min(BLOCK, left))
            if not block:
                break
            read.update(block)
            left -= len(block)
            step(len(block))
    if read.digest() != written.digest():
        raise ImageError(f"{device} does not read back what was written: a failing card?")
    print(f"{device}: written and verified. Edit user-data and network-config on its boot partition, then boot.")
