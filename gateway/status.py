"""What the running node tells the outside: counters, latencies, rejection log lines, and the
``status.json`` that ``w3gate status`` reads (written atomically once a second)."""
from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter, deque
from pathlib import Path

from gateway.storage import FILE_MODE


reject_log = logging.getLogger("w3gate.reject")


class RejectLog:
    """One readable line per rejection, but at most ``burst`` lines per reason per ``period``;
    the rest are summed up in one line, so a flood of garbage cannot flood the log."""

    def __init__(self, burst: int = 20, period: float = 10.0) -> None:
        self.burst, self.period = burst, period
        self._window: dict[str, tuple[float, int]] = {}
        self._seen_internal: set[tuple[str, str]] = set()

    def __call__(self, reason: str, device: str | None, topic: str, detail: str) -> None:
        now = time.monotonic()
        start, count = self._window.get(reason, (now, 0))
        if now - start > self.period:
            if count > self.burst:
                reject_log.warning("... %d more %s rejections in the last %.0f s", count - self.burst,
                                   reason, now - start)
            start, count = now, 0
        count += 1
        self._window[reason] = (start, count)
        if count <= self.burst:
            reject_log.warning("rejected %s from %s on %s: %s", reason, device or "?", topic, detail)


    def internal(self, exc: BaseException, device: str | None, topic: str) -> None:
        """A failure of ours on one message: its traceback is logged the first time this kind of
        failure happens (type and place), later ones are counted lines like any rejection."""
        tb = exc.__traceback__
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        where = f"{tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}" if tb is not None else "?"
        kind = (type(exc).__name__, where)
        if kind not in self._seen_internal and len(self._seen_internal) < 100:
            self._seen_internal.add(kind)
            reject_log.error("internal error on a message from %s on %s (a bug; the message is counted as "
                             "'internal' and acknowledged)", device or "?", topic, exc_info=exc)
            return
        self("internal", device, topic, f"{type(exc).__name__}: {str(exc)[:200]}")


class Latencies:
    """The most recent latencies (seconds), for p50/p99 without unbounded memory."""

    def __init__(self, size: int = 20000) -> None:
        self._values: deque[float] = deque(maxlen=size)

    def add(self, value: float) -> None:
        self._values.append(value)

    def percentiles(self) -> dict:
        if not self._values:
            return {}
        ordered = sorted(self._values)
        pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
        return {"p50_ms": round(pick(0.50) * 1000, 2), "p99_ms": round(pick(0.99) * 1000, 2),
                "max_ms": round(ordered[-1] * 1000, 2), "samples": len(ordered)}


class Counters:
    """Accepted by kind and rejected by reason, cumulative across restarts."""

    def __init__(self, previous: dict | None = None) -> None:
        previous = previous or {}
        self.accepted: Counter[str] = Counter(previous.get("accepted", {}))
        self.rejected: Counter[str] = Counter(previous.get("rejected", {}))
        self.redelivered: int = previous.get("redelivered", 0)  # broker resent what was already stored

    def snapshot(self) -> dict:
        return {"accepted": dict(self.accepted), "rejected": dict(self.rejected), "redelivered": self.redelivered,
                "accepted_total": sum(self.accepted.values()),
                "rejected_total": sum(self.rejected.values())}


def write_status(path: Path, status: dict) -> None:
    """Replace the status file atomically but without fsync: it is rewritten every second from the
    event loop, where an fsync would stall message handling, and losing it in a power cut costs
    nothing (the counters resume from the previous copy). The file is 0600 whatever the umask."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)  # a leftover could carry a wider mode
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    with open(fd, "wb") as f:
        f.write(json.dumps(status, indent=1, sort_keys=True).encode())
    os.replace(tmp, path)


def pid_alive(pid: int | None) -> bool:
    """Whether process ``pid`` exists (one of another account, e.g. the w3gate service user's, does)."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
        return True
    except PermissionError:  # another account's process: it exists
        return True
    except (ProcessLookupError, OverflowError):
        return False


def read_status(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None
