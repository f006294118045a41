"""Verified device records become applet events, in record order, straight from the buffer.

Each project that takes device events (``[events] pebble = true`` and/or ``legacy = true``)
reads the buffer from its own cursor, which its worker commits in the same SQLite transaction
as the state its applets changed. So each record reaches each project in order, and its effects
on the project's state happen exactly once across crashes and restarts (a batch cut short runs
again from the old cursor, with none of its state kept; MQTT messages and transactions it sent
are not taken back). The buffer's ``processed`` cursor follows the slowest project, or the
buffer itself when no project takes device events.

Event types and payload (JSON, what ``ws_get_data`` returns):
    PEBBLE_DATA, PEBBLE_CONFIG, PEBBLE_CONFIRM
    {"seq": 42, "device": "<IMEI>", "did": "did:io:0x…", "address": "0x…", "owner": "0x…"|null,
     "kind": "data", "wire": "protobuf", "timestamp": <device time, s>, "received": <gateway time, s>,
     "trust": "secure-element", "digest": "<sha256 hex of the signed bytes>",
     "reading": {"temperature": 21.5, "humidity": 45.1, "pressure": 1013.2, "gps_fix": true,
                 "latitude": …, "longitude": …, "vbat": 4.1, …}}
    The reading of a config message is the device's settings; of a confirm, ``{"owner", "channel"}``.
    The event's publisher is the IMEI, its timestamp the device time in milliseconds.

    LEGACY_DATA, LEGACY_HELLO, LEGACY_CONFIG, LEGACY_COMMAND (a serial or BLE sensor: device_fw/frame.py)
    {"seq": 43, "device": "<16 hex id>", "name": "greenhouse", "kind": "data", "wire": "legacy",
     "device_seq": 1207, "timestamp": <gateway time, s>, "received": <gateway time, s>,
     "trust": "gateway-attested", "attested_by": "did:io:0x<gateway>", "digest": "<sha256 of the frame>",
     "reading": {"temperature": 21.5, "humidity": 45.1, "pressure": 1013.2, "up": 3600}}
    A hello's reading is the firmware's report, a config's the settings it applied, a command's
    the outputs' state it left (``{"relay": 1, "command_seq": n}``) or why it refused.
    The publisher is the device id, the timestamp the receive time in milliseconds.
"""
from __future__ import annotations

import asyncio
import json
import logging
from typing import Callable

from gateway.applets.runtime import AppletRuntime, Event
from gateway.applets.state import read_cursor
from gateway.buffer.commit import GroupCommitter
from gateway.buffer.store import RecordStore
from gateway.codec.record import FAMILY_EVENTS, Record
from gateway.errors import CodecError
from gateway.verify.registry import Registry

log = logging.getLogger("w3gate.applets")

EVENT_TYPES = [*FAMILY_EVENTS["pebble"], *FAMILY_EVENTS["legacy"]]


def legacy_event_payload(record: Record, names: dict[str, str]) -> bytes:
    doc = record.doc
    return json.dumps({
        "seq": doc["seq"], "device": doc["device"], "name": names.get(doc["device"]),
        "kind": doc["kind"], "wire": record.wire.name, "device_seq": doc["device_seq"], "timestamp": doc["ts"],
        "received": doc["rx"], "trust": doc["trust"], "attested_by": "did:io:" + doc["address"].lower(),
        "digest": doc["digest"], "reading": record.values(),
    }, separators=(",", ":")).encode()


def pebble_event_payload(record: Record, registry: Registry) -> bytes:
    doc = record.doc
    device = registry.get(doc["device"])
    return json.dumps({
        "seq": doc["seq"], "device": doc["device"],
        "did": device.did if device else None, "address": device.address if device else None,
        "owner": device.owner if device else None,
        "kind": doc["kind"], "wire": record.wire.name, "timestamp": doc["ts"], "received": doc["rx"],
        "trust": doc.get("trust", ""), "digest": doc["digest"],
        "reading": record.values(device.profile if device else None),
    }, separators=(",", ":")).encode()


CURSOR = "pebble_records"  # the name predates legacy records; kept, since projects store it
PROCESSED_INTERVAL_S = 0.5


