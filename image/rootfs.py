"""arm64 root file systems: made with mmdebstrap, cached by their recipe's key, and entered with
chroot (arm64 programs run through qemu-user and binfmt_misc).

Nothing here mounts a partition: device-mapper and loop partitions are missing on the machines
this is built on (../docs/image.md), so images are assembled from directories
(:mod:`image.assemble`). The only mounts are /proc, /sys and /dev inside a chroot while it runs.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from image import recipe

Log = Callable[[str], None]
BINFMT = Path("/proc/sys/fs/binfmt_misc")


class ImageError(Exception):
    """A step of the image build failed; the message says which and why."""


def require_tools(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None and not Path("/usr/sbin", t).exists()]
    if missing:
        raise ImageError(f"missing tools: {' '.join(missing)} (./dev.sh image installs them)")


def ensure_binfmt() -> None:
    """arm64 binaries must run here through qemu-user: mount binfmt_misc when it is not, and
    check with a real arm64 program."""
    if os.geteuid() != 0:
        raise ImageError("building the image needs root (mmdebstrap --mode=root, chroot)")
    if not (BINFMT / "register").exists():
        subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT)], check=False)
    if not (BINFMT / "qemu-aarch64").exists():
        subprocess.run(["update-binfmts", "--enable", "qemu-aarch64"], check=False,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    probe = subprocess.run(["arch-test", recipe.ARCH], capture_output=True, text=True)
    if probe.returncode != 0:
        raise ImageError("this machine cannot run arm64 programs: binfmt_misc with qemu-aarch64 "
                         f"is not registered ({(probe.stdout + probe.stderr).strip()})")


def cached(cache: Path, kind: str, packages: Sequence[str], variant: str) -> Path:
    """Where a root file system of this recipe lives once made (a directory)."""
    return cache / f"{kind}-{recipe.key(kind, tuple(packages), variant)}"


def make(cache: Path, kind: str, packages: Sequence[str], variant: str, log: Log) -> Path:
    """The root file system for ``packages``, from the cache or made now with mmdebstrap.

    Made into a scratch directory and renamed when complete, so a build cut off half-way is
    never taken for a base.
    """
    done = cached(cache, kind, packages, variant)
    if (done / ".w3gate-complete").exists():
        log(f"{kind}: cached ({done.name})")
        return done
    require_tools("mmdebstrap", "arch-test")
    ensure_binfmt()
    cache.mkdir(parents=True, exist_ok=True)
    scratch = done.with_name(done.name + ".partial")
    shutil.rmtree(scratch, ignore_errors=True)
    shutil.rmtree(done, ignore_errors=True)
    cmd = ["mmdebstrap", f"--arch={recipe.ARCH}", f"--variant={variant}", "--mode=root",
           "--format=directory", f"--components={','.join(recipe.COMPONENTS)}",
           "--aptopt=Acquire::Languages \"none\"", "--dpkgopt=force-unsafe-io",
           f"--include={','.join(packages)}",
           # unpacked-only roots have no /bin/sh (dash makes it when configured)
           *(["--customize-hook=ln -sf dash \"$1/bin/sh\""] if variant == "extract"
             else ["--customize-hook=chroot \"$1\" apt-get clean"]),
           recipe.SUITE, str(scratch), *recipe.MIRRORS]
    log(f"{kind}: mmdebstrap {len(packages)} packages")
    run_logged(cmd, log, prefix=kind)
    (scratch / ".w3gate-complete").write_text(recipe.key(kind, tuple(packages), variant) + "\n")
    scratch.rename(done)
    return done


def run_logged(cmd: Sequence[str], log: Log, prefix: str, env: dict[str, str] | None = None) -> None:
    """Run ``cmd``, passing each output line to ``log``; a failure carries the last lines."""
    tail: list[str] = []
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          errors="replace", env=env) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip()
            if line:
                tail = (tail + [line])[-20:]
                log(f"{prefix}: {line}")
    if proc.returncode != 0:
        raise ImageError(f"{prefix}: {cmd[0]} failed (exit {proc.returncode}):\n" + "\n".join(tail))


def copy_tree(src: Path, dst: Path) -> None:
    """A working copy of a cached root file system (owners, modes, links and xattrs kept)."""
    shutil.rmtree(dst, ignore_errors=True)
    dst.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["cp", "-a", "--reflink=auto", str(src), str(dst)], check=True)
    (dst / ".w3gate-complete").unlink(missing_ok=True)


@contextlib.contextmanager
def entered(root: Path) -> Iterator[Callable[..., subprocess.CompletedProcess]]:
    """``run(*cmd)`` inside ``root`` with /proc, /sys and /dev mounted and the host's DNS, all
    undone on the way out (a chroot left mounted would be copied into the image)."""
    mounts: list[Path] = []
    resolv = root / "etc/resolv.conf"
    saved = resolv.read_bytes() if resolv.is_file() and not resolv.is_symlink() else None
    link = os.readlink(resolv) if resolv.is_symlink() else None
    try:
        for fs, where, opts in (("proc", "proc", []), ("sysfs", "sys", []), (None, "dev", ["--rbind"])):
            target = root / where
            target.mkdir(exist_ok=True)
            args = ["mount", *opts, "/dev", str(target)] if fs is None else ["mount", "-t", fs, fs, str(target)]
            subprocess.run(args, check=True)
            mounts.append(target)
        if resolv.is_symlink() or resolv.exists():
            resolv.unlink()
        shutil.copyfile("/etc/resolv.conf", resolv)

        def run(*cmd: str, log: Log | None = None, env: dict[str, str] | None = None,
                check: bool = True) -> subprocess.CompletedProcess:
            full = ["chroot", str(root), *cmd]
            base_env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                        "LANG": "C.UTF-8", "HOME": "/root", "DEBIAN_FRONTEND": "noninteractive"}
            base_env.update(env or {})
            if log is not None:
                run_logged(full, log, prefix=cmd[0].rsplit("/", 1)[-1], env=base_env)
                return subprocess.CompletedProcess(full, 0)
            done = subprocess.run(full, capture_output=True, text=True, env=base_env)
            if check and done.returncode != 0:
                raise ImageError(f"in the arm64 root: {' '.join(cmd)} failed (exit {done.returncode}): "
                                 f"{(done.stderr or done.stdout).strip()[-2000:]}")
            return done

        yield run
    finally:
        for target in reversed(mounts):
            subprocess.run(["umount", "--recursive", "--lazy", str(target)], check=False)
        if resolv.exists() or resolv.is_symlink():
            resolv.unlink()
        if link is not None:
            resolv.symlink_to(link)
        elif saved is not None:
            resolv.write_bytes(saved)
