"""Signature checks in a worker process, a batch at a time, verdicts back on the event loop.

The one verification per message (about 45 us) is the largest single cost of ingest. It runs in
``gateway.verify.worker`` on the other core (a thread would fight the event loop for the GIL, see
there). Messages wait in a list while a batch is being checked and the next batch takes them
all: one pipe write and one read per batch, never per message. Verdicts come back in submission
order, so the verifier concludes in arrival order. If the worker dies, its batch is checked here
and a new worker starts: a verdict is never lost and never guessed.
"""
from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import subprocess
import sys
from collections import deque
from typing import Callable

from gateway.verify.verifier import Admitted
from gateway.verify.worker import encode_request

log = logging.getLogger("w3gate.verify")

PIPE_BYTES = 1 << 20
_NO_SIGNATURE = bytes(64)  # r = 0 never verifies; stands in for a signature of the wrong length


class SignatureChecker:
    def __init__(self, *, max_batch: int = 512, pipeline: int = 2) -> None:
        self.max_batch = max_batch
        self.pipeline = pipeline  # batches in the worker's pipe: it starts the next one at once
        self.restarts = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._proc: subprocess.Popen | None = None
        self._pending: list[tuple[Admitted, Callable[[bool], None]]] = []
        self._inflight: deque[list[tuple[Admitted, Callable[[bool], None]]]] = deque()
        self._inflight_count = 0
        self._response = bytearray()
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def backlog(self) -> int:
        """Messages waiting for their verdict."""
        return len(self._pending) + self._inflight_count

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._spawn()

    def submit(self, admitted: Admitted, done: Callable[[bool], None]) -> None:
        """Queue a signature check; ``done(valid)`` runs on the event loop, in submission order."""
        self._pending.append((admitted, done))
        self._idle.clear()
        if len(self._inflight) < self.pipeline:
            self._send()

    async def drain(self) -> None:
        """Wait until every submitted message has its verdict."""
        await self._idle.wait()

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        self._loop.remove_reader(proc.stdout.fileno())
        proc.stdin.close()  # the worker exits at end of input
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()

    # -- internals -------------------------------------------------------------------------------

    def _spawn(self) -> None:
        self._proc = subprocess.Popen([sys.executable, "-m", "gateway.verify.worker"],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
        try:  # room for every batch in flight, so writing one never waits for the worker
            fcntl.fcntl(self._proc.stdin.fileno(), fcntl.F_SETPIPE_SZ, PIPE_BYTES)
        except OSError:
            pass  # a smaller pipe only means a write may wait a few milliseconds
        os.set_blocking(self._proc.stdout.fileno(), False)
        self._loop.add_reader(self._proc.stdout.fileno(), self._on_readable)
        self._response.clear()

    def _send(self) -> None:
        batch = self._pending[:self.max_batch]
        del self._pending[:self.max_batch]
        self._inflight.append(batch)
        self._inflight_count += len(batch)
        request = encode_request([
            (a.key.public_key[1:], a.digest, a.signature if len(a.signature) == 64 else _NO_SIGNATURE)
            for a, _ in batch])
        try:
            self._proc.stdin.write(request)
        except OSError:
            self._worker_died()

    def _on_readable(self) -> None:
        try:
            data = os.read(self._proc.stdout.fileno(), 1 << 16)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            return self._worker_died()
        self._response += data
        while self._inflight and len(self._response) >= len(self._inflight[0]):
            n = len(self._inflight[0])
            verdicts = bytes(self._response[:n])
            del self._response[:n]
            self._deliver(verdicts)

    def _deliver(self, verdicts: bytes | list[bool]) -> None:
        batch = self._inflight.popleft()
        self._inflight_count -= len(batch)
        if self._pending and len(self._inflight) < self.pipeline:
            self._send()  # keep the worker busy while we conclude this batch
        for (_, done), valid in zip(batch, verdicts):
            done(bool(valid))
        if not self._inflight and not self._pending:
            self._idle.set()

    def _worker_died(self) -> None:
        proc = self._proc
        self._loop.remove_reader(proc.stdout.fileno())
        proc.kill()
        proc.wait()
        proc.stdin.close()
        proc.stdout.close()
        self.restarts += 1
        lost = list(self._inflight)
        log.error("signature worker exited (code %s); checking its %d messages here and restarting it",
                  proc.returncode, self._inflight_count)
        self._spawn()
        for batch in lost:
            self._deliver([a.key.verify(a.digest, a.signature) for a, _ in batch])
