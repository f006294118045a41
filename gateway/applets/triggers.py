"""Triggers: events the node makes itself, delivered to applets through the same routing as any
event, with an event ID ``<uuid>_monitor``.

- Cron jobs deliver upstream's payload ``{"ID": "<cron job id>", "Timestamp": "<RFC3339>"}``.
  Runs missed while the node was down are not made up (upstream's gocron does not either).
- Chain monitors (a height reached, a contract's logs) deliver what ``gateway/chain/monitors.py``
  reads from the chain, at least once: a monitor's progress is saved after its events were handled.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from croniter import croniter

from gateway.applets.runtime import AppletRuntime, Event
from gateway.chain.monitors import ChainMonitors, Monitor

if TYPE_CHECKING:  # web3 is imported only with a chain
    from gateway.chain.service import ChainService

log = logging.getLogger("w3gate.applets")


def cron_payload(job_id: str, when: float) -> bytes:
    stamp = datetime.fromtimestamp(when, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
    return json.dumps({"ID": job_id, "Timestamp": stamp}).encode()


class CronScheduler:
    def __init__(self, runtime: AppletRuntime, *, clock=time.time) -> None:
        self.runtime = runtime
        self.clock = clock
        self.fired = 0
        self._next: dict[tuple[str, str], float] = {}  # (project, job id) -> next run

    def due(self, now: float) -> list[Event]:
        """The events due at ``now``; schedules the next run of each job that fired."""
        events = []
        jobs = {(name, job.id): (name, job) for name, p in self.runtime.projects.items() for job in p.cron}
        for key in [k for k in self._next if k not in jobs]:
            del self._next[key]  # removed or redeployed differently
        for key, (name, job) in jobs.items():
            when = self._next.get(key)
            if when is None:
                self._next[key] = croniter(job.expression, now).get_next(float)
            elif when <= now:
                events.append(Event(name, cron_payload(job.id, when), event_type=job.event,
                                    event_id=f"{uuid.uuid4()}_monitor", publisher="cron",
                                    timestamp_ms=int(when * 1000), trust="gateway"))
                self._next[key] = croniter(job.expression, max(now, when)).get_next(float)
        return events

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            events = self.due(self.clock())
            if events:
                self.fired += len(events)
                for response in await self.runtime.handle(events):
                    if response.error:
                        log.warning("cron event for %s: %s", response.channel, response.error)
            wait = min(self._next.values(), default=self.clock() + 1.0) - self.clock()
            try:
                await asyncio.wait_for(stop.wait(), timeout=min(1.0, max(0.01, wait)))
            except asyncio.TimeoutError:
                pass


class MonitorScheduler:
    """The deployed projects' chain monitors, polled every ``interval_s`` on the chain thread."""

    def __init__(self, runtime: AppletRuntime, chain: ChainService, *, interval_s: float) -> None:
        self.runtime = runtime
        self.chain = chain
        self.interval_s = interval_s
        self.fired = 0

    def specs(self) -> list[Monitor]:
        return [Monitor(name, m["kind"], m.get("event", "MONITOR_DEFAULT"), m.get("height"), m.get("address"),
                        tuple(m.get("topics") or ()), m.get("block_start"))
                for name, project in self.runtime.projects.items() for m in project.monitors]

    async def run(self, stop: asyncio.Event) -> None:
        monitors = ChainMonitors(self.chain.w3, lambda name: self.runtime.store.files(name).monitors)
        while not stop.is_set():
            try:
                firings = await self.chain.call(monitors.poll, self.specs())
            except Exception as e:  # noqa: BLE001 - the chain is down: the next round tries again
                log.debug("chain monitors: %s", e)
                firings = []
            for firing in firings:
                m = firing.monitor
                if firing.payloads:
                    await self.runtime.handle([Event(m.project, payload, event_type=m.event,
                                                     event_id=f"{uuid.uuid4()}_monitor", publisher="chain",
                                                     trust="chain")
                                               for payload in firing.payloads])
                    self.fired += len(firing.payloads)
                monitors.commit(firing)
            try:
                await asyncio.wait_for(stop.wait(), self.interval_s)
            except asyncio.TimeoutError:
                pass
