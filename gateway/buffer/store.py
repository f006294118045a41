"""The durable store-and-forward buffer: TinyDB segments, group commit, bounded, crash-safe.

Why it is shaped like this (see platform-notes §8):

- TinyDB rewrites the whole table on every insert, so one big database gets slower with every
  record. Records go into small TinyDB files (``segments/seg-<first seq>.json``) and a new one
  is started when the active one is full: an append costs the same at 1,000,000 records as at 0.
- Every write is an atomic, fsync'd replace (``AtomicJSONStorage``), and ``append()`` returns
  only once its batch is on disk: an acknowledged record survives kill -9 and power loss.
- One ``append(batch)`` is one write (two when the batch crosses into a new segment): the cost
  is the rewrite and the fsync, not the number of records.
- Records are never updated in place. Their state comes from two monotonic cursors kept in
  ``meta.json`` (processed_upto, anchored_upto), so moving thousands of records on is one
  small write. Records leave only as whole segments, from the oldest end, so the store always
  holds one gap-free range of seqs; ``removed_upto`` in meta says where that range starts
  once segments have gone, and keeps seqs from ever being reused.
- The store is bounded; when full it refuses new records or drops anchored ones, as configured,
  counts every one and says so in the log once per episode.

One thread owns a writable store, and one store per directory may write (``writer.lock``, an
flock the kernel releases when the process dies). Other processes may open the same directory
with ``readonly=True`` at any time: each file is replaced atomically, so they see a consistent,
gap-free snapshot of what was durable when they opened it (open a new one for fresh data).
"""
from __future__ import annotations

import enum
import fcntl
import logging
import operator
import os
import re
import time
from bisect import bisect_right
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import reduce
from pathlib import Path

from tinydb import Query, TinyDB
from tinydb.table import Document, Table

from gateway.storage import (TMP_SUFFIX, AtomicJSONStorage, StoreError, atomic_write,
                                    dump_json, fsync_dir, read_json)

__all__ = ["AppendResult", "FullPolicy", "RecordState", "RecordStore", "StoreConfig", "StoreError"]

log = logging.getLogger("w3gate.buffer")

SEGMENTS = "segments"
META = "meta.json"
LOCK = "writer.lock"
TABLE = "records"
_SEGMENT_RE = re.compile(r"seg-(\d{12})\.json")
_COUNTERS = ("refused_total", "dropped_total", "expired_total")
_CURSORS = ("processed_upto", "anchored_upto", "removed_upto")


class FullPolicy(str, enum.Enum):
    REFUSE = "refuse"                # keep what is held, refuse the new records
    DROP_ANCHORED = "drop-anchored"  # make room by dropping the oldest fully anchored segments


class RecordState(str, enum.Enum):
    ACCEPTED = "accepted"
    PROCESSED = "processed"
    ANCHORED = "anchored"


@dataclass(frozen=True)
class StoreConfig:
    segment_records: int = 1000      # records per TinyDB segment file
    max_records: int = 1_000_000     # bound on records held
    full_policy: FullPolicy = FullPolicy.REFUSE
    retention_s: float = 7 * 86400


@dataclass
class AppendResult:
    seqs: list[int]  # seq of each stored doc, in input order; refused docs are the trailing ones
    refused: int     # docs refused because the store is full
    dropped: int     # anchored records dropped to make room (drop-anchored policy)


def segment_name(first_seq: int) -> str:
    return f"seg-{first_seq:012d}.json"


