"""The applet runtime: routes events to the strategies of deployed projects and runs them in each
project's worker, in batches, returning W3bstream's per-applet results.

Every source of events (verified Pebble data from the buffer, the HTTP and MQTT event API,
triggers) hands ``Event`` lists to ``handle``. Projects run side by side, each in its own worker,
so a slow or hostile applet delays only its own project. What applets log goes to
``<data>/projects/<name>/applet.log`` (JSON lines, written by the worker, read by ``w3gate applet
logs``).

Effects happen once, and only for events that are kept: MQTT messages an applet sends, the
transactions and the legacy device commands it asks for are committed with its state (the
project's outbox) and carried out after the commit; a transaction the chain signed for an event
that failed is voided, never sent.
``recover`` carries out what a crash left between a commit and its effects.
"""
from __future__ import annotations

import asyncio
import base64
import itertools
import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from functools import partial
from typing import Awaitable, Callable

from gateway.applets.abi import EventMeta
from gateway.applets.pool import AppletEvent, AppletResult, HostCall, Limits, ProjectWorker, WorkerDied
from gateway.applets.project import Project, ProjectStore
from gateway.errors import W3gateError
from gateway.status import Buckets
from gateway.storage import create_private, open_private

log = logging.getLogger("w3gate.applets")

LOG_ROTATE_BYTES = 5 << 20
# event IDs the node makes: unique like upstream's "<uuid>_w3b", without a uuid4 per event
_RUN_ID = uuid.uuid4().hex[:20]
_EVENT_NUMBERS = itertools.count(1)

# (project, transactions to send, transactions to void): the chain's side of applet effects
Settle = Callable[[str, list[dict], list[dict]], Awaitable[None]]
# (operator names): void every transaction still held, once no outbox claims it
VoidUnclaimed = Callable[[list[str]], Awaitable[None]]
# (project, effect {"device", "command", "seq"}): send a legacy device command (gateway/legacy/source.py)
CommandDevice = Callable[[str, dict], None]


@dataclass
class ProjectCounts:
    """One project's applet runs since start: how many, how many failed, how long they took."""

    events: int = 0
    failed: int = 0
    latency: Buckets = field(default_factory=Buckets)


@dataclass
class Event:
    project: str
    payload: bytes
    event_type: str = "DEFAULT"
    event_id: str = ""
    publisher: str = ""
    timestamp_ms: int = 0
    trust: str = ""

    def __post_init__(self) -> None:
        self.event_id = (self.event_id or f"{_RUN_ID}-{next(_EVENT_NUMBERS):012x}_w3b").lower()
        self.timestamp_ms = self.timestamp_ms or int(time.time() * 1000)


@dataclass
class EventResponse:
    """W3bstream's ``EventRsp``: one result per strategy that ran."""

    channel: str
    event_id: str
    publisher: str
    results: list[dict] = field(default_factory=list)
    error: str | None = None
    timestamp_ms: int = 0

    def to_json(self) -> dict:
        out = {"channel": self.channel, "publisherID": self.publisher, "publisherKey": self.publisher,
               "eventID": self.event_id, "timestamp": self.timestamp_ms or int(time.time() * 1000),
               "results": self.results}
        if self.error:
            out["error"] = self.error
        return out


def _return_value(raw: bytes | None):
    """What a handler set on its rid, as JSON when it is JSON, else text, else base64."""
    if raw is None:
        return None
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(raw).decode()}
    try:
        return json.loads(text)
    except ValueError:
        return text


