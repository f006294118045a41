"""The w3gate layer on a copy of the cached base: the venv in /opt/w3gate, the service exactly as
``w3gate service install`` lays it out, first boot through cloud-init, and nothing secret.

Why each piece is here and not in the base: all of it changes with w3gate, and the base takes
45 minutes to make; this takes a few.
"""
from __future__ import annotations

import datetime as dt
import re
import shlex
import shutil
from pathlib import Path

from image import recipe, rootfs
from image.rootfs import ImageError, Log

HERE = Path(__file__).resolve().parent
VENV = "/opt/w3gate"
W3GATE = f"{VENV}/bin/w3gate"
UNIT_DIRS = ("lib/systemd/system", "usr/lib/systemd/system", "etc/systemd/system")

FSTAB = f"""# w3gate image: partitions by label, the same on an SD card (mmcblk0) and under QEMU (vda)
LABEL={recipe.ROOT_LABEL}  /               ext4  rw,noatime,errors=remount-ro       0 1
LABEL={recipe.BOOT_LABEL}  /boot/firmware  vfat  rw,noatime,nofail,umask=0077       0 2
"""

# sshd refuses to start without host keys; the image ships none (each card makes its own:
# cloud-init at first boot, or this, whichever comes first)
SSH_KEYS_DROPIN = """[Service]
ExecStartPre=
ExecStartPre=/usr/bin/ssh-keygen -A
ExecStartPre=/usr/sbin/sshd -t
"""

# A Pi has no real-time clock: wait up to 30 s for NTP before the gateway takes Pebble readings
# (their timestamps are checked against this clock), but never block an offline gateway.
CLOCK_DROPIN = """[Unit]
After=time-sync.target systemd-timesyncd.service

[Service]
# "+": outside the gateway's sandbox, which forbids reading the kernel's clock state
ExecStartPre=-+/usr/bin/timeout 30 /lib/systemd/systemd-time-wait-sync
"""

# Boot waits for any one network, 30 s at most, and never fails for want of one: a gateway may be
# offline (legacy sensors on serial and BLE need no network), and the stock wait fails the boot
# after 2 minutes when no link comes up.
ONLINE_DROPIN = """[Service]
ExecStart=
ExecStart=-/lib/systemd/systemd-networkd-wait-online --any --timeout=30
"""


def install_w3gate(root: Path, wheels: Path, own_wheel: Path, log: Log, *, compile: bool = True) -> str:
    """/opt/w3gate: a venv of the target's Python with w3gate from the wheelhouse; returns
    ``w3gate --version`` as the arm64 install prints it. ``compile``: byte-compile now (the image:
    a Pi then starts faster and never writes /opt), not when only checking that it runs."""
    drop = root / "tmp/w3gate-wheels"
    shutil.rmtree(drop, ignore_errors=True)
    shutil.copytree(wheels, drop)
    shutil.copy2(own_wheel, drop / own_wheel.name)
    try:
        with rootfs.entered(root) as run:
            shutil.rmtree(root / VENV.lstrip("/"), ignore_errors=True)
            run("python3", "-m", "venv", VENV)
            run(f"{VENV}/bin/pip", "install", "--no-index", "--no-cache-dir", "--progress-bar", "off",
                *([] if compile else ["--no-compile"]),
                "--find-links", "/tmp/w3gate-wheels", f"/tmp/w3gate-wheels/{own_wheel.name}", log=log)
            version = run(W3GATE, "--version").stdout.strip()
            run(f"{VENV}/bin/python", "-c", "import wasm3, cryptography, coincurve, web3")  # the compiled parts load
            frozen = run(f"{VENV}/bin/pip", "freeze", "--all").stdout
    finally:
        shutil.rmtree(drop, ignore_errors=True)
    (root / VENV.lstrip("/") / "installed.txt").write_text(frozen)
    log(f"layer: {version} in {VENV} ({len(frozen.splitlines())} packages)")
    return version


def install_service(root: Path, log: Log) -> None:
    """The units, account, configuration and data directory, by the code ``w3gate service
    install`` runs on a live system (docs/service.md)."""
    from gateway.service.install import install
    from gateway.service.units import current_program

    session = install(program=current_program(W3GATE), root=root, echo=lambda line: log(f"service: {line}"))
    # what a staged install only prints: systemctl works offline on a root; the account is made
    # at first boot by systemd-sysusers from the sysusers.d file the install wrote
    for line in session.done:
        cmd = shlex.split(line)
        if cmd[0] != "systemctl":
            continue
        if cmd[-2] == "disable" and not any((root / d / cmd[-1]).exists() for d in UNIT_DIRS):
            continue  # nothing to disable (a root without Debian's mosquitto)
        rootfs.run_logged(cmd, log, prefix="systemctl")
    dropins = root / "etc/systemd/system/w3gate.service.d"
    dropins.mkdir(parents=True, exist_ok=True)
    (dropins / "10-clock.conf").write_text(CLOCK_DROPIN)


