"""The Raspberry Pi image's w3gate layer, checked without a Pi (docs/image.md): the wheelhouse
built for arm64 (pywasm3 compiled from its sdist, everything else as published aarch64 wheels)
installs into Debian bookworm's own arm64 Python, and runs there through qemu-user, as
`./dev.sh image` lays it into the image. `./dev.sh image-test` runs this test (it takes a minute
and more, so it is not in the default run), then boots the full image.

Real parts: mmdebstrap unpacks Debian's arm64 packages, the programs run under qemu-user through
binfmt_misc; nothing is mocked. The first run takes a few minutes (compiling pywasm3 under
qemu-user, installing the venv); the roots and wheels are cached in /var/cache/w3gate-image.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from gateway.cli import main as cli_main
from image import rootfs
from image.__main__ import CACHE, check

pytestmark = pytest.mark.image  # a slow target of its own: `./dev.sh image-test` runs it before booting the image

# (module (type (func (param i32 i32) (result i32))) (func (export "add") local.get 0 local.get 1 i32.add))
ADD_WASM = "0061736d0100000001070160027f7f017f030201000707010361646400000a09010700200020016a0b"


@pytest.fixture(scope="module")
def arm64_layer(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("chroot and mmdebstrap --mode=root need root")
    missing = [t for t in ("mmdebstrap", "arch-test") if shutil.which(t) is None]
    if missing or not Path("/usr/libexec/qemu-binfmt").exists() and shutil.which("qemu-aarch64-static") is None:
        pytest.skip(f"the image tools are not installed ({' '.join(missing) or 'qemu-user-static'}): ./dev.sh setup")
    try:
        rootfs.ensure_binfmt()
    except rootfs.ImageError as e:
        pytest.skip(f"arm64 programs cannot run on this machine: {e}")
    version, root = check(CACHE, tmp_path_factory.mktemp("image-out"))
    return version, root


def chrooted(root: Path, *cmd: str) -> str:
    with rootfs.entered(root) as run:
        return run(*cmd).stdout.strip()


def test_w3gate_runs_on_debian_arm64_python_as_the_image_installs_it(arm64_layer):
    version, root = arm64_layer
    from importlib.metadata import version as installed

    assert version == f"w3gate, version {installed('w3gate')}"
    assert chrooted(root, "/opt/w3gate/bin/python", "-c", "import platform; print(platform.machine())") == "aarch64"
    # the CLI as a user meets it there: every command group loads
    help_text = chrooted(root, "/opt/w3gate/bin/w3gate", "--help")
    for command in cli_main.commands:
        assert command in help_text


def test_the_compiled_wasm_runtime_executes_an_applet_on_arm64(arm64_layer):
    _, root = arm64_layer
    program = ("import wasm3; env = wasm3.Environment(); rt = env.new_runtime(4096); "
               f"rt.load(env.parse_module(bytes.fromhex('{ADD_WASM}'))); print(rt.find_function('add')(2, 3))")
    assert chrooted(root, "/opt/w3gate/bin/python", "-c", program) == "5"
    wheel = chrooted(root, "/opt/w3gate/bin/python", "-c", "import wasm3; print(wasm3.__file__)")
    assert wheel.endswith("aarch64-linux-gnu.so")


def test_the_service_is_laid_out_as_on_a_live_system_and_holds_no_identity(arm64_layer):
    _, root = arm64_layer
    unit = (root / "etc/systemd/system/w3gate.service").read_text()
    assert "ExecStart=/opt/w3gate/bin/w3gate run --config /etc/w3gate/w3gate.toml" in unit
    assert "ExecStartPre=/opt/w3gate/bin/w3gate key ensure" in unit
    assert (root / "etc/systemd/system/multi-user.target.wants/w3gate.service").is_symlink()
    assert list((root / "var/lib/w3gate").iterdir()) == []  # the node key is made on the device
    verify = subprocess.run(["systemd-analyze", "verify", f"--root={root}", "w3gate.service"],
                            capture_output=True, text=True, timeout=120) if shutil.which("systemd-analyze") else None
    if verify is not None:
        # the unpacked root has no mosquitto or systemd of its own: only the gateway's own lines count
        lines = [l for l in verify.stderr.splitlines() if "w3gate.service" in l and "not found" not in l
                 and "executable" not in l.lower()]
        assert lines == [], verify.stderr
