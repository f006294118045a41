"""Signature checks on a thread of their own, a batch at a time.

libsecp256k1 releases the GIL while it verifies, so on its own thread the one verification per
message (about 50 us, a third of the per-message cost) runs on another core while the event loop
reads and decodes the next messages. Messages wait in a list while a batch is being checked and
the next batch takes them all: one thread hop per batch, never per message. Results come back
on the event loop in submission order, so the verifier concludes in arrival order.
"""
from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from gateway.verify.verifier import Admitted


def _verify_all(batch: list[Admitted]) -> list[bool]:
    return [a.key.verify(a.digest, a.signature) for a in batch]


class SignatureChecker:
    def __init__(self) -> None:
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="w3gate-verify")
        self._pending: list[tuple[Admitted, Callable[[bool], None]]] = []
        self._busy = False
        self._idle = asyncio.Event()
        self._idle.set()

    def submit(self, admitted: Admitted, done: Callable[[bool], None]) -> None:
        self._pending.append((admitted, done))
        self._idle.clear()
        if not self._busy:
            self._start()

    async def drain(self) -> None:
        """Wait until every submitted message has its verdict."""
        await self._idle.wait()

    def close(self) -> None:
        self.executor.shutdown(wait=True)

    def _start(self) -> None:
        batch, self._pending = self._pending, []
        self._busy = True
        future = asyncio.get_running_loop().run_in_executor(self.executor, _verify_all, [a for a, _ in batch])
        future.add_done_callback(lambda f: self._finished(batch, f))

    def _finished(self, batch: list[tuple[Admitted, Callable[[bool], None]]], future: asyncio.Future) -> None:
        results = future.result()  # _verify_all cannot raise: bad input makes verify() False
        for (_, done), ok in zip(batch, results):
            done(ok)
        self._busy = False
        if self._pending:
            self._start()
        else:
            self._idle.set()