def configure_system(root: Path, build_id: str, version: str, log: Log) -> None:
    """Boot by label, first boot from the boot partition, and the names the LAN sees."""
    etc = root / "etc"
    (etc / "fstab").write_text(FSTAB)
    (etc / "hostname").write_text("w3gate\n")
    (etc / "hosts").write_text("127.0.0.1\tlocalhost\n127.0.1.1\tw3gate\n::1\t\tlocalhost ip6-localhost ip6-loopback\n")
    # raspi-firmware writes cmdline.txt at every kernel update: root by label from now on
    default = etc / "default/raspi-firmware"
    text = default.read_text() if default.exists() else ""
    text = re.sub(r"^#?\s*ROOTPART=.*$", f"ROOTPART=LABEL={recipe.ROOT_LABEL}", text, flags=re.MULTILINE)
    if f"ROOTPART=LABEL={recipe.ROOT_LABEL}" not in text:
        text += f"ROOTPART=LABEL={recipe.ROOT_LABEL}\n"
    default.write_text(text)
    cmdline = root / "boot/firmware/cmdline.txt"
    if not cmdline.exists():
        raise ImageError("the base has no /boot/firmware/cmdline.txt: raspi-firmware did not run")
    line = re.sub(r"root=\S+", f"root=LABEL={recipe.ROOT_LABEL}", cmdline.read_text().strip())
    cmdline.write_text(line + "\n")
    cloud = etc / "cloud/cloud.cfg.d"
    cloud.mkdir(parents=True, exist_ok=True)
    shutil.copy2(HERE / "firstboot/99-w3gate.cfg", cloud / "99-w3gate.cfg")
    online = etc / "systemd/system/systemd-networkd-wait-online.service.d"
    online.mkdir(parents=True, exist_ok=True)
    (online / "10-any.conf").write_text(ONLINE_DROPIN)
    ssh = etc / "systemd/system/ssh.service.d"
    ssh.mkdir(parents=True, exist_ok=True)
    (ssh / "10-host-keys.conf").write_text(SSH_KEYS_DROPIN)
    (etc / "w3gate-image").write_text(f"BUILD_ID={build_id}\nW3GATE={version}\nBASE={recipe.SUITE} {recipe.ARCH}\n")
    log(f"layer: boots root=LABEL={recipe.ROOT_LABEL}; cloud-init reads {recipe.BOOT_LABEL}; hostname w3gate")


def strip_secrets(root: Path, log: Log) -> None:
    """Nothing one card could share with another: host keys, machine id, random seed, and the
    build's own traces."""
    removed = 0
    for pattern in ("etc/ssh/ssh_host_*", "var/lib/systemd/random-seed", "var/lib/dbus/machine-id",
                    "var/lib/w3gate/*", "root/.bash_history", "var/cache/apt/*.bin",
                    "var/lib/apt/lists/*_Packages", "var/lib/apt/lists/*_InRelease", "var/log/*.log",
                    "var/log/apt/*", "tmp/*", "var/tmp/*"):
        for path in root.glob(pattern):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
            removed += 1
    (root / "etc/machine-id").write_text("")  # empty: systemd makes one at first boot (ConditionFirstBoot)
    dbus = root / "var/lib/dbus/machine-id"
    dbus.parent.mkdir(parents=True, exist_ok=True)
    dbus.symlink_to("/etc/machine-id")
    leftovers = [p for p in (root / "var/lib/w3gate").iterdir()] if (root / "var/lib/w3gate").exists() else []
    if leftovers or list(root.glob("etc/ssh/ssh_host_*")):
        raise ImageError(f"secrets left in the image: {leftovers}")
    log(f"layer: no host keys, machine id or node key ({removed} build traces removed)")


def seeds(build_id: str) -> dict[str, str]:
    """The first-boot files on the boot partition: cloud-init's NoCloud seed, editable on any PC."""
    return {"user-data": (HERE / "firstboot/user-data").read_text(),
            "network-config": (HERE / "firstboot/network-config").read_text(),
            "meta-data": ("# cloud-init applies user-data and network-config once per instance-id:\n"
                          "# change it to apply edits made after the first boot\n"
                          f"instance-id: w3gate-{build_id}\n")}


def build(base: Path, wheels: Path, own_wheel: Path, work: Path, log: Log) -> tuple[Path, str, str]:
    """The image's root file system in ``work`` (base copy + w3gate); returns it, the build id and
    w3gate's version."""
    root = work / "root"
    log("layer: copying the base")
    rootfs.copy_tree(base, root)
    build_id = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d%H%M%S")
    version = install_w3gate(root, wheels, own_wheel, log)
    install_service(root, log)
    configure_system(root, build_id, version, log)
    strip_secrets(root, log)
    return root, build_id, version.rsplit(" ", 1)[-1]
