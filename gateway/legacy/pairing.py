"""Pairing a legacy sensor: a fresh identity, the firmware and its settings written to the board
with mpremote (serial) or its identity over the PROVISION characteristic (BLE), the device
registered, and its first signed frame checked.

The board is reached at its MicroPython REPL over a serial port. mpremote runs with ``resume``
(no soft reset: on the unix port a soft reset ends the interpreter, and a board keeps whatever
it runs). The key goes to the board in a file that only this process can read, never on a
command line, and is never printed or logged.
"""
from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import serial

from device_fw import frame as wire
from gateway.config import Config
from gateway.errors import W3gateError
from gateway.ingest.serial import hold_port
from gateway.legacy.registry import LegacyDevice, LegacyRegistry, check_config, new_legacy_device

FIRMWARE_DIR = Path(wire.__file__).resolve().parent
BOARD_MAIN = "from device_fw import app\napp.main()\n"  # /main.py: what a board runs at boot
EXEC_TIMEOUT_S = 30.0
# run /main.py now, with the modules just written: a board paired before still has the old ones
# imported (it returned to the REPL without a reset)
START_FIRMWARE = ("import sys\nfor m in [m for m in sys.modules if m == 'main' or m.startswith('device_fw')]:\n"
                  "    del sys.modules[m]\nimport main")


class PairingError(W3gateError):
    reason = "pairing"


@dataclass
class Paired:
    device: LegacyDevice
    first_frame: str  # "hello" or "data"
    first_payload: dict
    seconds: float


def firmware_files() -> list[tuple[Path, str]]:
    """(local file, path on the board) of the firmware: the device_fw package and /main.py."""
    files = [(p, f"device_fw/{p.relative_to(FIRMWARE_DIR).as_posix()}")
             for p in sorted(FIRMWARE_DIR.rglob("*.py")) if "__pycache__" not in p.parts]
    return files


def remote_dirs(files: list[tuple[Path, str]]) -> list[str]:
    dirs = {str(Path(remote).parent) for _, remote in files}
    return sorted(d for d in dirs if d != ".")