class AppletRuntime:
    def __init__(self, store: ProjectStore, *, limits: Limits = Limits(), host_call: HostCall | None = None,
                 publish: Callable[[str, bytes], None] | None = None, max_batch: int = 200) -> None:
        self.store = store
        self.limits = limits
        self.host_call = host_call
        self.publish = publish
        self.settle: Settle | None = None
        self.void_unclaimed: VoidUnclaimed | None = None
        self.command_device: CommandDevice | None = None
        self.max_batch = max_batch
        self.projects: dict[str, Project] = {}
        self.workers: dict[str, ProjectWorker] = {}
        self.counters = {"events": 0, "failed": 0}
        self.per_project: dict[str, ProjectCounts] = {}  # the same, by project, with their latencies
        self._version: tuple | None = None

    # -- projects ------------------------------------------------------------------------------------

    async def reload(self) -> bool:
        """Pick up deployed, redeployed and removed projects; True when something changed."""
        version = self.store.version()
        if version == self._version:
            return False
        self._version = version
        current = {p.name: p for p in self.store.all()}
        for name in [n for n in self.workers if n not in current]:
            await self.workers.pop(name).close()
            log.info("project %s removed", name)
        for name, project in current.items():
            old = self.projects.get(name)
            worker = self.workers.get(name)
            if worker is None:
                files = self.store.files(name)
                for path in (files.worker_stderr, files.applet_log):  # the worker pool appends to them
                    try:
                        create_private(path)  # 0600 before anything opens them
                    except OSError as e:
                        log.warning("could not create %s: %s", path, e)
                self.workers[name] = ProjectWorker(
                    name, modules_dir=self.store.modules_dir, state_path=files.state,
                    schema=project.schema, env=project.env, limits=self.limits, host_call=self.host_call,
                    stderr_path=files.worker_stderr, log_path=files.applet_log, reuse=project.reuse_instances,
                    on_effects=partial(self._carry_out, name))
                log.info("project %s deployed: applets %s", name, ", ".join(project.applets))
            elif old != project:
                await worker.configure(schema=project.schema, env=project.env, reuse=project.reuse_instances)
                log.info("project %s redeployed", name)
        self.projects = current
        return True

    def device_projects(self) -> list[str]:
        """Projects that take buffered device records (Pebble or legacy) as events."""
        return [name for name, p in self.projects.items() if p.pebble or p.legacy]

    async def recover(self) -> None:
        """At start, before any event: carry out the effects every project committed but a crash
        kept from happening, then void the transactions held for events that never committed."""
        complete = True
        for name, worker in self.workers.items():
            try:
                n = await worker.recover()
            except WorkerDied as e:
                complete = False
                log.error("project %s: its outbox could not be read (%s); held transactions are kept", name, e)
                continue
            if n:
                log.info("project %s: %d effect(s) committed before the last stop carried out now", name, n)
        if complete and self.void_unclaimed is not None:
            await self.void_unclaimed(sorted({op for p in self.projects.values() for op in p.operators}))

    async def _carry_out(self, project: str, committed: list[dict], voided: list[dict]) -> None:
        """A batch's effects, after its commit: transactions released (and those of events that
        did not commit voided) first, then device commands sent, then MQTT messages published."""
        txs = [e for e in committed if e.get("kind") == "tx"]
        if txs or voided:
            if self.settle is None:
                raise RuntimeError("transactions to settle, and no chain")
            await self.settle(project, txs, voided)
        for effect in committed:
            if effect.get("kind") == "device_command":
                self._command(project, effect)
        for effect in committed:
            if effect.get("kind") == "mqtt" and self.publish is not None:
                self.publish(effect["topic"], base64.b64decode(effect["payload"]))

    def _command(self, project: str, effect: dict) -> None:
        """Send a committed device command; one that can no longer be sent (the device was unpaired
        since) is logged and dropped: the applet was told only that it is pending."""
        if self.command_device is None:
            log.warning("project %s: a command for device %s dropped: no legacy devices on this gateway now",
                        project, effect.get("device"))
            return
        try:
            self.command_device(project, effect)
        except W3gateError as e:
            log.warning("project %s: command %s for device %s not sent: %s", project, effect.get("seq"),
                        effect.get("device"), e)

    async def close(self) -> None:
        for worker in self.workers.values():
            await worker.close()
        self.workers.clear()

    # -- events ----------------------------------------------------------------------------------------

    async def handle(self, events: list[Event]) -> list[EventResponse]:
        """Run every event through its project's strategies; responses in the order given."""
        responses = [EventResponse(e.project, e.event_id, e.publisher) for e in events]
        by_project: dict[str, list[int]] = {}
        for i, event in enumerate(events):
            if event.project not in self.projects:
                responses[i].error = f"project {event.project!r} is not deployed"
            else:
                by_project.setdefault(event.project, []).append(i)
        await asyncio.gather(*(self._run_project(name, [events[i] for i in idx], [responses[i] for i in idx])
                               for name, idx in by_project.items()))
        return responses

    async def feed(self, name: str, events: list[Event], cursor: tuple[str, int]) -> list[EventResponse]:
        """Run a feed's events for one project in one batch, committing ``cursor`` with their state:
        a crash replays the batch from the old cursor with none of its effects kept."""
        responses = [EventResponse(e.project, e.event_id, e.publisher) for e in events]
        if name in self.projects:
            await self._run_project(name, events, responses, cursor=cursor)
        return responses

    def jobs_per_event(self, name: str, event_type: str) -> int:
        project = self.projects.get(name)
        return len(project.route(event_type)) if project else 0

    async def _run_project(self, name: str, events: list[Event], responses: list[EventResponse],
                           *, cursor: tuple[str, int] | None = None) -> None:
        project, worker = self.projects[name], self.workers[name]
        jobs: list[tuple[AppletEvent, EventResponse, str, str]] = []
        for event, response in zip(events, responses):
            meta = EventMeta(event.event_type, event.event_id, event.publisher, event.timestamp_ms, event.trust)
            for n, strategy in enumerate(project.route(event.event_type)):
                job_id = f"{event.event_id}#{n}"
                jobs.append((AppletEvent(job_id, project.applets[strategy.applet], strategy.handler,
                                         event.payload, meta, strategy.applet), response, strategy.applet,
                             strategy.handler))
        results: list[AppletResult] = []
        started = time.monotonic()
        if cursor is not None:
            results = await worker.run([job[0] for job in jobs], cursor=cursor)
        else:
            for start in range(0, len(jobs), self.max_batch):
                results += await worker.run([job[0] for job in jobs[start:start + self.max_batch]])
        now = time.time()
        failed = 0
        for (job, response, applet, handler), result in zip(jobs, results):
            response.results.append({"appletName": applet, "instanceID": job.module[:16], "handler": handler,
                                     "returnValue": _return_value(result.return_value), "code": result.code,
                                     **({"error": result.error} if result.error else {})})
            if result.error:
                failed += 1
            if result.metrics:
                self._append(self.store.files(name).metrics,
                             [{"t": now, "event": job.meta.event_id, "applet": applet, "metrics": m}
                              for m in result.metrics])
        self._count(name, min(len(jobs), len(results)), failed, time.monotonic() - started)
        for response in responses:
            response.timestamp_ms = int(time.time() * 1000)

    def _count(self, name: str, events: int, failed: int, seconds: float) -> None:
        """Once per batch, not per event: the batch's events all took ``seconds`` (handed to the
        worker until their results came back, earlier batches of the same call included)."""
        self.counters["events"] += events
        self.counters["failed"] += failed
        counts = self.per_project.get(name)
        if counts is None:
            counts = self.per_project[name] = ProjectCounts()
        counts.events += events
        counts.failed += failed
        if events:
            counts.latency.add(seconds, events)

    @staticmethod
    def _append(path: Path, entries: list[dict]) -> None:
        try:
            if path.exists() and path.stat().st_size > LOG_ROTATE_BYTES:
                path.replace(path.with_name(path.name + ".1"))
            with open_private(path, "a") as f:
                f.write("".join(json.dumps(e) + "\n" for e in entries))
        except OSError as e:
            log.warning("could not write %s: %s", path, e)
