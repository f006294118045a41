"""Start a virtual BLE bench: the radio process (``radio.py``) and emulated sensors, each its own
process, reached by the gateway over HCI-over-TCP like any other controller (tests, the demo,
benches)."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from hardware.process import stop_group


class Radio:
    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        port_file = directory / "radio.port"
        self.proc = subprocess.Popen([sys.executable, "-m", "hardware.ble_sensor.radio", "--port-file", str(port_file)],
                                     stdout=subprocess.DEVNULL, stderr=open(directory / "radio.log", "ab"),
                                     start_new_session=True)
        deadline = time.monotonic() + 10
        while not port_file.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the virtual radio did not start: {(directory / 'radio.log').read_text()}")
            time.sleep(0.02)
        self.transport = f"tcp-client:127.0.0.1:{port_file.read_text()}"

    def stop(self) -> None:
        stop_group(self.proc)


class Sensor:
    """``python -m hardware.ble_sensor`` as a process; faults are lines on its stdin."""

    def __init__(self, radio: Radio, directory: Path, name: str, *, period_ms: int = 100,
                 device_id: str | None = None, key: bytes | None = None) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.state = directory / f"{name}.state.json"
        self.log = directory / f"{name}.log"
        cmd = [sys.executable, "-m", "hardware.ble_sensor", "--transport", radio.transport, "--name", name,
               "--state", str(self.state), "--period-ms", str(period_ms)]
        if device_id and key:
            cmd += ["--id", device_id, "--key", key.hex()]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                     stderr=open(self.log, "ab"), start_new_session=True,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})

    def fault(self, command: str) -> None:
        self.proc.stdin.write(command.encode() + b"\n")
        self.proc.stdin.flush()

    def stop(self) -> None:
        stop_group(self.proc)
