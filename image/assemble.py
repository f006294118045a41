"""The SD-card image, made from directories without mounting anything: the boot partition with
mkfs.vfat + mcopy, the root with ``mkfs.ext4 -d``, and genimage laying both into an MBR image as
Raspberry Pi firmware expects (FAT32 LBA at 4 MiB, then Linux).

Why no mounts: these machines have no device-mapper and ``losetup -P`` makes no partition nodes
(docs/image.md), and a build that needs no mounts runs anywhere mmdebstrap does.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

from image import recipe, rootfs
from image.rootfs import ImageError, Log

TOOLS = ("mkfs.vfat", "mcopy", "mkfs.ext4", "genimage")


def _size_bytes(root: Path) -> int:
    out = subprocess.run(["du", "-s", "--block-size=1", "-x", str(root)], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[0])


def boot_partition(root: Path, seeds: dict[str, str], work: Path, log: Log) -> Path:
    """boot.vfat: the Pi firmware, kernel and initrd raspi-firmware put in /boot/firmware, and the
    first-boot seed. /boot/firmware stays in the root as the empty mount point."""
    firmware = root / "boot/firmware"
    files = sorted(firmware.iterdir())
    if not any(p.name == "config.txt" for p in files):
        raise ImageError(f"{firmware} has no config.txt: raspi-firmware did not install the Pi's boot files")
    staged = work / "bootfs"
    shutil.rmtree(staged, ignore_errors=True)
    staged.mkdir(parents=True)
    for path in files:
        shutil.move(str(path), staged / path.name)
    for name, text in seeds.items():
        (staged / name).write_text(text)
    image = work / "boot.vfat"
    image.unlink(missing_ok=True)
    rootfs.run_logged(["mkfs.vfat", "-F", "32", "-n", recipe.BOOT_LABEL, "-C", str(image),
                       str(recipe.BOOT_MB * 1024)], log, prefix="mkfs.vfat")
    rootfs.run_logged(["mcopy", "-s", "-p", "-m", "-i", str(image), *(str(p) for p in sorted(staged.iterdir())),
                       "::/"], log, prefix="mcopy")
    log(f"assemble: boot partition {recipe.BOOT_MB} MB ({len(files)} firmware files + first-boot seed)")
    return image


def root_partition(root: Path, work: Path, log: Log) -> Path:
    """root.ext4 from the directory itself (owners, modes, links, xattrs), with room to spare
    until cloud-init's growpart gives it the rest of the card."""
    used = _size_bytes(root)
    size_mb = int(used * 1.1) // 2**20 + recipe.ROOT_SPARE_MB
    image = work / "root.ext4"
    image.unlink(missing_ok=True)
    rootfs.run_logged(["mkfs.ext4", "-q", "-F", "-L", recipe.ROOT_LABEL, "-m", "1", "-E", "root_owner=0:0",
                       "-d", str(root), str(image), f"{size_mb}M"], log, prefix="mkfs.ext4")
    log(f"assemble: root partition {size_mb} MB ({used >> 20} MB used)")
    return image


GENIMAGE = """image {name} {{
  hdimage {{
    partition-table-type = "mbr"
  }}
  partition firmware {{
    partition-type = 0xC
    bootable = "true"
    offset = 4M
    image = "boot.vfat"
  }}
  partition root {{
    partition-type = 0x83
    image = "root.ext4"
  }}
}}
"""


def disk_image(work: Path, out: Path, name: str, log: Log) -> Path:
    """The partitions laid into one MBR image at ``out/name``."""
    config = work / "genimage.cfg"
    config.write_text(GENIMAGE.format(name=name))
    empty, tmp = work / "genimage-root", work / "genimage-tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    empty.mkdir(exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / name).unlink(missing_ok=True)
    rootfs.run_logged(["genimage", "--config", str(config), "--inputpath", str(work), "--outputpath", str(out),
                       "--rootpath", str(empty), "--tmppath", str(tmp)], log, prefix="genimage")
    shutil.rmtree(tmp, ignore_errors=True)
    image = out / name
    log(f"assemble: {image} ({image.stat().st_size >> 20} MB)")
    return image


def compress(image: Path, log: Log) -> Path:
    """image.xz beside it (what one downloads and flashes; Raspberry Pi Imager takes it as is)."""
    rootfs.run_logged(["xz", "--force", "--keep", f"-T{os.cpu_count() or 1}", "-3", str(image)], log, prefix="xz")
    packed = image.with_name(image.name + ".xz")
    log(f"assemble: {packed} ({packed.stat().st_size >> 20} MB)")
    return packed


def checksum(path: Path) -> Path:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    out = path.with_name(path.name + ".sha256")
    out.write_text(f"{digest.hexdigest()}  {path.name}\n")
    return out
