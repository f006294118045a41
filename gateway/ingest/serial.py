"""Serial links to legacy sensors: ports found by pattern, opened as they appear, reopened
when they come back.

Ports are named by glob patterns (``/dev/serial/by-id/usb-*``: stable names that survive
re-enumeration) or by pyserial URLs (``socket://host:port``, ``rfc2217://…``). Every port is
opened with ``serial.serial_for_url`` (so benches can substitute a pty or a socket), and then
read without a thread: the event loop watches the port's file descriptor and hands each chunk
of bytes, not each frame, to the consumer. An unplugged port (EIO, end of file) is closed and
counted; the next scan reopens it when its name is back.

Another program may *hold* a port (``hold_port``: pairing a board with mpremote needs the line
to itself): the gateway lets go of a held port and leaves it alone until the hold ends.
"""
from __future__ import annotations

import asyncio
import glob
import hashlib
import logging
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import serial

from gateway.storage import atomic_write, private_dir

log = logging.getLogger("w3gate.serial")

READ_BYTES = 65536
HOLD_TTL_S = 120.0  # a hold not refreshed for this long is stale (its holder died)
URL_SCHEMES = ("socket://", "rfc2217://", "spy://", "alt://", "hwgrep://")


@dataclass
class PortState:
    name: str
    handle: serial.SerialBase
    fd: int
    opened: float
    bytes_in: int = 0


class SerialLinks:
    """Every port matching ``patterns``; ``on_data(port, chunk)`` runs on the event loop and
    ``on_change(port, up)`` when a port opens or is lost."""

    def __init__(self, patterns: list[str], on_data: Callable[[str, bytes], None], *,
                 baudrate: int = 115200, rescan_s: float = 1.0,
                 on_change: Callable[[str, bool], None] | None = None, hold_dir: Path | None = None) -> None:
        self.patterns = list(patterns)
        self.on_data = on_data
        self.on_change = on_change or (lambda port, up: None)
        self.baudrate = baudrate
        self.rescan_s = rescan_s
        self.hold_dir = hold_dir
        self.ports: dict[str, PortState] = {}
        self.opens = 0
        self.losses = 0
        self._failed: dict[str, float] = {}  # port -> when opening it last failed (log once a minute)
        self._loop: asyncio.AbstractEventLoop | None = None

    async def run(self, stop: asyncio.Event) -> None:
        self._loop = asyncio.get_running_loop()
        try:
            while not stop.is_set():
                self.scan()
                try:
                    await asyncio.wait_for(stop.wait(), self.rescan_s)
                except asyncio.TimeoutError:
                    pass
        finally:
            for name in list(self.ports):
                self._close(name, lost=False)

    def candidates(self) -> list[str]:
        names: list[str] = []
        for pattern in self.patterns:
            if pattern.startswith(URL_SCHEMES):
                names.append(pattern)
            else:
                names.extend(sorted(glob.glob(pattern)))
        return names

    def scan(self) -> None:
        """Open every matching port that is not open yet, and let go of held ones."""
        held = held_ports(self.hold_dir) if self.hold_dir else set()
        for name in list(self.ports):
            if os.path.realpath(name) in held:
                log.info("serial %s: held by another program; letting go", name)
                self._close(name, lost=False)
        for name in self.candidates():
            if name not in self.ports and os.path.realpath(name) not in held:
                self._open(name)

    def write(self, port: str, data: bytes) -> bool:
        """Send bytes (a downlink frame) to a port; False when the port is not open or fails."""
        state = self.ports.get(port)
        if state is None:
            return False
        try:
            state.handle.write(data)
            return True
        except (OSError, serial.SerialException) as e:
            log.warning("serial %s: write failed (%s); closing it", port, e)
            self._close(port, lost=True)
            return False

    def _open(self, name: str) -> None:
        try:
            handle = serial.serial_for_url(name, baudrate=self.baudrate, timeout=0, write_timeout=1.0)
            fd = handle.fileno()
        except (OSError, ValueError, serial.SerialException) as e:
            last = self._failed.get(name, 0.0)
            if time.monotonic() - last > 60:
                log.warning("serial %s: cannot open (%s); retrying every %.0f s", name, e, self.rescan_s)
                self._failed[name] = time.monotonic()
            return
        self._failed.pop(name, None)
        # bytes waiting from before we listened are kept: whole frames among them are good (a
        # board says HELLO as it boots), and the deframer drops a partial one
        self.ports[name] = PortState(name, handle, fd, time.time())
        assert self._loop is not None, "run() first"
        self._loop.add_reader(fd, self._readable, name)
        self.opens += 1
        log.info("serial %s: open", name)
        self.on_change(name, True)

    def _readable(self, name: str) -> None:
        state = self.ports.get(name)
        if state is None:
            return
        try:
            chunk = os.read(state.fd, READ_BYTES)
        except BlockingIOError:
            return
        except OSError as e:  # EIO: the device went away (USB unplugged, pty closed)
            log.warning("serial %s: lost (%s)", name, e.strerror or e)
            return self._close(name, lost=True)
        if not chunk:
            log.warning("serial %s: lost (end of file)", name)
            return self._close(name, lost=True)
        state.bytes_in += len(chunk)
        self.on_data(name, chunk)

    def _close(self, name: str, *, lost: bool) -> None:
        state = self.ports.pop(name, None)
        if state is None:
            return
        if self._loop is not None:
            self._loop.remove_reader(state.fd)
        try:
            state.handle.close()
        except (OSError, serial.SerialException):
            pass
        if lost:
            self.losses += 1
        self.on_change(name, False)

    def status(self) -> dict:
        return {"ports": {n: {"since": s.opened, "bytes_in": s.bytes_in} for n, s in self.ports.items()},
                "opens": self.opens, "losses": self.losses}


def _hold_file(hold_dir: Path, port: str) -> Path:
    return hold_dir / hashlib.sha256(os.path.realpath(port).encode()).hexdigest()[:16]


def held_ports(hold_dir: Path) -> set[str]:
    """Real paths of the ports other programs hold now."""
    held = set()
    try:
        entries = list(os.scandir(hold_dir))
    except FileNotFoundError:
        return held
    for entry in entries:
        try:
            if time.time() - entry.stat().st_mtime < HOLD_TTL_S:
                held.add(Path(entry.path).read_text())
        except OSError:
            continue
    return held


@contextmanager
def hold_port(hold_dir: Path, port: str, *, settle_s: float = 0.0) -> Iterator[Callable[[], None]]:
    """Keep a running gateway off ``port`` for the duration; yields a function that refreshes the
    hold (call it during long work). ``settle_s``: wait this long for the gateway to let go."""
    private_dir(hold_dir)
    path = _hold_file(hold_dir, port)
    atomic_write(path, os.path.realpath(port).encode(), mode=0o600)
    try:
        if settle_s:
            time.sleep(settle_s)
        yield lambda: os.utime(path)
    finally:
        path.unlink(missing_ok=True)
