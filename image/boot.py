"""``./dev.sh image-test``: boot the image's own kernel and root file system under
qemu-system-aarch64 ``-M virt`` (no Pi firmware needed: this tests userland, systemd, the units
and first boot) and check the gateway in it the way its owner would, over SSH and the LAN ports.

What it checks, in order: first boot from a cloud-init seed written to the boot partition (user,
SSH key, hostname) and the root grown to the disk; systemd reaching multi-user with no failed
unit; w3gate.service and w3gate-broker.service active; ``w3gate doctor`` passing; the node key
made on the device; a signed Pebble reading, sent by the emulator on this machine through the
forwarded TLS port with the certificate the device issued, accepted and durable. It reports the
boot time and the gateway's and broker's resident memory.

Why QEMU and not a Pi: no hardware here. TCG (no KVM) emulates the CPUs, so boot takes minutes,
and the figures are for the emulated machine, not a Pi.
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from image import recipe
from image.progress import Steps
from image.rootfs import ImageError, Log

REPO = Path(__file__).resolve().parent.parent
SSH_WAIT_S = 1200  # TCG on 2 cores: first boot (cloud-init, host keys, growpart) takes minutes
ADMIN = "tester"
SERVICE = "sudo -u w3gate env W3GATE_CONFIG=/etc/w3gate/w3gate.toml /opt/w3gate/bin/w3gate"


def newest(out: Path) -> Path:
    images = sorted(out.glob("w3gate-*.img"), key=lambda p: p.stat().st_mtime)
    if not images:
        raise ImageError(f"no image in {out}: build one with ./dev.sh image")
    return images[-1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Machine:
    """The booted image: its QEMU process and how to reach it."""

    proc: subprocess.Popen
    ssh_port: int
    mqtts_port: int
    key: Path
    console: Path
    figures: dict = field(default_factory=dict)

    def ssh(self, command: str, *, timeout: float = 300, check: bool = True, stdin: bytes = b"",
            binary: bool = False) -> subprocess.CompletedProcess:
        """``command`` on the device as the test's admin user; stdout as text unless ``binary``."""
        cmd = ["ssh", "-i", str(self.key), "-p", str(self.ssh_port), "-o", "StrictHostKeyChecking=no",
               "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=10",
               "-o", "BatchMode=yes", f"{ADMIN}@127.0.0.1", command]
        done = subprocess.run(cmd, input=stdin, capture_output=True, timeout=timeout)
        out = done.stdout if binary else done.stdout.decode(errors="replace")
        err = done.stderr.decode(errors="replace")
        if check and done.returncode != 0:
            said = err.strip() or (out.strip() if isinstance(out, str) else "")
            raise ImageError(f"on the device: {command} exited {done.returncode}: {said[-1500:]}")
        return subprocess.CompletedProcess(cmd, done.returncode, out, err)

    def console_tail(self, lines: int = 1) -> str:
        try:
            text = self.console.read_text(errors="replace").strip().splitlines()
        except FileNotFoundError:
            return ""
        return " | ".join(text[-lines:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.ssh("sudo systemctl poweroff", check=False, timeout=30)
            try:
                self.proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def seed(ssh_public_key: str, build: str) -> dict[str, str]:
    user_data = ("#cloud-config\nhostname: w3gate\ntimezone: Etc/UTC\nusers:\n"
                 f"  - name: {ADMIN}\n    groups: [sudo, adm, systemd-journal]\n    shell: /bin/bash\n"
                 "    sudo: \"ALL=(ALL) NOPASSWD:ALL\"\n    lock_passwd: true\n"
                 f"    ssh_authorized_keys:\n      - {ssh_public_key}\nssh_pwauth: false\n")
    return {"user-data": user_data, "meta-data": f"instance-id: w3gate-image-test-{build}\n"}


def prepare(image: Path, work: Path, log: Log) -> tuple[Path, Path]:
    """A copy of ``image`` one GiB larger (growpart's work) with this test's first-boot seed."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    disk = work / "disk.img"
    subprocess.run(["cp", "--sparse=always", str(image), str(disk)], check=True)
    with disk.open("r+b") as f:
        f.truncate(image.stat().st_size + (1 << 30))
    key = work / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "image-test", "-f", str(key)], check=True)
    for name, text in seed(key.with_suffix(".pub").read_text().strip(), str(int(time.time()))).items():
        (work / name).write_text(text)
        # the boot partition starts at 4 MiB (image/assemble.py); mtools reaches it by offset
        subprocess.run(["mcopy", "-o", "-i", f"{disk}@@4M", str(work / name), f"::{name}"], check=True)
    log(f"disk {disk.stat().st_size >> 20} MiB with a seed for user {ADMIN}")
    return disk, key


def boot(image: Path, disk: Path, key: Path, work: Path, log: Log) -> Machine:
    kernel = image.with_name(image.name + ".vmlinuz")
    initrd = image.with_name(image.name + ".initrd")
    if not kernel.exists() or not initrd.exists():
        raise ImageError(f"{kernel.name} and {initrd.name} are missing beside the image (./dev.sh image writes them)")
    ssh_port, mqtts_port = free_port(), free_port()
    console = work / "console.log"
    cmd = ["qemu-system-aarch64", "-M", "virt", "-cpu", "max", "-smp", str(min(4, os.cpu_count() or 1)), "-m", "1024",
           "-kernel", str(kernel), "-initrd", str(initrd),
           "-append", f"root=LABEL={recipe.ROOT_LABEL} rw rootwait console=ttyAMA0 fsck.repair=yes",
           "-drive", f"file={disk},format=raw,if=none,id=hd0", "-device", "virtio-blk-pci,drive=hd0",
           "-netdev", f"user,id=net0,hostfwd=tcp:127.0.0.1:{ssh_port}-:22,hostfwd=tcp:127.0.0.1:{mqtts_port}-:8883",
           "-device", "virtio-net-pci,netdev=net0", "-device", "virtio-rng-pci",
           "-display", "none", "-monitor", "none", "-serial", f"file:{console}"]
    log(" ".join(shlex.quote(c) for c in cmd))
    proc = subprocess.Popen(cmd, stdout=(work / "qemu.log").open("wb"), stderr=subprocess.STDOUT)
    return Machine(proc, ssh_port, mqtts_port, key, console)


def wait_for_ssh(m: Machine, log: Log) -> float:
    began = time.monotonic()
    while time.monotonic() - began < SSH_WAIT_S:
        if m.proc.poll() is not None:
            raise ImageError(f"QEMU exited ({m.proc.returncode}); console: {m.console_tail(5)}")
        if m.ssh("true", check=False, timeout=30).returncode == 0:
            return time.monotonic() - began
        log(f"{time.monotonic() - began:4.0f} s  {m.console_tail()[-100:]}")
        time.sleep(5)
    raise ImageError(f"no SSH after {SSH_WAIT_S} s; console: {m.console_tail(10)}")


def check_system(m: Machine, log: Log) -> None:
    state = m.ssh("systemctl is-system-running --wait", check=False, timeout=900).stdout.strip()
    failed = m.ssh("systemctl --failed --no-legend --plain", check=False).stdout.strip()
    log(f"system: {state}; failed units: {failed or 'none'}")
    m.figures["boot"] = m.ssh("systemd-analyze time", check=False).stdout.strip().splitlines()[0:1]
    if state != "running":
        raise ImageError(f"systemd says {state!r}; failed units: {failed or 'none'}")
    grown = m.ssh("df --output=size -BM / | tail -1").stdout.strip()
    m.figures["root_size"] = grown
    log(f"root file system: {grown}")


def check_gateway(m: Machine, log: Log) -> None:
    deadline = time.monotonic() + 300
    while True:
        active = m.ssh("systemctl is-active w3gate.service w3gate-broker.service", check=False).stdout.split()
        if active == ["active", "active"]:
            break
        if time.monotonic() > deadline:
            journal = m.ssh("sudo journalctl -u w3gate -u w3gate-broker --no-pager -n 40", check=False).stdout
            raise ImageError(f"w3gate units are {active}:\n{journal}")
        time.sleep(3)
    key = json.loads(m.ssh(f"{SERVICE} key show --json").stdout)
    log(f"node key made on the device: {key['did']}")
    journal = m.ssh("sudo journalctl -b -u w3gate --no-pager -o cat", check=False).stdout
    troubles = [line for line in journal.splitlines() if "time-wait-sync" in line or "not permitted" in line]
    if troubles:  # the clock wait runs outside the unit's sandbox ("+"); it must not fail quietly ("-")
        raise ImageError("the clock wait before w3gate failed:\n" + "\n".join(troubles))
    healthz = m.ssh("/opt/w3gate/bin/python -c \"import urllib.request; "
                    "print(urllib.request.urlopen('http://127.0.0.1:8890/healthz', timeout=10).read().decode())\"",
                    check=False)
    if healthz.stdout.strip() != "ok":
        raise ImageError(f"the dashboard does not answer on 127.0.0.1:8890: {healthz.stdout}{healthz.stderr}")
    log("dashboard answers on 127.0.0.1:8890 (reach it with ssh -L 8890:127.0.0.1:8890)")
    doctor = m.ssh(f"{SERVICE} doctor", check=False, timeout=300)
    for line in doctor.stdout.splitlines():
        log(f"doctor: {line}")
    m.figures["doctor"] = doctor.stdout.strip().splitlines()
    if doctor.returncode != 0:
        raise ImageError("w3gate doctor failed on the device:\n" + doctor.stdout)


def check_pebble(m: Machine, work: Path, log: Log) -> None:
    """An emulated Pebble on this machine, provisioned by the device, publishes over mutual TLS
    through the forwarded port; the device keeps its reading."""
    from hardware.pebble.keystore import Keystore

    fleet = Keystore(work / "fleet")
    imei = fleet.ensure(1)[0].imei
    m.ssh("cat > /tmp/devices.json", stdin=fleet.devices_path.read_bytes())
    m.ssh(f"{SERVICE} device import /tmp/devices.json")
    bundle = m.ssh("sudo tar -C /var/lib/w3gate/broker/clients -c .", binary=True).stdout
    clients = work / "clients"
    clients.mkdir()
    subprocess.run(["tar", "-x", "-C", str(clients)], input=bundle, check=True)
    sim = [sys.executable, "-m", "gateway", "sim", "pebble", "--fleet-dir", str(fleet.directory), "--broker",
           f"127.0.0.1:{m.mqtts_port}", "--client-certs", str(clients), "--messages", "2", "--time-scale", "60",
           "--qos", "1", "--json", "--quiet"]
    done = subprocess.run(sim, capture_output=True, text=True, timeout=300, cwd=REPO)
    if done.returncode != 0:
        raise ImageError(f"the emulated Pebble could not publish: {done.stderr.strip()[-1500:]}")
    log(f"pebble {imei}: {done.stdout.strip()[:200]}")
    deadline = time.monotonic() + 120
    while True:
        records = json.loads(m.ssh(f"{SERVICE} records --device {imei} --json").stdout)
        if len(records) >= 2:
            break
        if time.monotonic() > deadline:
            raise ImageError(f"the device kept {len(records)} of the Pebble's 2 readings")
        time.sleep(3)
    log(f"the device accepted and kept {len(records)} readings from {imei}")
    m.figures["pebble_records"] = len(records)


def measure(m: Machine, log: Log) -> None:
    rss = m.ssh("for u in w3gate w3gate-broker; do pid=$(systemctl show -p MainPID --value $u); "
                "echo $u $(ps -o rss= -p $pid); done").stdout.split()
    m.figures["rss_kib"] = dict(zip(rss[0::2], map(int, rss[1::2])))
    m.figures["memory"] = m.ssh("free -m | sed -n 2p").stdout.split()
    log(f"RSS: {m.figures['rss_kib']}; free -m: {m.figures['memory']}")


def main(image: Path) -> int:
    image = image.resolve()
    out = image.parent
    steps = Steps(out / "image-test.log")
    work = Path("/var/tmp/w3gate-image-test")
    machine: Machine | None = None
    try:
        with steps.step("a copy of the image with this test's first-boot seed") as log:
            disk, key = prepare(image, work, log)
        with steps.step("boot under qemu-system-aarch64 until SSH answers (TCG: minutes)") as log:
            machine = boot(image, disk, key, work, log)
            machine.figures["ssh_after_s"] = round(wait_for_ssh(machine, log))
        with steps.step("systemd reaches multi-user, nothing failed, root grown") as log:
            check_system(machine, log)
        with steps.step("w3gate and its broker active, the node key made here, doctor passes") as log:
            check_gateway(machine, log)
        with steps.step("a signed Pebble reading through the forwarded TLS port is accepted") as log:
            check_pebble(machine, work, log)
        with steps.step("memory") as log:
            measure(machine, log)
    except ImageError as e:
        print(f"image test failed: {e}\n(console: {work / 'console.log'}; log: {steps.log_file})", file=sys.stderr)
        return 1
    finally:
        if machine is not None:
            machine.stop()
        steps.close()
    figures = machine.figures
    (out / "image-test.json").write_text(json.dumps(figures, indent=1) + "\n")
    print(json.dumps(figures, indent=1))
    return 0
