"""The real firmware (device_fw/) on the MicroPython unix port, its stdio on a pty: the test holds
the other end, as a gateway holds a board's USB serial port."""
from __future__ import annotations

import json
import os
import select
import subprocess
import time
import tty
from pathlib import Path

from device_fw import frame as wire
from hardware.board import micropython_exe

ROOT = Path(__file__).resolve().parents[2]


class FirmwareProcess:
    def __init__(self, directory: Path, *, device_id: bytes = bytes.fromhex("0011223344556677"),
                 key: bytes = bytes(range(32)), heap_kb: int | None = None, **device: object) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.device_id, self.key, self.heap_kb = device_id, key, heap_kb
        self.device = {"id": device_id.hex(), "key": key.hex(), "link": "stdio", "period_ms": 50,
                       "sensors": ["sim"], **device}
        (self.directory / "device.json").write_text(json.dumps(self.device))
        self.proc: subprocess.Popen | None = None
        self.master: int | None = None
        self.deframer = wire.Deframer()
        self.pending: list = []  # frames read but not yet asked for
        self.config_seq = 1000
        self.command_seq = 2000

    def start(self) -> "FirmwareProcess":
        master, slave = os.openpty()
        tty.setraw(master)
        tty.setraw(slave)
        cmd = [micropython_exe()]
        if self.heap_kb:
            cmd += ["-X", f"heapsize={self.heap_kb}k"]
        self.proc = subprocess.Popen([*cmd, "-m", "device_fw.main"], cwd=self.directory, stdin=slave, stdout=slave,
                                     stderr=subprocess.PIPE, env={**os.environ, "MICROPYPATH": str(ROOT)})
        os.close(slave)
        self.master = master
        self.deframer = wire.Deframer()
        self.pending = []
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.master is not None:
            os.close(self.master)
            self.master = None

    def frames(self, count: int, timeout: float = 10.0) -> list[tuple[int, bytes, int, dict]]:
        """The next ``count`` frames (type, device id, seq, payload), checked with the key."""
        out = self.pending
        deadline = time.monotonic() + timeout
        while len(out) < count:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"only {len(out)} of {count} frames in {timeout} s; "
                                     f"firmware exit {self.proc.poll()}: {self._stderr()}")
            if not select.select([self.master], [], [], min(left, 0.2))[0]:
                continue
            try:
                chunk = os.read(self.master, 4096)
            except OSError:  # the firmware exited and the pty closed
                raise AssertionError(f"the firmware exited {self.proc.wait()}: {self._stderr()}") from None
            for raw in self.deframer.feed(chunk):
                t, device_id, seq, payload = wire.decode(raw, lambda i: self.key)
                out.append((t, device_id, seq, json.loads(payload)))
        self.pending = out[count:]
        return out[:count]

    def until(self, frame_type: int, timeout: float = 10.0) -> tuple[int, bytes, int, dict]:
        deadline = time.monotonic() + timeout
        while True:
            (f,) = self.frames(1, timeout=max(0.1, deadline - time.monotonic()))
            if f[0] == frame_type:
                return f

    def write(self, data: bytes) -> None:
        os.write(self.master, data)

    def send_config(self, settings: dict, *, seq: int | None = None, key: bytes | None = None) -> int:
        self.config_seq = seq if seq is not None else self.config_seq + 1
        self.write(wire.encode(wire.CONFIG, self.device_id, self.config_seq, json.dumps(settings).encode(),
                               key or self.key))
        return self.config_seq

    def send_command(self, command: dict | bytes, *, seq: int | None = None, key: bytes | None = None) -> int:
        self.command_seq = seq if seq is not None else self.command_seq + 1
        payload = command if isinstance(command, bytes) else json.dumps(command).encode()
        self.write(wire.encode(wire.COMMAND, self.device_id, self.command_seq, payload, key or self.key))
        return self.command_seq

    def relay(self) -> str | None:
        """The relay's level as the firmware drove it ("0", "1"), None if never driven."""
        path = self.directory / "relay.out"
        return path.read_text() if path.exists() else None

    def _stderr(self) -> str:
        if self.proc.poll() is None or self.proc.stderr is None:
            return ""
        return self.proc.stderr.read().decode(errors="replace")[-1000:]
