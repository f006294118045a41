"""Group commit between the event loop and the store.

Messages arrive one by one on the event loop; the store's cost is per write (one fsync), not per
record. So records wait in a list while a write is in flight, and the next write takes them all:
at low load a record is written alone at once, at high load batches grow by themselves. Writes
start at most every ``min_interval_s``, which under load trades a few milliseconds of latency for
batches large enough that the per-write cost (TinyDB's table rebuild, an fsync) stays small. The store
lives on one writer thread: one thread hop per batch, never per message. Acknowledgements run
in arrival order once everything before them is durable, so the broker never forgets a message
that is not on disk.
"""
from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

from gateway.buffer.store import AppendResult, RecordStore

log = logging.getLogger("w3gate.buffer")


@dataclass(slots=True)
class Entry:
    doc: dict | None  # None: nothing to store, only an acknowledgement to release in order
    done: Callable[[int | None], None] | None  # called with the seq, or None when refused/ack-only


class GroupCommitter:
    def __init__(self, store: RecordStore, *, max_batch: int = 2000, min_interval_s: float = 0.005,
                 retry_s: float = 1.0) -> None:
        self.store = store
        self.max_batch = max_batch
        self.min_interval_s = min_interval_s
        self.retry_s = retry_s
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="w3gate-store")
        self.commits = 0
        self.failures = 0
        self._pending: list[Entry] = []
        self._pending_docs = 0
        self._writing = False
        self._scheduled: asyncio.TimerHandle | None = None
        self._last_start = 0.0
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def backlog(self) -> int:
        """Records received but not yet durable."""
        return self._pending_docs

    def submit(self, doc: dict | None, done: Callable[[int | None], None] | None = None) -> None:
        if doc is None and not self._pending and not self._writing:
            if done:
                done(None)  # nothing ahead of it: release at once
            return
        self._pending.append(Entry(doc, done))
        if doc is not None:
            self._pending_docs += 1
        self._idle.clear()
        if not self._writing:
            self._start_soon()

    async def call(self, fn: Callable, *args):
        """Run a store operation on the writer thread, in order with the writes."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    def call_blocking(self, fn: Callable, *args):
        """The same from another thread that may wait (the chain's): never the loop, never the writer."""
        return self.executor.submit(fn, *args).result()

    async def drain(self) -> None:
        """Wait until everything submitted is durable and acknowledged."""
        await self._idle.wait()

    def close(self) -> None:
        self.executor.shutdown(wait=True)

    # -- internals -------------------------------------------------------------------------------

    def _start_soon(self) -> None:
        if self._scheduled is not None:
            return
        loop = asyncio.get_running_loop()
        wait = self._last_start + self.min_interval_s - loop.time()
        if wait <= 0:
            self._start()
        else:
            self._scheduled = loop.call_later(wait, self._start)

    def _start(self) -> None:
        self._scheduled = None
        if self._writing or not self._pending:
            return
        take, docs = 0, 0
        for entry in self._pending:
            if entry.doc is not None:
                if docs == self.max_batch:
                    break
                docs += 1
            take += 1
        batch = self._pending[:take]
        del self._pending[:take]
        self._pending_docs -= docs
        if not docs:
            return self._complete(batch, AppendResult([], 0, 0))
        self._writing = True
        loop = asyncio.get_running_loop()
        self._last_start = loop.time()
        future = loop.run_in_executor(self.executor, self._write, [e.doc for e in batch if e.doc is not None])
        future.add_done_callback(lambda f: self._finished(batch, f))

    def _write(self, docs: list[dict]) -> AppendResult:
        return self.store.append(docs)

    def _finished(self, batch: list[Entry], future: asyncio.Future) -> None:
        try:
            result = future.result()
        except Exception as e:  # noqa: BLE001 - any store failure: keep the batch, retry, never ack
            self.failures += 1
            log.error("buffer write failed (%s); retrying in %.1f s, nothing acknowledged", e, self.retry_s)
            self._pending[:0] = batch
            self._pending_docs += sum(1 for e in batch if e.doc is not None)
            self._writing = False
            self._scheduled = asyncio.get_running_loop().call_later(self.retry_s, self._start)
            return
        self.commits += 1
        self._complete(batch, result)

    def _complete(self, batch: list[Entry], result: AppendResult) -> None:
        seqs = iter(result.seqs)
        for entry in batch:
            seq = None
            if entry.doc is not None:
                seq = next(seqs, None)
            if entry.done:
                entry.done(seq)
        self._writing = False
        if self._pending:
            self._start_soon()
        else:
            self._idle.set()
