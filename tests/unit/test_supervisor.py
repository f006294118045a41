"""Supervised background work: a task that fails is logged with its cause, started again with
backoff, and shown as degraded until it has run well for a while; a failing periodic step is
recorded without stopping the steps after it."""
from __future__ import annotations

import asyncio
import logging

from gateway.errors import W3gateError
from gateway.supervisor import Health, step, supervise


def test_a_failing_task_is_restarted_with_backoff_and_degraded_until_it_runs_well(caplog):
    caplog.set_level(logging.INFO, logger="w3gate.supervisor")
    health = Health()
    starts: list[float] = []

    async def flaky(stop: asyncio.Event) -> None:
        starts.append(asyncio.get_running_loop().time())
        if len(starts) <= 3:
            raise OSError("port 8889 is taken")
        await stop.wait()

    async def go() -> tuple[dict, dict]:
        stop = asyncio.Event()
        task = asyncio.create_task(supervise("event API", lambda: flaky(stop), stop, health, min_backoff_s=0.05,
                                             max_backoff_s=1.0, healthy_after_s=0.3))
        while len(starts) < 4:  # three failures: 0.05 + 0.1 + 0.2 s of backoff, then it runs
            await asyncio.sleep(0.01)
        during = health.snapshot()  # still degraded: it has not run 0.3 s yet
        for _ in range(500):
            if not health.snapshot():
                break
            await asyncio.sleep(0.01)
        after = health.snapshot()
        stop.set()
        await task
        return during, after

    during, after = asyncio.run(go())
    assert len(starts) == 4
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    assert [round(g, 2) >= wait for g, wait in zip(gaps, (0.05, 0.1, 0.2))] == [True] * 3  # backoff doubles
    assert during["event API"]["reason"] == "OSError: port 8889 is taken" and during["event API"]["failures"] == 3
    assert after == {}
    assert caplog.text.count("event API failed: OSError: port 8889 is taken") == 1  # logged once, not per retry
    assert "event API recovered" in caplog.text


def test_a_task_that_ends_while_the_gateway_runs_counts_as_a_failure():
    health = Health()
    runs = []

    async def quits() -> None:
        runs.append(1)

    async def go() -> dict:
        stop = asyncio.Event()
        task = asyncio.create_task(supervise("cron", quits, stop, health, min_backoff_s=0.01, max_backoff_s=0.01))
        await asyncio.sleep(0.1)
        stop.set()
        await task
        return health.snapshot()

    assert "ended while the gateway runs" in asyncio.run(go())["cron"]["reason"]
    assert len(runs) > 2


def test_a_failing_step_is_recorded_and_the_next_steps_still_run(caplog):
    health = Health()
    done = []

    def broken() -> None:
        raise W3gateError("devices.json cannot be read", reason="corrupt")

    async def go() -> None:
        for _ in range(3):
            await step(health, "device registry", broken)
            await step(health, "expiry", lambda: done.append(1))

    asyncio.run(go())
    assert done == [1, 1, 1]
    assert health.snapshot()["device registry"]["reason"] == "corrupt: devices.json cannot be read"
    assert "Traceback" not in caplog.text  # a typed error says what is wrong; no traceback for it
    asyncio.run(step(health, "device registry", lambda: None))
    assert health.snapshot() == {}
