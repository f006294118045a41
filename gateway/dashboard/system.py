"""The machine the gateway runs on, as the dashboard shows it: CPU, memory, disk, uptime, and the
SoC's temperature on a Pi.

Read from /proc and /sys (Linux) rather than with psutil: a few small files, no dependency on
the Pi. ``SystemSampler.sample`` runs off the event loop, once a second; the CPU share is the
difference between two samples, so the first sample has none. Whatever cannot be read is None.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

PROC = Path("/proc")
THERMAL = Path("/sys/class/thermal/thermal_zone0/temp")


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError):
        return None


def _cpu_times(text: str | None) -> tuple[int, int] | None:
    """(busy, total) jiffies from the first line of /proc/stat."""
    if not text:
        return None
    fields = text.split("\n", 1)[0].split()
    if not fields or fields[0] != "cpu":
        return None
    try:
        values = [int(v) for v in fields[1:]]
    except ValueError:
        return None
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    return sum(values) - idle, sum(values)


def _meminfo(text: str | None) -> dict[str, int]:
    out = {}
    for line in (text or "").splitlines():
        name, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            out[name] = int(parts[0]) * 1024
    return out


class SystemSampler:
    """``data_dir``: where the buffer lives (its file system's free space is what matters)."""

    def __init__(self, data_dir: str | os.PathLike) -> None:
        self.data_dir = str(data_dir)
        self._cpu: tuple[int, int] | None = None
        self._page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

    def sample(self) -> dict:
        cpu = _cpu_times(_read(PROC / "stat"))
        cpu_percent = None
        if cpu is not None and self._cpu is not None and cpu[1] > self._cpu[1]:
            cpu_percent = round(100 * (cpu[0] - self._cpu[0]) / (cpu[1] - self._cpu[1]), 1)
        self._cpu = cpu or self._cpu
        mem = _meminfo(_read(PROC / "meminfo"))
        statm = (_read(PROC / "self" / "statm") or "").split()
        try:
            disk = os.statvfs(self.data_dir)
            disk_total, disk_free = disk.f_blocks * disk.f_frsize, disk.f_bavail * disk.f_frsize
        except OSError:
            disk_total = disk_free = None
        uptime = (_read(PROC / "uptime") or "").split()
        thermal = (_read(THERMAL) or "").strip()
        try:
            load = [round(v, 2) for v in os.getloadavg()]
        except OSError:
            load = None
        return {
            "time": time.time(),
            "cpu_percent": cpu_percent,
            "cpus": os.cpu_count(),
            "load": load,
            "memory_total": mem.get("MemTotal"),
            "memory_available": mem.get("MemAvailable"),
            "process_rss": int(statm[1]) * self._page if len(statm) > 1 and statm[1].isdigit() else None,
            "disk_total": disk_total,
            "disk_free": disk_free,
            "uptime_s": float(uptime[0]) if uptime else None,
            "soc_temperature": int(thermal) / 1000 if thermal.lstrip("-").isdigit() else None,
        }
