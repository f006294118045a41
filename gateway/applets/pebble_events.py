"""Verified Pebble records become applet events, in record order, straight from the buffer.

The dispatcher reads what the buffer holds above its ``processed`` cursor, hands it to every
project that takes Pebble events, and moves the cursor once their state is committed. So applets
see every verified record at least once, in order, across crashes and restarts (a record whose
batch was interrupted runs again; its earlier state changes were not committed). With no such
project the cursor simply follows the buffer.

Event types and payload (JSON, what ``ws_get_data`` returns):
    PEBBLE_DATA, PEBBLE_CONFIG, PEBBLE_CONFIRM
    {"seq": 42, "device": "<IMEI>", "did": "did:io:0x…", "address": "0x…", "owner": "0x…"|null,
     "kind": "data", "wire": "protobuf", "timestamp": <device time, s>, "received": <gateway time, s>,
     "trust": "secure-element", "digest": "<sha256 hex of the signed bytes>",
     "reading": {"temperature": 21.5, "humidity": 45.1, "pressure": 1013.2, "gps_fix": true,
                 "latitude": …, "longitude": …, "vbat": 4.1, …}}
The reading of a config message is the device's settings; of a confirm, ``{"owner", "channel"}``.
The event's publisher is the IMEI, its timestamp the device time in milliseconds.
"""
from __future__ import annotations

import asyncio
import json
import logging

from gateway.applets.runtime import AppletRuntime, Event
from gateway.buffer.commit import GroupCommitter
from gateway.buffer.records import decode_record
from gateway.buffer.store import RecordStore
from gateway.verify.registry import Registry

log = logging.getLogger("w3gate.applets")

EVENT_TYPES = {"data": "PEBBLE_DATA", "config": "PEBBLE_CONFIG", "confirm": "PEBBLE_CONFIRM"}


def pebble_event_payload(doc: dict, registry: Registry) -> bytes:
    device = registry.get(doc["device"])
    return json.dumps({
        "seq": doc["seq"], "device": doc["device"],
        "did": device.did if device else None, "address": device.address if device else None,
        "owner": device.owner if device else None,
        "kind": doc["kind"], "wire": doc.get("wire", "protobuf"), "timestamp": doc["ts"], "received": doc["rx"],
        "trust": doc.get("trust", ""), "digest": doc["digest"],
        "reading": decode_record(doc, device.profile if device else None),
    }, separators=(",", ":")).encode()


class PebbleDispatcher:
    def __init__(self, runtime: AppletRuntime, store: RecordStore, committer: GroupCommitter, registry: Registry,
                 *, batch: int = 500) -> None:
        self.runtime = runtime
        self.store = store
        self.committer = committer
        self.registry = registry
        self.batch = batch
        self.dispatched = 0
        self._wake = asyncio.Event()

    def notify(self) -> None:
        """New records are durable (called after each group commit)."""
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                busy = await self.step()
            except Exception:  # noqa: BLE001 - keep dispatching; the record stays unprocessed
                log.exception("applet dispatch failed; retrying in 1 s")
                busy = False
                await asyncio.sleep(1.0)
            if not busy:
                self._wake.clear()
                waiter = asyncio.create_task(self._wake.wait())
                stopper = asyncio.create_task(stop.wait())
                await asyncio.wait([waiter, stopper], timeout=1.0, return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
                stopper.cancel()

    async def step(self) -> bool:
        """Dispatch the next batch of records; True when there was something to do."""
        stats = await self.committer.call(self.store.stats)
        done_upto, last = stats["processed_upto"], stats["last_seq"]
        if last <= done_upto:
            return False
        projects = self.runtime.pebble_projects()
        if not projects:
            await self.committer.call(self.store.mark_processed, last)
            return True
        docs = await self.committer.call(self._read, done_upto)
        if not docs:
            return False
        events = [Event(project, pebble_event_payload(doc, self.registry), event_type=EVENT_TYPES[doc["kind"]],
                        event_id=f"{doc['digest'][:32]}_pebble", publisher=doc["device"],
                        timestamp_ms=int(doc["ts"]) * 1000, trust=doc.get("trust", ""))
                  for doc in docs for project in projects]
        await self.runtime.handle(events)
        await self.committer.call(self.store.mark_processed, docs[-1]["seq"])
        self.dispatched += len(docs)
        return True

    def _read(self, after: int) -> list[dict]:
        return list(self.store.iter_records(after_seq=after, newest_first=False, limit=self.batch))