class RecordStore:
    """Append-only record buffer in a directory; see the module docstring for the layout."""

    def __init__(self, path: str | os.PathLike, config: StoreConfig = StoreConfig(), *,
                 readonly: bool = False) -> None:
        if config.segment_records < 1 or config.max_records < 1 or config.retention_s < 0:
            raise StoreError(f"segment_records and max_records must be >= 1 and retention_s >= 0: {config}",
                             reason="bad_config")
        self.path = Path(path)
        self.config = config
        self.readonly = readonly
        try:
            self._policy = FullPolicy(config.full_policy)
        except ValueError:
            raise StoreError(f"full_policy must be one of {[p.value for p in FullPolicy]}, "
                             f"not {config.full_policy!r}", reason="bad_config") from None
        self._seg_dir = self.path / SEGMENTS
        self._meta_path = self.path / META
        self._meta: dict[str, int] = {k: 0 for k in _CURSORS + _COUNTERS}
        self._meta_size = 0
        self._firsts: list[int] = []         # first seq of each segment, oldest first
        self._sizes: dict[int, int] = {}     # bytes on disk, by first seq
        self._newest_rx: dict[int, float] = {}  # newest rx of full segments, by first seq (expiry)
        self._next_seq = 1
        self._db: TinyDB | None = None       # the active (last) segment, writer only
        self._active: Table | None = None
        self._active_count = 0
        self._episode: dict | None = None    # refusals/drops since the store last had room
        self._closed = False
        self._lock_fd: int | None = None
        try:
            self._open()
        except BaseException:
            self.close()
            raise

    # -- opening -----------------------------------------------------------------------------

    def _open(self) -> None:
        if not self.readonly:
            try:
                self._seg_dir.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise StoreError(f"cannot create {self._seg_dir}: {e}", reason="io") from None
            self._lock()
            self._remove_leftovers()
        meta = read_json(self._meta_path) or {}
        for key in self._meta:
            value = meta.get(key, 0)
            if not isinstance(value, int) or value < 0:
                raise StoreError(f"{self._meta_path}: {key} is {value!r}, not a seq/count", reason="corrupt")
            self._meta[key] = value
        self._meta_size = _size(self._meta_path)
        removed = self._meta["removed_upto"]
        try:
            names = os.listdir(self._seg_dir)
        except FileNotFoundError:  # read-only view of a store not created yet
            names = []
        firsts = sorted(int(m.group(1)) for m in map(_SEGMENT_RE.fullmatch, names) if m)
        # Segments wholly below removed_upto belong to an expiry/drop that was interrupted after
        # its meta write: finish it (the writer) or ignore them (a reader).
        stale = [f for f, nxt in zip(firsts, firsts[1:]) if nxt - 1 <= removed]
        firsts = firsts[len(stale):]
        last_seq = removed
        if firsts:
            first = firsts[-1]
            path = self._seg_dir / segment_name(first)
            db = TinyDB(path, storage=AtomicJSONStorage, readonly=self.readonly,
                        append_only=not self.readonly)
            ids = sorted(int(k) for k in ((db.storage.read() or {}).get(TABLE) or {}))
            if ids and ids != list(range(first, first + len(ids))):
                raise StoreError(f"{path}: seqs are not {first}..{first + len(ids) - 1}", reason="corrupt")
            if ids and ids[-1] <= removed or not ids and first <= removed:
                stale.append(first)
                firsts.pop()
                db.close()
            else:
                last_seq = max(last_seq, first + len(ids) - 1)
                if not self.readonly:
                    self._db, self._active, self._active_count = db, db.table(TABLE, cache_size=0), len(ids)
        if stale and not self.readonly:
            for first in stale:
                (self._seg_dir / segment_name(first)).unlink(missing_ok=True)
            fsync_dir(self._seg_dir)
            log.info("finished removing %d segment(s) whose removal was interrupted", len(stale))
        self._firsts = firsts
        self._sizes = {f: _size(self._seg_dir / segment_name(f)) for f in firsts}
        self._next_seq = last_seq + 1

    def _lock(self) -> None:
        """One writer per directory: a second one would hand out the same seqs and lose records.
        The kernel drops the lock when the process dies, so a kill never leaves it stale."""
        fd = os.open(self.path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StoreError(f"{self.path} is already open for writing (by this or another process)",
                             reason="locked") from None
        self._lock_fd = fd

    def _remove_leftovers(self) -> None:
        """A crash mid-write leaves ``*.tmp``: never part of the data, so just remove it."""
        leftovers = [p for d in (self.path, self._seg_dir) for p in d.glob("*" + TMP_SUFFIX)]
        for p in leftovers:
            p.unlink(missing_ok=True)
        if leftovers:
            log.info("removed %d temporary file(s) left by an interrupted write", len(leftovers))

    # -- writing -----------------------------------------------------------------------------

    def append(self, docs: Sequence[dict]) -> AppendResult:
        """Store ``docs`` as one durable write; returns once they are on disk.

        Each stored doc gets the next seq (gap-free, from 1) as its "seq" field and TinyDB
        doc_id. When the store is full, the policy decides; refused docs are the trailing ones.
        """
        self._check_writable()
        docs = list(docs)
        for doc in docs:
            if not isinstance(doc, dict) or not isinstance(doc.get("rx"), (int, float)):
                raise StoreError("every record must be a dict with a numeric 'rx' (receive time)",
                                 reason="bad_record")
        if not docs:
            return AppendResult([], 0, 0)
        self._maybe_end_episode()
        room = self.config.max_records - self._count
        gone: list[int] = []
        dropped = 0
        if len(docs) > room and self._policy is FullPolicy.DROP_ANCHORED:
            gone, dropped = self._plan_drop(len(docs) - room)
            room += dropped
        accepted = max(0, min(len(docs), room))
        refused = len(docs) - accepted
        if refused or dropped:
            changes = {"refused_total": self._meta["refused_total"] + refused,
                       "dropped_total": self._meta["dropped_total"] + dropped}
            if gone:
                changes["removed_upto"] = self._end_of(len(gone) - 1)
            self._save_meta(**changes)  # before deleting: a crash then only leaves files to tidy
            self._delete_segments(gone)
            self._note_full(refused, dropped)
        return AppendResult(self._write(docs[:accepted]), refused, dropped)

    def _write(self, docs: list[dict]) -> list[int]:
        seqs: list[int] = []
        done = 0
        while done < len(docs):
            if self._active is None or self._active_count >= self.config.segment_records:
                self._rotate()
            take = min(len(docs) - done, self.config.segment_records - self._active_count)
            first = self._next_seq
            batch = []
            for seq, doc in zip(range(first, first + take), docs[done:done + take]):
                record = Document(doc, doc_id=seq)  # a copy: the caller's dict is left alone
                record["seq"] = seq
                record.pop("state", None)  # derived on read, never stored
                batch.append(record)
            try:
                self._active.insert_multiple(batch)
            except OSError as e:
                raise StoreError(f"cannot write {self._active_path()}: {e}", reason="io") from e
            except TypeError as e:  # raised before anything is written
                raise StoreError(f"a record is not JSON-serialisable: {e}", reason="bad_record") from e
            self._active_count += take
            self._next_seq += take
            self._sizes[self._firsts[-1]] = self._db.storage.size or 0
            seqs.extend(range(first, first + take))
            done += take
        return seqs

    def _rotate(self) -> None:
        """Start a new segment at the next seq; the full one is never written again."""
        if self._db is not None:
            kept = (self._db.storage.read() or {}).get(TABLE) or {}
            self._newest_rx[self._firsts[-1]] = max((d["rx"] for d in kept.values()), default=None)
            self._db.close()
        first = self._next_seq
        self._db = TinyDB(self._seg_dir / segment_name(first), storage=AtomicJSONStorage, append_only=True)
        self._active = self._db.table(TABLE, cache_size=0)
        self._active_count = 0
        self._firsts.append(first)
        self._sizes[first] = 0

    def mark_processed(self, upto_seq: int) -> None:
        """Records up to ``upto_seq`` are processed (durable; lower values are ignored)."""
        self._check_writable()
        upto = min(int(upto_seq), self._next_seq - 1)
        if upto > self._meta["processed_upto"]:
            self._save_meta(processed_upto=upto)

    def mark_anchored(self, upto_seq: int) -> None:
        """Records up to ``upto_seq`` are anchored, hence processed too (durable, monotonic)."""
        self._check_writable()
        upto = min(int(upto_seq), self._next_seq - 1)
        if upto > self._meta["anchored_upto"]:
            self._save_meta(anchored_upto=upto, processed_upto=max(upto, self._meta["processed_upto"]))

    def expire(self, now: float | None = None, min_state: RecordState = RecordState.ANCHORED) -> int:
        """Delete the oldest segments whose records are all at least ``min_state`` and older
        than the retention (by their newest "rx"); stops at the first segment that is not.
        Returns the number of records expired."""
        self._check_writable()
        cutoff = (time.time() if now is None else now) - self.config.retention_s
        upto = {RecordState.ACCEPTED: self._next_seq - 1,
                RecordState.PROCESSED: self._meta["processed_upto"],
                RecordState.ANCHORED: self._meta["anchored_upto"]}[RecordState(min_state)]
        gone: list[int] = []
        for k, first in enumerate(self._firsts):
            if self._end_of(k) > upto:
                break
            newest = self._segment_newest_rx(k)  # read only once the state allows expiry
            if newest is not None and newest >= cutoff:
                break
            gone.append(first)
        if not gone:
            return 0
        end = self._end_of(len(gone) - 1)
        count = end - self._firsts[0] + 1
        self._save_meta(removed_upto=end, expired_total=self._meta["expired_total"] + count)
        self._delete_segments(gone)
        self._maybe_end_episode()
        return count

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
        self._db = self._active = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        self._closed = True

    def __enter__(self) -> RecordStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- reading -----------------------------------------------------------------------------

    def get(self, seq: int) -> dict | None:
        """The record with this seq, with its derived "state"; None if not held."""
        if not self._firsts or not self._firsts[0] <= seq < self._next_seq:
            return None
        k = bisect_right(self._firsts, seq) - 1
        doc = self._table(k).get(doc_id=seq)
        return self._with_state(doc) if doc is not None else None

    def iter_records(self, *, device: str | None = None, newest_first: bool = True,
                     since_rx: float | None = None, after_seq: int | None = None,
                     limit: int | None = None) -> Iterator[dict]:
        """Records with their "state", filtered; walks segments from the wanted end and reads
        only as many as it needs, so a small ``limit`` costs one or two segments."""
        firsts, last = list(self._firsts), self._next_seq - 1  # a stable view while we yield
        if limit is not None and limit <= 0:
            return
        # TinyDB applies the query to the raw documents and copies only those that match
        q = Query()
        conds = ([q.device == device] if device is not None else []) + \
                ([q.rx >= since_rx] if since_rx is not None else []) + \
                ([q.seq > after_seq] if after_seq is not None else [])
        cond = reduce(operator.and_, conds) if conds else None
        order = range(len(firsts) - 1, -1, -1) if newest_first else range(len(firsts))
        yielded = 0
        for k in order:
            end = firsts[k + 1] - 1 if k + 1 < len(firsts) else last
            if after_seq is not None and end <= after_seq:
                if newest_first:
                    return
                continue
            table = self._table(k, firsts[k])
            docs = table.search(cond) if cond is not None else table.all()  # one read of the file
            docs.sort(key=lambda d: d.doc_id, reverse=newest_first)
            for doc in docs:
                if doc.doc_id > last:  # appended after this read-only view was opened
                    continue
                yield self._with_state(doc)
                yielded += 1
                if limit is not None and yielded >= limit:
                    return

    def state_of(self, seq: int) -> RecordState:
        if seq <= self._meta["anchored_upto"]:
            return RecordState.ANCHORED
        if seq <= self._meta["processed_upto"]:
            return RecordState.PROCESSED
        return RecordState.ACCEPTED

    def stats(self) -> dict:
        """Counts for status displays; cheap (no file is read)."""
        return {
            "records": self._count,
            "segments": len(self._firsts),
            "first_seq": self._firsts[0] if self._firsts else None,
            "last_seq": self._next_seq - 1,
            **{k: self._meta[k] for k in ("processed_upto", "anchored_upto") + _COUNTERS},
            "bytes": sum(self._sizes.values()) + self._meta_size,
        }

    # -- internals ---------------------------------------------------------------------------

    @property
    def _count(self) -> int:
        return self._next_seq - self._firsts[0] if self._firsts else 0

    def _end_of(self, k: int) -> int:
        """Last seq of segment ``k``: segments are contiguous, so it is the next one's first - 1."""
        return self._firsts[k + 1] - 1 if k + 1 < len(self._firsts) else self._next_seq - 1

    def _active_path(self) -> Path:
        return self._seg_dir / segment_name(self._firsts[-1])

    def _table(self, k: int, first: int | None = None) -> Table:
        """Segment ``k``'s TinyDB table: the open one for the writer's active segment, else a
        read-only view of the file (a segment deleted meanwhile reads as empty)."""
        first = self._firsts[k] if first is None else first
        if self._active is not None and first == self._firsts[-1]:
            return self._active
        db = TinyDB(self._seg_dir / segment_name(first), storage=AtomicJSONStorage, readonly=True)
        return db.table(TABLE, cache_size=0)

    def _with_state(self, doc: Document) -> dict:
        out = dict(doc)
        out["seq"] = doc.doc_id
        out["state"] = self.state_of(doc.doc_id).value
        return out

    def _segment_newest_rx(self, k: int) -> float | None:
        first = self._firsts[k]
        if k == len(self._firsts) - 1:
            return _newest_rx(self._table(k))
        if first not in self._newest_rx:
            self._newest_rx[first] = _newest_rx(self._table(k))
        return self._newest_rx[first]

    def _plan_drop(self, need: int) -> tuple[list[int], int]:
        """The oldest segments that are wholly anchored, as many as it takes to free ``need``."""
        gone, freed = [], 0
        for k, first in enumerate(self._firsts):
            if freed >= need or self._end_of(k) > self._meta["anchored_upto"]:
                break
            gone.append(first)
            freed += self._end_of(k) - first + 1
        return gone, freed

    def _delete_segments(self, gone: list[int]) -> None:
        """Delete the oldest ``len(gone)`` segments (already recorded in meta.removed_upto)."""
        if not gone:
            return
        if self._firsts[-1] in gone and self._db is not None:
            self._db.close()
            self._db = self._active = None
            self._active_count = 0
        for first in gone:
            (self._seg_dir / segment_name(first)).unlink(missing_ok=True)
            self._sizes.pop(first, None)
            self._newest_rx.pop(first, None)
        del self._firsts[:len(gone)]
        fsync_dir(self._seg_dir)

    def _save_meta(self, **changes: int) -> None:
        meta = {**self._meta, **changes}
        raw = dump_json(meta)
        try:
            atomic_write(self._meta_path, raw)
        except OSError as e:
            raise StoreError(f"cannot write {self._meta_path}: {e}", reason="io") from e
        self._meta = meta
        self._meta_size = len(raw)

    def _note_full(self, refused: int, dropped: int) -> None:
        """Count the episode; log the first refusal and the first drop of each episode."""
        if self._episode is None:
            self._episode = {"refused": 0, "dropped": 0}
        for kind, n in (("dropped", dropped), ("refused", refused)):
            if n and not self._episode[kind]:
                what = ("dropping the oldest anchored records to make room" if kind == "dropped"
                        else "refusing new records")
                log.warning("buffer full (%d records, max_records %d, policy %s): %s; %d %s now, "
                            "further ones are counted in %s_total and not logged until it has room",
                            self._count, self.config.max_records, self._policy.value, what, n, kind,
                            kind)
            self._episode[kind] += n

    def _maybe_end_episode(self) -> None:
        room = self.config.max_records - self._count
        if self._episode is not None and room >= min(self.config.segment_records, self.config.max_records):
            log.info("buffer has room again (%d records held): %d refused and %d dropped while full",
                     self._count, self._episode["refused"], self._episode["dropped"])
            self._episode = None

    def _check_writable(self) -> None:
        if self.readonly:
            raise StoreError(f"{self.path} is open read-only", reason="readonly")
        if self._closed:
            raise StoreError(f"{self.path} is closed", reason="closed")


def _newest_rx(table: Table) -> float | None:
    return max((doc["rx"] for doc in table.all()), default=None)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0
