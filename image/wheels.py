"""The arm64 wheelhouse w3gate is installed from in the image.

Every dependency is a published aarch64 wheel, fetched by this machine's pip for the target's
platform (glibc 2.36, CPython 3.11), except pywasm3, which publishes none: its sdist is compiled
in the arm64 build root (gcc under qemu-user, about 40 s), with Debian's setuptools and no
network. Both are cached, keyed by what they are made from, so a new w3gate costs only its own
(pure Python) wheel.
"""
from __future__ import annotations

import configparser
import hashlib
import shutil
import sys
from pathlib import Path

from image import recipe, rootfs
from image.rootfs import ImageError, Log

REPO = Path(__file__).resolve().parent.parent
# the target: Debian bookworm arm64 (glibc 2.36, CPython 3.11); pip takes no range of glibc
# versions, so every manylinux tag the target's glibc accepts is named
GLIBC_MINOR = 36
TARGET = [*(a for m in range(17, GLIBC_MINOR + 1) for a in ("--platform", f"manylinux_2_{m}_aarch64")),
          "--platform", "manylinux2014_aarch64", "--platform", "linux_aarch64", "--python-version", "3.11",
          "--implementation", "cp", "--abi", "cp311", "--abi", "abi3", "--abi", "none"]


def requirements() -> list[str]:
    """w3gate's install_requires, as setup.cfg declares them."""
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    return [line.strip() for line in cfg["options"]["install_requires"].splitlines() if line.strip()]


def _pip(*args: str, log: Log, prefix: str) -> None:
    rootfs.run_logged([sys.executable, "-m", "pip", *args, "--progress-bar", "off", "--disable-pip-version-check"],
                      log, prefix=prefix)


def _cached(done: Path, make) -> Path:
    """``done`` once ``make(scratch)`` filled a scratch directory (renamed: never half a cache)."""
    if (done / ".w3gate-complete").exists():
        return done
    scratch = done.with_name(done.name + ".partial")
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    make(scratch)
    (scratch / ".w3gate-complete").write_text(done.name + "\n")
    shutil.rmtree(done, ignore_errors=True)
    scratch.rename(done)
    return done


def w3gate_wheel(out: Path, log: Log) -> Path:
    """w3gate's own wheel, built from this checkout (pure Python: any architecture)."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    _pip("wheel", "--no-deps", "--quiet", "--wheel-dir", str(out), str(REPO), log=log, prefix="w3gate wheel")
    wheels = list(out.glob("w3gate-*.whl"))
    if len(wheels) != 1:
        raise ImageError(f"building w3gate's wheel left {len(wheels)} wheels in {out}")
    return wheels[0]


def builder_root(cache: Path, log: Log) -> Path:
    return rootfs.make(cache, "builder", recipe.BUILDER_PACKAGES, "extract", log)


def pywasm3(cache: Path, builder: Path, log: Log) -> Path:
    """A directory holding the aarch64 pywasm3 wheel, compiled in ``builder``."""
    spec = next(r for r in requirements() if r.startswith("pywasm3"))
    key = hashlib.sha256(f"{builder.name}\n{spec}".encode()).hexdigest()[:16]
    done = cache / f"pywasm3-{key}"
    if (done / ".w3gate-complete").exists():
        log(f"pywasm3: cached ({done.name})")
        return done

    def make(scratch: Path) -> None:
        work = builder / "build"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir()
        _pip("download", "--no-deps", "--no-binary", ":all:", "--dest", str(work), spec, log=log, prefix="pip")
        sdist = next(work.glob("pywasm3-*.tar.gz"))
        with rootfs.entered(builder) as run:
            # pip from Python's own bundled wheel, setuptools and wheel from Debian: no network here
            run("python3", "-m", "venv", "--system-site-packages", "/build/venv")
            run("/build/venv/bin/python", "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                "--wheel-dir", "/build/out", f"/build/{sdist.name}", log=log, env={"PIP_PROGRESS_BAR": "off"})
        built = list((work / "out").glob("pywasm3-*-linux_aarch64.whl"))
        if len(built) != 1:
            raise ImageError(f"compiling pywasm3 for aarch64 left {[p.name for p in (work / 'out').glob('*')]}")
        shutil.copy2(built[0], scratch / built[0].name)
        shutil.rmtree(work, ignore_errors=True)
        log(f"pywasm3: compiled {built[0].name}")

    return _cached(done, make)


def dependencies(cache: Path, compiled: Path, own_wheel: Path, log: Log) -> Path:
    """The aarch64 wheels of everything w3gate needs (not w3gate itself): pywasm3 from
    ``compiled``, the rest as published."""
    key = hashlib.sha256("\n".join([compiled.name, *requirements()]).encode()).hexdigest()[:16]
    done = cache / f"wheels-{key}"
    if (done / ".w3gate-complete").exists():
        log(f"wheels: cached ({done.name}, {len(list(done.glob('*.whl')))} wheels)")
        return done

    def make(scratch: Path) -> None:
        _pip("download", "--only-binary", ":all:", *TARGET, "--find-links", str(compiled), "--dest", str(scratch),
             str(own_wheel), log=log, prefix="pip")
        (scratch / own_wheel.name).unlink(missing_ok=True)
        wheels = sorted(p.name for p in scratch.glob("*.whl"))
        foreign = [w for w in wheels if not (w.endswith("-any.whl") or "aarch64" in w)]
        if foreign or not any(w.startswith("pywasm3-") for w in wheels):
            raise ImageError(f"the wheelhouse is not all arm64 (foreign: {foreign}; got {wheels})")
        log(f"wheels: {len(wheels)} for arm64 ({sum(p.stat().st_size for p in scratch.glob('*.whl')) >> 20} MB)")

    return _cached(done, make)
