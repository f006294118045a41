"""What the running node tells the outside: counters, latencies, rejection log lines, and the
``status.json`` that ``w3gate status`` reads (written atomically once a second)."""
from __future__ import annotations

import json
import logging
import os
import time
from bisect import bisect_left
from collections import Counter, OrderedDict, deque
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


class Buckets:
    """Cumulative counts of durations in fixed buckets (a Prometheus histogram's data): adding
    costs one bisect, and memory is fixed however many are added."""

    BOUNDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)  # seconds

    def __init__(self) -> None:
        self.counts = [0] * (len(self.BOUNDS) + 1)  # the last one: above every bound
        self.sum = 0.0

    def add(self, seconds: float, n: int = 1) -> None:
        """``n`` events that each took ``seconds`` (a batch's events finish together)."""
        self.counts[bisect_left(self.BOUNDS, seconds)] += n
        self.sum += seconds * n

    def cumulative(self) -> list[tuple[str, int]]:
        """``[(upper bound, events at or below it)]``, ending with ``("+Inf", all)``."""
        out, running = [], 0
        for bound, count in zip((*map(str, self.BOUNDS), "+Inf"), self.counts):
            running += count
            out.append((bound, running))
        return out


# The device family whose counts predate counting rejections by family (an older status.json).
UNKNOWN_FAMILY = "unknown"


MAX_REJECTING_DEVICES = 1024  # device ids whose rejections are kept (the most recent)


class Counters:
    """Accepted by kind and rejected by reason (and by device family and reason), cumulative
    across restarts."""

    def __init__(self, previous: dict | None = None) -> None:
        previous = previous or {}
        self.accepted: Counter[str] = Counter(previous.get("accepted", {}))
        self.rejected: Counter[str] = Counter(previous.get("rejected", {}))
        self.rejected_by_family: dict[str, Counter[str]] = {
            family: Counter(reasons) for family, reasons in previous.get("rejected_by_family", {}).items()}
        for reason, count in self.rejected.items():  # counted before families were: "unknown"
            missing = count - sum(reasons.get(reason, 0) for reasons in self.rejected_by_family.values())
            if missing > 0:
                self.rejected_by_family.setdefault(UNKNOWN_FAMILY, Counter())[reason] += missing
        self.redelivered: int = previous.get("redelivered", 0)  # broker resent what was already stored
        # by the device a refused message claims to be from, since this start (for the dashboard,
        # not status.json): a claim, not a proof; a flood of made-up ids keeps only the latest
        self.rejected_by_device: OrderedDict[str, Counter[str]] = OrderedDict()

    def reject(self, family: str, reason: str, device: str | None = None) -> None:
        """One refused message or frame of ``family`` ("pebble", "legacy"), claiming ``device``."""
        self.rejected[reason] += 1
        by_reason = self.rejected_by_family.get(family)
        if by_reason is None:
            by_reason = self.rejected_by_family[family] = Counter()
        by_reason[reason] += 1
        if device:
            reasons = self.rejected_by_device.pop(device, None) or Counter()
            reasons[reason] += 1
            self.rejected_by_device[device] = reasons  # the most recent last
            if len(self.rejected_by_device) > MAX_REJECTING_DEVICES:
                self.rejected_by_device.popitem(last=False)

    def snapshot(self) -> dict:
        return {"accepted": dict(self.accepted), "rejected": dict(self.rejected), "redelivered": self.redelivered,
                "rejected_by_family": {family: dict(reasons) for family, reasons in self.rejected_by_family.items()},
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