class Mpremote:
    """The mpremote CLI against one port, without soft resets."""

    def __init__(self, port: str) -> None:
        exe = shutil.which("mpremote", path=os.path.dirname(sys.executable)) or shutil.which("mpremote")
        self.cmd = [exe] if exe else [sys.executable, "-m", "mpremote"]
        self.port = port

    def run(self, *args: str, check: bool = True, timeout: float = EXEC_TIMEOUT_S) -> subprocess.CompletedProcess:
        try:
            result = subprocess.run([*self.cmd, "connect", self.port, "resume", *args], capture_output=True,
                                    text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise PairingError(f"mpremote {args[0]} on {self.port} did not finish in {timeout:.0f} s",
                               reason="board_timeout") from None
        if check and result.returncode != 0:
            tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
            raise PairingError(f"mpremote {args[0]} on {self.port} failed: {' / '.join(tail)}", reason="board")
        return result


def pair_serial(config: Config, port: str, *, name: str, settings: dict, link: str = "stdio",
                replace: bool = False, ble: bool = False, check_timeout_s: float = 15.0,
                progress: Callable[[str, int, int], None] = lambda step, done, total: None) -> Paired:
    """Flash and register a sensor on ``port``. ``progress(step, done, total)`` reports the copy.

    ``replace``: a device already paired under ``name`` is first told (with its own key) to stop
    its firmware and return to the REPL, and is unpaired when the board takes its new identity."""
    registry = LegacyRegistry(config.layout.legacy_devices)
    settings = check_config(settings)
    old = registry.find(name) if name else None
    if old is not None and not replace:
        raise PairingError(f"a sensor named {name!r} is already paired (--replace pairs the board again)",
                           reason="exists")
    started = time.monotonic()
    with hold_port(config.layout.serial_holds, port, settle_s=config.serial.rescan_s + 0.3) as refresh:
        if old is not None:
            _return_to_repl(port, old)
        board = Mpremote(port)
        probe = board.run("exec", "import sys; print(sys.implementation.name, sys.platform)", check=False)
        if probe.returncode != 0 or "micropython" not in probe.stdout:
            raise PairingError(f"no MicroPython REPL answers on {port} ({(probe.stderr or probe.stdout).strip()[-200:]}); "
                               "is it a board with MicroPython, and not running other firmware?", reason="no_repl")
        device = new_legacy_device(name, transport="ble" if ble else "serial", address=port, config=settings)
        files = firmware_files()
        total = len(files) + 2
        progress("firmware", 0, total)
        for d in remote_dirs(files):
            board.run("fs", "mkdir", f":{d}", check=False)  # exists already on a board paired before
        for n, (local, remote) in enumerate(files, 1):
            board.run("fs", "cp", str(local), f":{remote}")
            refresh()
            progress("firmware", n, total)
        with tempfile.TemporaryDirectory(prefix="w3gate-pair-") as tmp:  # 0700: the key stays ours
            identity, main = Path(tmp) / "device.json", Path(tmp) / "main.py"
            fd = os.open(identity, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump({"id": device.device_id, "key": device.key, "name": name, "link": link, "ble": ble,
                           **settings}, f)
            main.write_text(BOARD_MAIN)
            board.run("fs", "cp", str(identity), ":device.json")
            progress("settings", len(files) + 1, total)
            board.run("fs", "cp", str(main), ":main.py")
        board.run("fs", "rm", ":state.json", check=False)  # a new identity starts a new seq
        progress("settings", total, total)
        if old is not None:  # its firmware has stopped and its key is overwritten on the board
            registry.remove(old.device_id)
        registry.add(device)
        try:
            board.run("exec", "--no-follow", START_FIRMWARE)
            kind, payload = first_signed_frame(port, device, timeout_s=check_timeout_s)
        except W3gateError:
            registry.remove(device.device_id)
            raise
    return Paired(device, kind, payload, time.monotonic() - started)


def _return_to_repl(port: str, device: LegacyDevice) -> None:
    """Ask our firmware, with the device's key, to stop and give the REPL back."""
    registry_seq = max(device.config_seq + 1, int(time.time()))
    frame = wire.encode(wire.CONFIG, bytes.fromhex(device.device_id), registry_seq, b'{"repl":true}',
                        device.key_bytes)
    try:
        with serial.serial_for_url(port, timeout=0.2) as line:
            line.write(frame)
            time.sleep(1.0)
            line.reset_input_buffer()
    except (OSError, serial.SerialException) as e:
        raise PairingError(f"cannot open {port}: {e}", reason="no_port") from None


def first_signed_frame(port: str, device: LegacyDevice, *, timeout_s: float) -> tuple[str, dict]:
    """The first frame on ``port`` that carries the device's MAC: ("hello" | "data", payload)."""
    key_of = {bytes.fromhex(device.device_id): device.key_bytes}.get
    deframer = wire.Deframer()
    deadline = time.monotonic() + timeout_s
    try:
        with serial.serial_for_url(port, timeout=0.2) as line:
            while time.monotonic() < deadline:
                for raw in deframer.feed(line.read(4096)):
                    try:
                        frame_type, _, _, payload = wire.decode(raw, key_of)
                    except wire.FrameError:
                        continue  # REPL chatter, or another device on the line
                    if frame_type in (wire.HELLO, wire.READING):
                        return ("hello" if frame_type == wire.HELLO else "data"), json.loads(payload)
    except (OSError, serial.SerialException) as e:
        raise PairingError(f"lost {port} while waiting for the first frame: {e}", reason="no_port") from None
    raise PairingError(f"the board was flashed but sent no signed frame in {timeout_s:.0f} s; "
                       "is the firmware's link set right?", reason="no_frame")


async def pair_ble(config: Config, name: str, *, settings: dict, replace: bool = False,
                   scan_s: float = 10.0, check_timeout_s: float = 15.0, scanner_backend=None, client_backend=None,
                   progress: Callable[[str, int, int], None] = lambda step, done, total: None) -> Paired:
    """Pair a BLE sensor that advertises ``name`` and is waiting for an identity: write it over
    the PROVISION characteristic, register it, and check its first signed notification."""
    from bleak import BleakClient, BleakScanner
    from bleak.exc import BleakError

    from device_fw import gatt

    registry = LegacyRegistry(config.layout.legacy_devices)
    settings = check_config(settings)
    old = registry.find(name)
    if old is not None and not replace:
        raise PairingError(f"a sensor named {name!r} is already paired (--replace pairs it again)", reason="exists")
    started = time.monotonic()
    total = 4
    progress("scanning", 0, total)
    found = await BleakScanner.find_device_by_filter(
        lambda d, adv: (adv.local_name or d.name) == name and gatt.SERVICE in adv.service_uuids,
        timeout=scan_s, backend=scanner_backend)
    if found is None:
        raise PairingError(f"no sensor advertising {name!r} with the w3gate service in {scan_s:.0f} s",
                           reason="not_found")
    progress("connecting", 1, total)
    frames: asyncio.Queue[bytes] = asyncio.Queue()
    try:
        async with BleakClient(found, timeout=check_timeout_s, backend=client_backend) as client:
            deframer = wire.Deframer()
            await client.start_notify(gatt.DATA, lambda char, data: [frames.put_nowait(f) for f in deframer.feed(data)])
            if old is not None:  # its own key tells it to forget its identity
                seq = max(old.config_seq + 1, int(time.time()))
                for chunk in gatt.chunks(wire.encode(wire.CONFIG, bytes.fromhex(old.device_id), seq, b'{"repl":true}',
                                                     old.key_bytes), client.mtu_size):
                    await client.write_gatt_char(gatt.CONFIG, chunk, response=True)
                await asyncio.sleep(0.5)
            if client.services.get_characteristic(gatt.PROVISION) is None:
                raise PairingError(f"{name!r} offers no provisioning characteristic", reason="not_provisionable")
            device = new_legacy_device(name, transport="ble", address=found.address, config=settings)
            blob = json.dumps({"id": device.device_id, "key": device.key, "name": name, **settings},
                              separators=(",", ":")).encode()
            progress("provisioning", 2, total)
            if old is not None:  # it forgot that identity
                registry.remove(old.device_id)
            registry.add(device)
            try:
                for chunk in gatt.chunks(b"\x00" + wire.cobs_encode(blob) + b"\x00", client.mtu_size):
                    await client.write_gatt_char(gatt.PROVISION, chunk, response=True)
                progress("first frame", 3, total)
                kind, payload = await _first_notified(frames, device, check_timeout_s)
            except BaseException:
                registry.remove(device.device_id)
                raise
    except (BleakError, OSError, asyncio.TimeoutError) as e:
        raise PairingError(f"BLE link to {name!r} failed: {e or type(e).__name__}", reason="ble") from None
    progress("done", total, total)
    return Paired(device, kind, payload, time.monotonic() - started)


async def _first_notified(frames: "asyncio.Queue[bytes]", device: LegacyDevice, timeout_s: float) -> tuple[str, dict]:
    key_of = {bytes.fromhex(device.device_id): device.key_bytes}.get
    deadline = time.monotonic() + timeout_s
    while (left := deadline - time.monotonic()) > 0:
        try:
            raw = await asyncio.wait_for(frames.get(), left)
        except asyncio.TimeoutError:
            break
        try:
            frame_type, _, _, payload = wire.decode(raw, key_of)
        except wire.FrameError:
            continue  # frames made before it had this identity
        if frame_type in (wire.HELLO, wire.READING):
            return ("hello" if frame_type == wire.HELLO else "data"), json.loads(payload)
    raise PairingError(f"the sensor took its identity but sent no signed frame in {timeout_s:.0f} s",
                       reason="no_frame")
