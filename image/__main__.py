"""``python -m image build | check | test | flash`` (``./dev.sh image``, ``./dev.sh image-test``).

build  the SD-card image: base (cached) + wheelhouse (cached) + w3gate layer, assembled
check  the fast check the test suite runs: the w3gate layer in an arm64 chroot runs
test   boot an image under qemu-system-aarch64 and check the gateway in it (image/boot.py)
flash  write an image to an SD card, with progress
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from image import assemble, layer, recipe, rootfs, wheels
from image.progress import Steps
from image.rootfs import ImageError

REPO = Path(__file__).resolve().parent.parent
CACHE = Path("/var/cache/w3gate-image")
OUT = REPO / "build/image"


def wheelhouse(steps: Steps, cache: Path, work: Path) -> tuple[Path, Path]:
    """w3gate's own wheel and the arm64 wheels of its dependencies (cached)."""
    with steps.step("arm64 build root (cached)") as log:
        builder = wheels.builder_root(cache, log)
    with steps.step("w3gate wheel") as log:
        own = wheels.w3gate_wheel(work / "wheel", log)
    with steps.step("pywasm3 compiled for arm64 (cached)") as log:
        compiled = wheels.pywasm3(cache, builder, log)
    with steps.step("arm64 wheelhouse (cached)") as log:
        deps = wheels.dependencies(cache, compiled, own, log)
    return own, deps


def build(cache: Path, out: Path, xz: bool) -> Path:
    steps = Steps(out / "build.log")
    work = cache / "work"
    with steps.step("arm64 base root file system (cached; about 45 min when its package list changes)") as log:
        base = rootfs.make(cache, "base", recipe.BASE_PACKAGES, "apt", log)
    own, deps = wheelhouse(steps, cache, work)
    with steps.step("w3gate layer: /opt/w3gate, the service, first boot") as log:
        root, build_id, version = layer.build(base, deps, own, work, log)
    name = f"w3gate-{version}-{build_id[:8]}-{recipe.ARCH}.img"
    with steps.step("boot and root partitions, the image") as log:
        kernel = sorted((root / "boot").glob("vmlinuz-*"))[-1]
        initrd = sorted((root / "boot").glob("initrd.img-*"))[-1]
        out.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(kernel, out / (name + ".vmlinuz"))  # for `image test`: QEMU boots them directly
        shutil.copyfile(initrd, out / (name + ".initrd"))
        assemble.boot_partition(root, layer.seeds(build_id), work, log)
        assemble.root_partition(root, work, log)
        image = assemble.disk_image(work, out, name, log)
        assemble.checksum(image)
    if xz:
        with steps.step("xz") as log:
            assemble.checksum(assemble.compress(image, log))
    shutil.rmtree(work, ignore_errors=True)
    steps.console.print(f"image: {image}\nflash it: sudo ./dev.sh image-flash {image} /dev/sdX "
                        "(or Raspberry Pi Imager, 'Use custom')", highlight=False)
    steps.close()
    return image


def check(cache: Path, out: Path) -> tuple[str, Path]:
    """The w3gate layer installed into an arm64 Debian root (Debian's Python, unpacked) and run
    there: returns what ``w3gate --version`` printed there, and the root."""
    steps = Steps(out / "check.log")
    work = cache / "work-check"
    own, deps = wheelhouse(steps, cache, work)
    with steps.step("arm64 Python root (cached)") as log:
        python = rootfs.make(cache, "check", recipe.CHECK_PACKAGES, "extract", log)
    with steps.step("w3gate layer in an arm64 chroot") as log:
        target = work / "root"
        rootfs.copy_tree(python, target)
        version = layer.install_w3gate(target, deps, own, log, compile=False)
        layer.install_service(target, log)
    steps.close()
    return version, target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m image", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", type=Path, default=CACHE, help=f"cached roots and wheels (default {CACHE})")
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build the SD-card image")
    b.add_argument("--out", type=Path, default=OUT)
    b.add_argument("--xz", action="store_true", help="also write IMAGE.xz (what one downloads)")
    c = sub.add_parser("check", help="the w3gate layer in an arm64 chroot")
    c.add_argument("--out", type=Path, default=OUT)
    t = sub.add_parser("test", help="boot IMAGE under QEMU and check the gateway in it")
    t.add_argument("image", type=Path, nargs="?", help="default: the newest in build/image")
    f = sub.add_parser("flash", help="write IMAGE to DEVICE (an SD card)")
    f.add_argument("image", type=Path)
    f.add_argument("device", type=Path)
    f.add_argument("--yes", action="store_true", help="do not ask before overwriting DEVICE")
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            build(args.cache, args.out, args.xz)
        elif args.command == "check":
            print(check(args.cache, args.out)[0])
        elif args.command == "test":
            from image import boot

            return boot.main(args.image or boot.newest(OUT))
        elif args.command == "flash":
            from image import flash

            flash.flash(args.image, args.device, assume_yes=args.yes)
    except ImageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