class DeviceDispatcher:
    """One feed per project that takes device events, each at its own pace from its own cursor
    (kept in the project's state, committed with the effects of its events): a slow or runaway
    project falls behind alone. The buffer's ``processed`` cursor is the slowest feed's."""

    def __init__(self, runtime: AppletRuntime, store: RecordStore, committer: GroupCommitter, registry: Registry,
                 *, batch: int = 200, legacy_names: Callable[[], dict[str, str]] = dict) -> None:
        self.runtime = runtime
        self.store = store
        self.committer = committer
        self.registry = registry
        self.batch = batch
        self.legacy_names = legacy_names  # legacy device id -> name, for event payloads
        self.dispatched = 0  # the highest record seq handed to a project
        self._wakes: dict[str, asyncio.Event] = {}  # one per feed: new records are durable
        self._feeds: dict[str, asyncio.Task] = {}
        self._cursors: dict[str, int] = {}

    def notify(self) -> None:
        """New records are durable (called after each group commit)."""
        for wake in self._wakes.values():
            wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        try:
            while not stop.is_set():
                await self._sync_feeds(stop)
                # the processed cursor is a meta write (an fsync on the writer thread): once per
                # interval, not once per group commit
                await self._advance_processed()
                try:
                    await asyncio.wait_for(stop.wait(), PROCESSED_INTERVAL_S)
                except asyncio.TimeoutError:
                    pass
        finally:
            for task in self._feeds.values():
                task.cancel()
            await asyncio.gather(*self._feeds.values(), return_exceptions=True)

    async def _sync_feeds(self, stop: asyncio.Event) -> None:
        wanted = set(self.runtime.device_projects())
        for name in [n for n in self._feeds if n not in wanted]:
            self._feeds.pop(name).cancel()
            self._cursors.pop(name, None)
            self._wakes.pop(name, None)
        for name in wanted - self._feeds.keys():
            path = self.runtime.store.files(name).state
            # a new project starts at the records still buffered and not yet processed by all
            cursor = read_cursor(path, CURSOR) or (await self.committer.call(self.store.stats))["processed_upto"]
            self._cursors[name] = cursor
            self._wakes[name] = asyncio.Event()
            self._feeds[name] = asyncio.create_task(self._feed(name, stop))

    async def _advance_processed(self) -> None:
        stats = await self.committer.call(self.store.stats)
        upto = min(self._cursors.values()) if self._cursors else stats["last_seq"]
        if upto > stats["processed_upto"]:
            await self.committer.call(self.store.mark_processed, upto)

    async def _feed(self, name: str, stop: asyncio.Event) -> None:
        wake = self._wakes[name]
        while not stop.is_set():
            wake.clear()  # before looking: a commit landing meanwhile wakes the next wait
            try:
                busy = await self._step(name)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - keep feeding; the records stay unprocessed
                log.exception("project %s: applet dispatch failed; retrying in 1 s", name)
                busy = False
            if not busy:
                await _wait(wake, stop, 1.0)

    async def _step(self, name: str) -> bool:
        """Hand the project its next records; True when there were some."""
        after = self._cursors[name]
        per_record = max(1, max(self.runtime.jobs_per_event(name, t) for t in EVENT_TYPES))
        docs = await self.committer.call(self._read, after, max(1, self.batch // per_record))
        if not docs:
            return False
        project = self.runtime.projects.get(name)
        records = [Record(doc) for doc in docs]
        names = self.legacy_names() if any(r.doc.get("wire") == "legacy" for r in records) else {}
        events = []
        for record in records if project is not None else ():
            try:
                if project.takes(record):
                    events.append(self._event(name, record, names))
            except (CodecError, KeyError, TypeError, ValueError) as e:  # a record edited on disk: not an event
                log.warning("project %s: record %s cannot become an event, skipped: %s", name, record.doc.get("seq"), e)
        last = docs[-1]["seq"]
        await self.runtime.feed(name, events, (CURSOR, last))
        self._cursors[name] = last
        self.dispatched = max(self.dispatched, last)
        return True

    def _event(self, name: str, record: Record, names: dict[str, str]) -> Event:
        doc = record.doc
        if record.family == "legacy":
            return Event(name, legacy_event_payload(record, names), event_type=record.event_type,
                         event_id=f"{doc['digest'][:32]}_legacy", publisher=doc["device"],
                         timestamp_ms=int(doc["rx"] * 1000), trust=doc["trust"])
        return Event(name, pebble_event_payload(record, self.registry), event_type=record.event_type,
                     event_id=f"{doc['digest'][:32]}_pebble", publisher=doc["device"],
                     timestamp_ms=int(doc["ts"]) * 1000, trust=doc.get("trust", ""))

    def _read(self, after: int, limit: int) -> list[dict]:
        return list(self.store.iter_records(after_seq=after, newest_first=False, limit=limit))


async def _wait(event: asyncio.Event, stop: asyncio.Event, timeout: float) -> None:
    waiter, stopper = asyncio.create_task(event.wait()), asyncio.create_task(stop.wait())
    try:
        await asyncio.wait([waiter, stopper], timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
        stopper.cancel()
