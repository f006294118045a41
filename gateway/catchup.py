"""Catching up: how far the applets and the anchoring are behind the buffer, how fast they gain
and when they will be done, shown while a gateway works through a large backlog (a start after a
week offline, or after the chain was down).

It reads only the buffer's figures that housekeeping refreshes once a second (``processed_upto``,
``anchored_upto`` and ``last_seq``), so it costs the ingest path nothing. In a terminal each stage
gets a rich progress bar; under systemd (no terminal) a log line every ``LOG_EVERY_S`` and the
unit's one-line STATUS (``systemctl status w3gate``). Each catch-up ends with one "caught up" line.
"""
from __future__ import annotations

import asyncio
import logging
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Protocol

log = logging.getLogger("w3gate.catchup")

START_BEHIND = 1_000  # records behind at start before it is shown: a normal restart is far below
LOG_EVERY_S = 10.0


@dataclass
class Stage:
    """One consumer of the buffer: ``cursor`` names its position in the buffer's stats; ``blocked``
    says why it cannot move now (the chain is down), or None. Its catch-up is the backlog found at
    the first look, ``(from_seq, target]``; records arriving meanwhile are live traffic, not backlog
    (anchoring is always a batch or so behind)."""

    name: str
    cursor: str
    blocked: Callable[[], str | None] = lambda: None
    started: float | None = None  # when the catch-up began; None before and after
    from_seq: int = 0
    target: int = 0
    position: int = 0
    rate: float = 0.0  # records/s, smoothed
    over: bool = False  # looked at, and caught up or nothing to catch up
    _last: tuple[float, int] | None = field(default=None, repr=False)  # (time, cursor) of the last sample

    @property
    def active(self) -> bool:
        return self.started is not None

    @property
    def total(self) -> int:
        return self.target - self.from_seq

    @property
    def done(self) -> int:
        return max(0, min(self.position, self.target) - self.from_seq)

    @property
    def left(self) -> int:
        return self.total - self.done

    @property
    def eta_s(self) -> float | None:
        return self.left / self.rate if self.rate > 0 else None

    def sample(self, stats: dict, now: float) -> str | None:
        """Take the buffer's figures; returns "started" or "finished" when that happens."""
        if self.over or "last_seq" not in stats:
            return None
        self.position = cursor = stats.get(self.cursor, 0)
        if self._last is not None and now > self._last[0]:
            instant = max(0, cursor - self._last[1]) / (now - self._last[0])
            self.rate = instant if self.rate == 0 else 0.7 * self.rate + 0.3 * instant
        self._last = (now, cursor)
        if self.started is None:
            if stats["last_seq"] - cursor < START_BEHIND:
                self.over = True
                return None
            self.started, self.from_seq, self.target = now, cursor, stats["last_seq"]
            return "started"
        if cursor >= self.target:
            self.over = True
            return "finished"
        return None

    def describe(self) -> str:
        """One line, e.g. ``applets: 41,200 of 200,000 records left, 3,100/s, about 13 s``."""
        head = f"{self.name}: {self.left:,} of {self.total:,} records left"
        blocked = self.blocked()
        if blocked:
            return f"{head}, waiting: {blocked}"
        eta = self.eta_s
        return f"{head}, {self.rate:,.0f}/s" + (f", about {_duration(eta)}" if eta is not None else "")

    def summary(self, now: float) -> str:
        took = now - (self.started or now)
        rate = self.total / took if took > 0 else 0.0
        return f"{self.name} caught up: {self.total:,} records in {_duration(took)} ({rate:,.0f}/s)"

    def finish(self) -> None:
        self.started = None


class View(Protocol):
    def show(self, stages: list[Stage], now: float) -> None: ...
    def finished(self, stage: Stage, now: float) -> None: ...
    def close(self) -> None: ...


class JournalView:
    """Without a terminal: a log line every ``LOG_EVERY_S`` and the systemd STATUS line."""

    def __init__(self, status: Callable[[str], object] = lambda text: None) -> None:
        self.status = status
        self._logged = 0.0

    def show(self, stages: list[Stage], now: float) -> None:
        line = "catching up: " + "; ".join(s.describe() for s in stages)
        self.status(line)
        if now - self._logged >= LOG_EVERY_S:
            self._logged = now
            log.info("%s", line)

    def finished(self, stage: Stage, now: float) -> None:
        self.status(stage.summary(now))  # not left saying "catching up"
        log.info("%s", stage.summary(now))

    def close(self) -> None:
        pass


class TerminalView:
    """In a terminal: a rich progress bar per stage on stderr; log lines print above the bars."""

    def __init__(self, console=None) -> None:
        from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn

        self.progress = Progress(TextColumn("{task.description:<10}"), BarColumn(), TaskProgressColumn(),
                                 TextColumn("{task.fields[detail]}"), console=console, transient=True,
                                 redirect_stderr=True, redirect_stdout=False)
        self.tasks: dict[str, int] = {}

    def show(self, stages: list[Stage], now: float) -> None:
        if not self.tasks:
            self.progress.start()
        for stage in stages:
            if stage.name not in self.tasks:
                self.tasks[stage.name] = self.progress.add_task(stage.name, total=stage.total, detail="")
            detail = stage.describe().split(": ", 1)[1]
            self.progress.update(self.tasks[stage.name], completed=stage.done, total=max(stage.total, 1),
                                 detail=detail)

    def finished(self, stage: Stage, now: float) -> None:
        task = self.tasks.pop(stage.name, None)
        if task is not None:
            self.progress.remove_task(task)
        log.info("%s", stage.summary(now))
        if not self.tasks:
            self.progress.stop()

    def close(self) -> None:
        if self.tasks:
            self.progress.stop()
            self.tasks.clear()


class CatchUp:
    """``stats``: the buffer's latest figures (``BufferUpkeep.stats``, refreshed once a second)."""

    def __init__(self, stages: list[Stage], stats: Callable[[], dict], view: View) -> None:
        self.stages = stages
        self.stats = stats
        self.view = view

    def tick(self, now: float | None = None) -> None:
        now = time.time() if now is None else now
        stats = self.stats()
        if not stats:
            return
        for stage in self.stages:
            if stage.sample(stats, now) == "finished":
                self.view.finished(stage, now)
                stage.finish()
        active = [s for s in self.stages if s.active]
        if active:
            self.view.show(active, now)

    def status(self) -> dict:
        """For ``status.json``: the stages catching up now."""
        return {s.name: {"left": s.left, "total": s.total, "per_s": round(s.rate, 1),
                         "eta_s": None if s.eta_s is None else round(s.eta_s), "waiting": s.blocked()}
                for s in self.stages if s.active}

    async def run(self, stop: asyncio.Event) -> None:
        """As a supervised task: a look once a second until ``stop``."""
        try:
            while not stop.is_set():
                self.tick()  # once every stage is over, a look costs nothing
                try:
                    await asyncio.wait_for(stop.wait(), 1.0)
                except TimeoutError:
                    pass
        finally:
            self.view.close()


def view_for(stream=None, status: Callable[[str], object] = lambda text: None) -> View:
    """Bars when stderr is a terminal, the journal otherwise."""
    stream = stream if stream is not None else sys.stderr
    return TerminalView() if stream.isatty() else JournalView(status)


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 90:
        return f"{seconds} s"
    if seconds < 5400:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"
