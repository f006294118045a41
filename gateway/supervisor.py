"""Background work that cannot die silently: supervised tasks and a record of what is degraded.

A long-running task (housekeeping, anchoring, cron, monitors, links, the event API) that raises is
logged with its cause and started again with backoff, and ``Health`` says ``degraded`` for it
until it has run ``healthy_after_s`` without failing again. Steps that run periodically inside a
task (reloading the registry, expiring records) report to ``Health`` the same way, so one broken
step neither stops its siblings nor hides.
"""
from __future__ import annotations

import asyncio
import inspect
import logging
import time
from typing import Awaitable, Callable

from gateway.errors import W3gateError

log = logging.getLogger("w3gate.supervisor")


class Health:
    """What is wrong now, by component; each new problem is logged once (a bug with its traceback)."""

    def __init__(self) -> None:
        self._problems: dict[str, dict] = {}

    def fail(self, component: str, error: BaseException) -> None:
        reason = (str(error) if isinstance(error, W3gateError) else f"{type(error).__name__}: {error}")[:300]
        known = self._problems.get(component)
        if known is None or known["reason"] != reason:
            # a typed error says what is wrong; anything else is a bug and needs its traceback
            log.error("%s failed: %s", component, reason,
                      exc_info=None if isinstance(error, W3gateError) else error)
            self._problems[component] = {"reason": reason, "since": time.time(), "failures": 0}
        self._problems[component]["failures"] += 1

    def ok(self, component: str) -> None:
        if self._problems.pop(component, None) is not None:
            log.info("%s recovered", component)

    def snapshot(self) -> dict[str, dict]:
        """``{component: {"reason", "since", "failures"}}``; empty when all is well."""
        return {name: dict(problem) for name, problem in self._problems.items()}


async def supervise(name: str, run: Callable[[], Awaitable[None]], stop: asyncio.Event, health: Health, *,
                    min_backoff_s: float = 0.5, max_backoff_s: float = 30.0,
                    healthy_after_s: float = 10.0) -> None:
    """Run ``run()`` until ``stop`` is set, starting it again whenever it raises or returns early."""
    loop = asyncio.get_running_loop()
    delay = min_backoff_s
    while not stop.is_set():
        started = loop.time()
        cleared = loop.call_later(healthy_after_s, health.ok, name) if name in health.snapshot() else None
        try:
            await run()
            if stop.is_set():
                return
            raise RuntimeError("ended while the gateway runs")
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - the point of supervision
            health.fail(name, e)
        finally:
            if cleared is not None:
                cleared.cancel()
        if loop.time() - started > healthy_after_s:
            delay = min_backoff_s  # it ran well for a while: this is a new failure, not a loop
        log.warning("%s: starting again in %.1f s", name, delay)
        try:
            await asyncio.wait_for(stop.wait(), delay)
        except asyncio.TimeoutError:
            pass
        delay = min(delay * 2, max_backoff_s)


async def step(health: Health, name: str, fn: Callable[[], object]) -> object:
    """Run one periodic step (a function or a coroutine function); a failure is recorded under
    ``name`` and does not propagate, so the steps after it still run."""
    try:
        result = fn()
        if inspect.isawaitable(result):
            result = await result
    except Exception as e:  # noqa: BLE001 - reported in status until the step succeeds again
        health.fail(name, e)
        return None
    health.ok(name)
    return result


async def periodic(period_s: float, steps: dict[str, Callable[[], object]], stop: asyncio.Event,
                   health: Health, *, first_s: float | None = None) -> None:
    """Run ``steps`` in order every ``period_s`` (the first time after ``first_s``) until ``stop``;
    each step fails alone (``step``)."""
    wait = period_s if first_s is None else first_s
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), wait)
            return
        except asyncio.TimeoutError:
            pass
        for name, fn in steps.items():
            await step(health, name, fn)
        wait = period_s
