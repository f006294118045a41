"""The one way into the buffer for every device family (Pebbles over MQTT, legacy sensors over
serial and BLE): durable group commit, then the accounting, then a nudge to the applets.

Sources decide what is trusted; the sink owns what happens to the outcome, the same for all of
them: accepted records counted by kind with their receive → durable latency, rejections counted by
reason and logged once each (rate-limited; a failure of ours with its traceback), and the clock of
the last handled message that tells ``w3gate status`` whether ingest is moving.
"""
from __future__ import annotations

import time
from functools import partial
from typing import Callable, TextIO

from gateway.buffer.commit import GroupCommitter
from gateway.buffer.store import RecordStore
from gateway.codec.record import WIRES
from gateway.errors import Rejection
from gateway.status import UNKNOWN_FAMILY, Counters, Latencies, RejectLog

Done = Callable[[int | None], None]  # called with the record's seq, or None when it was refused


class RecordSink:
    def __init__(self, committer: GroupCommitter, counters: Counters, *, notify: Callable[[], None],
                 trace: TextIO | None = None) -> None:
        self.committer = committer
        self.counters = counters
        self.notify = notify  # new records are durable: the applets' dispatcher looks
        self.trace = trace  # "<digest> <received> <durable>" per record, for benchmarks
        self.reject_log = RejectLog()
        self.latency = Latencies()  # receive -> durable
        self.handled = 0  # messages and frames that ended (stored, refused, acknowledged) since start
        self.last_handled: float | None = None

    @property
    def backlog(self) -> int:
        """Records received but not yet durable."""
        return self.committer.backlog

    def store(self, doc: dict, kind: str, where: str, done: Done) -> None:
        """Make ``doc`` durable, count it as ``kind`` and call ``done(seq)``; a full buffer (policy
        refuse) is counted as the rejection ``buffer_full`` and ``done(None)``."""
        # one partial per record, not a closure: closures bring a GC-tracked cell per variable,
        # and thousands of records wait in the group commit at full load
        self.committer.submit(doc, partial(self._durable, doc, kind, where, done))

    def _durable(self, doc: dict, kind: str, where: str, done: Done, seq: int | None) -> None:
        try:
            if seq is None:
                wire = WIRES.get(doc.get("wire"))
                self.rejected(Rejection("buffer_full", "the buffer is full (policy refuse)", device=doc["device"]),
                              where, family=wire.family if wire else UNKNOWN_FAMILY)
            else:
                now = time.time()
                self.counters.accepted[kind] += 1
                self.latency.add(now - doc["rx"])
                if self.trace:
                    self.trace.write(f"{doc['digest']} {doc['rx']:.6f} {now:.6f}\n")
                self.notify()
        except Exception as e:  # noqa: BLE001 - the record is on disk: log, and go on
            self.reject_log.internal(e, doc.get("device"), where)
        finally:
            self.handled += 1
            self.last_handled = time.time()
        done(seq)

    def release(self, done: Callable[[], None]) -> None:
        """Run ``done`` once everything submitted before is durable (an acknowledgement in order)."""
        self.committer.submit(None, partial(self._released, done))

    def _released(self, done: Callable[[], None], _seq: int | None) -> None:
        self.handled += 1
        self.last_handled = time.time()
        done()

    def rejected(self, rejection: Rejection, where: str, family: str = "pebble") -> None:
        """Count and log a refused message or frame (``where``: its topic or link) of a device
        ``family`` ("pebble", "legacy"): the source knows it, the rejection may not name a device."""
        self.counters.reject(family, rejection.reason, rejection.device)
        if rejection.reason == "internal" and rejection.__cause__ is not None:
            self.reject_log.internal(rejection.__cause__, rejection.device, where)
        else:
            self.reject_log(rejection.reason, rejection.device, where, rejection.detail)

    def redelivered(self) -> None:
        """The broker resent a message we stored but could not acknowledge before a crash."""
        self.counters.redelivered += 1

    def flush_trace(self) -> None:
        """Housekeeping: the trace is read while the gateway runs (benchmarks), a second behind."""
        if self.trace:
            self.trace.flush()

    def status(self) -> dict:
        now = time.time()
        return {"handled": self.handled, "last_handled": self.last_handled,
                "last_handled_age_s": round(now - self.last_handled, 1) if self.last_handled else None,
                "waiting": self.committer.backlog}

    def recent(self, store: RecordStore, since: float) -> list[dict]:
        """Records received after ``since`` (unix s), oldest first; runs on the store thread."""
        newest_first = []
        for doc in store.iter_records(newest_first=True):  # lazily, newest segment first
            if doc["rx"] < since:
                break
            newest_first.append(doc)
        return newest_first[::-1]
