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
- Damage from outside (an emptied, cut-off or edited file; see ``integrity``) never stops the
  store and is never silent. At open the active segment and meta.json are checked in full and
  every other segment cheaply (a stat and two small reads, so opening stays O(segments), not
  O(records)); a full segment is checked in full whenever it is read, and by ``check_all``
  (``w3gate buffer check``). A damaged file is kept aside as ``<name>.damaged-<time>``, logged,
  listed in ``damage`` and ``stats()["damage"]``; its whole records are kept; seqs it can no
  longer account for become ``holes`` in meta.json.
- Seqs are never handed out twice, even when a file is lost: the high-water mark is kept in
  meta.json (the cursors, and the active segment's reserved range, written once per segment
  after its file exists and before its first acknowledgement), in the segment file names (an
  empty segment is kept when everything has expired) and in the records themselves. After a
  damaged or lost active segment, seqs go on above its whole reserved range.

With a ``RecordCipher`` (``[buffer] encrypt_at_rest``; ``cipher``), each record's payload is
encrypted as it is written and opened as it is read: every reader sees the plaintext record, and
a payload that does not open is listed in ``damage`` (``unreadable``) and read without its
``payload`` (with ``payload_error`` saying why), never raised; the file is left as it is. Older
records written in the clear read as before. A store opened without a cipher (readers that need
no payload) reads encrypted records with ``payload_error`` only.

One thread owns a writable store, and one store per directory may write (``writer.lock``, an
flock the kernel releases when the process dies). Other processes may open the same directory
with ``readonly=True`` at any time: each file is replaced atomically, so they see a consistent,
gap-free snapshot of what was durable when they opened it (open a new one for fresh data).
"""
from __future__ import annotations

import enum
import fcntl
import json
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
from tinydb.storages import Storage
from tinydb.table import Document, Table

from gateway import storage
from gateway.buffer.cipher import ENCRYPTED, RecordCipher, RecordCipherError
from gateway.buffer.integrity import (EMPTY_SEGMENT, TABLE, Damage, check_segment, is_seq, load_segment,
                                      keep_aside, quick_check, salvage_ints)
from gateway.storage import (FILE_MODE, TMP_SUFFIX, AtomicJSONStorage, StoreError, atomic_write, dump_json,
                             fsync_dir, private_dir)

__all__ = ["AppendResult", "Damage", "FullPolicy", "RecordState", "RecordStore", "StoreConfig", "StoreError"]

log = logging.getLogger("w3gate.buffer")

SEGMENTS = "segments"
META = "meta.json"
LOCK = "writer.lock"
_SEGMENT_RE = re.compile(r"seg-(\d{12})\.json")
_COUNTERS = ("refused_total", "dropped_total", "expired_total")
_CURSORS = ("processed_upto", "anchored_upto", "removed_upto")
_RESERVED = ("reserved_from", "reserved_upto")  # the active segment's range, written before its first ack
_INTS = _CURSORS + _COUNTERS + _RESERVED


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
                 readonly: bool = False, cipher: RecordCipher | None = None) -> None:
        if config.segment_records < 1 or config.max_records < 1 or config.retention_s < 0:
            raise StoreError(f"segment_records and max_records must be >= 1 and retention_s >= 0: {config}",
                             reason="bad_config")
        self.path = Path(path)
        self.config = config
        self.readonly = readonly
        self.cipher = cipher
        self._unreadable: dict[int, Damage] = {}  # records whose encrypted payload did not open, by seq
        try:
            self._policy = FullPolicy(config.full_policy)
        except ValueError:
            raise StoreError(f"full_policy must be one of {[p.value for p in FullPolicy]}, "
                             f"not {config.full_policy!r}", reason="bad_config") from None
        self._seg_dir = self.path / SEGMENTS
        self._meta_path = self.path / META
        self._meta: dict[str, int] = {k: 0 for k in _INTS}
        self._holes: dict[int, int] = {}     # seqs without a record (lost to damage), by segment
        self._holes_dirty = False            # holes changed during open: meta.json is written then
        self._floor = 0                      # seqs still readable in a damaged meta.json
        self._meta_problem: tuple[str, Path | None] = ("", None)
        self._damaged_active = False
        self._damage: list[Damage] = []
        self._recovered: dict[int, dict[int, dict]] = {}  # a reader's salvaged segments, by first seq
        self._checked: set[int] = set()      # full segments already checked in full (they never change)
        self._opening = True
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
            self._opening = False
            self._check_data_key()
        except BaseException:
            self.close()
            raise

    @property
    def damage(self) -> list[Damage]:
        """Every damaged or missing file found since the store opened (at open, or on the first
        full read of a segment), with what was recovered and where the original went."""
        return list(self._damage)

    # -- opening -----------------------------------------------------------------------------

    def _open(self) -> None:
        if not self.readonly:
            try:
                private_dir(self._seg_dir)  # records/ and records/segments/, 0700
            except OSError as e:
                raise StoreError(f"cannot create {self._seg_dir}: {e}", reason="io") from None
            self._lock()
            self._remove_leftovers()
        # meta.json before the file list: what a writer names in meta.json exists by then
        try:
            meta_raw: bytes | None = self._meta_path.read_bytes()
        except FileNotFoundError:
            meta_raw = None
        except OSError as e:
            raise StoreError(f"cannot read {self._meta_path}: {e.strerror or e}", reason="io") from None
        try:
            names = os.listdir(self._seg_dir)
        except FileNotFoundError:  # read-only view of a store not created yet
            names = []
        except OSError as e:
            raise StoreError(f"cannot list {self._seg_dir}: {e.strerror or e}", reason="io") from None
        firsts = sorted(int(m.group(1)) for m in map(_SEGMENT_RE.fullmatch, names) if m)
        trusted = self._load_meta(meta_raw, bool(firsts))
        removed = self._meta["removed_upto"] if trusted else 0
        # Segments wholly below removed_upto belong to an expiry/drop that was interrupted after
        # its meta write: finish it (the writer) or ignore them (a reader).
        stale = [f for f, nxt in zip(firsts, firsts[1:]) if nxt - 1 <= removed]
        firsts = firsts[len(stale):]
        floor = max(self._floor, *(self._meta[k] for k in _CURSORS))  # seqs known to have been issued
        last_seq = removed
        reserved_from, reserved_upto = self._meta["reserved_from"], self._meta["reserved_upto"]
        active_lost = None  # (first, last) of a reserved active segment whose file is gone
        if trusted and reserved_from > max(removed, firsts[-1] if firsts else 0):
            active_lost = (reserved_from, max(reserved_upto, reserved_from))
        if firsts and active_lost is None:
            first = firsts[-1]
            path = self._seg_dir / segment_name(first)
            db = TinyDB(path, storage=AtomicJSONStorage, readonly=self.readonly,
                        append_only=not self.readonly)
            try:
                data = db.storage.read()
                problem = None if data is not None else ("empty (0 bytes)" if _size(path) == 0
                                                         else "holds only whitespace")
            except StoreError as e:
                if e.reason != "corrupt":
                    raise
                data, problem = None, e.detail.removeprefix(f"{path} ").removeprefix("is ")
            ids: list[int] = []
            if problem is None:
                problem = check_segment(data, first, None)
            if problem is None:
                ids = sorted(int(k) for k in data[TABLE])
                if ids and ids != list(range(first, first + len(ids))):
                    problem = f"seqs are not {first}..{first + len(ids) - 1}"
                elif floor > max(ids[-1] if ids else first - 1, removed):
                    problem = (f"holds records up to {ids[-1] if ids else first - 1}, but seq {floor} "
                               f"was issued (it is older than the rest of the store)")
            if problem is not None:
                db.close()
                # how far the active segment may have reached: its reserved range, else as far as
                # any segment may be long (the config may have changed since it started)
                cap = (reserved_upto - first + 1 if trusted and reserved_from == first < reserved_upto
                       else max(self.config.segment_records, self._max_span(firsts)))
                kept, highest = self._salvage(first, first + cap - 1)
                last_seq = max(first + cap - 1, highest, floor, removed)
                self._holes[first] = last_seq - first + 1 - len(kept)
                self._holes_dirty = True
                top = max(kept, default=first - 1)
                if not self.readonly:  # first the new segment: a crash from here on leaves this one
                    self._write_empty(last_seq + 1)  # an older damaged segment, recovered at next open
                self._set_aside(first, problem, kept, f"records {top + 1}..{last_seq} may be lost (the active "
                                f"segment's range); seqs go on from {last_seq + 1}")
                self._damaged_active = True
            elif ids and ids[-1] <= removed or not ids and first <= removed:
                stale.append(first)
                firsts.pop()
                db.close()
            else:
                last_seq = max(last_seq, first + len(ids) - 1)
                if not self.readonly:
                    self._db, self._active, self._active_count = db, db.table(TABLE, cache_size=0), len(ids)
        if active_lost is not None:
            lost_from, lost_upto = active_lost
            last_seq = max(lost_upto, floor, removed)
            if firsts:
                self._holes[firsts[-1]] = self._holes.get(firsts[-1], 0) + last_seq - lost_from + 1
                self._holes_dirty = True
            self._note_damage(Damage(str(self._seg_dir / segment_name(lost_from)),
                                     f"missing (meta.json says the active segment starts at {lost_from})", 0,
                                     f"records {lost_from}..{last_seq} may be lost; seqs go on from "
                                     f"{last_seq + 1}", None))
            self._damaged_active = True
        if stale and not self.readonly:
            for first in stale:
                (self._seg_dir / segment_name(first)).unlink(missing_ok=True)
            fsync_dir(self._seg_dir)
            log.info("finished removing %d segment(s) whose removal was interrupted", len(stale))
        self._firsts = firsts
        self._next_seq = max(last_seq, floor) + 1
        for k, first in enumerate(firsts[:-1]):  # full segments: a cheap look now, a full check on read
            path = self._seg_dir / segment_name(first)
            if (why := quick_check(path, first)) is not None:
                self._table(k, why=why)  # reads, checks and (if damaged) recovers it
        self._sizes = {f: _size(self._seg_dir / segment_name(f)) for f in firsts}
        if not trusted:
            self._rebuild_meta()
        if not self.readonly:
            self._settle()

    def _load_meta(self, raw: bytes | None, have_segments: bool) -> bool:
        """Read meta.json into ``_meta``; False when it is missing (while segments exist) or damaged.
        Values still readable in a damaged copy raise the seq floor (they were issued) and keep
        the counters; the cursors are rebuilt from the segments (see ``_rebuild_meta``)."""
        path = self._meta_path
        if raw is None:
            if have_segments:
                self._meta_problem = ("missing while segments exist", None)
                return False
            return True
        problem, data = None, None
        if not raw.strip():
            problem = "empty (0 bytes)" if not raw else "holds only whitespace"
        else:
            try:
                data = json.loads(raw)
            except ValueError as e:
                problem = f"not valid JSON ({e})"
        if problem is None:
            problem = self._meta_value_problem(data)
        if problem is None:
            for key in _INTS:
                self._meta[key] = data.get(key, 0)
            self._holes = {int(k): v for k, v in (data.get("holes") or {}).items()}
            self._meta_size = len(raw)
            return True
        salvaged = ({k: v for k, v in data.items() if k in _INTS and is_seq(v)} if isinstance(data, dict)
                    else salvage_ints(raw, _INTS))
        self._floor = max([salvaged.get(k, 0) for k in _CURSORS] + [0])
        for key in _COUNTERS:
            self._meta[key] = salvaged.get(key, 0)
        self._meta["reserved_from"] = salvaged.get("reserved_from", 0)
        self._meta["reserved_upto"] = salvaged.get("reserved_upto", 0)
        self._meta_problem = (problem, path)
        return False

    @staticmethod
    def _meta_value_problem(data: object) -> str | None:
        if not isinstance(data, dict):
            return "not a JSON object"
        for key in _INTS:
            if key in data and not is_seq(data[key]):
                return f"{key} is {data[key]!r}, not a seq or count"
        holes = data.get("holes", {})
        if not isinstance(holes, dict) or not all(k.isdigit() and is_seq(v) for k, v in holes.items()):
            return f"holes is {holes!r}, not a map of segment to count"
        if data.get("anchored_upto", 0) > data.get("processed_upto", 0):
            return "anchored_upto is past processed_upto (anchoring always marks processed too)"
        return None

    def _rebuild_meta(self) -> None:
        """After meta.json was lost or damaged: rebuild it from the segments, move the damaged copy
        aside and write the new one (the writer).

        Processing state cannot be trusted any more, so every record still held counts as
        *accepted* again (processed_upto and anchored_upto end just below the oldest one held):
        nothing that may never have reached the applets is marked processed. Projects keep their
        own cursors with their state and skip what they already handled; a new project sees
        every held record; the anchorer's journal keeps it from sealing a record twice. The
        refused/dropped/expired counters keep whatever was still readable, else restart at 0."""
        problem, path = self._meta_problem
        below = self._firsts[0] - 1 if self._firsts else self._next_seq - 1
        for key in _CURSORS:
            self._meta[key] = below
        moved = None
        if path is not None and not self.readonly:
            moved = str(keep_aside(path))  # then replaced by _save_meta
        self._note_damage(Damage(str(self._meta_path), problem, 0,
                                 "processing state unknown: every held record counts as accepted again "
                                 f"(from seq {below + 1}); seqs go on from {self._next_seq}", moved))
        if not self.readonly:
            self._save_meta()

    def _settle(self) -> None:
        """The writer's last step at open: after a damaged or lost active segment, new records go to
        a new segment above every seq ever issued; the file names then carry that high-water
        mark too, and meta.json reserves the active segment's range (see ``_reserve``)."""
        if self._damaged_active or (not self._firsts and self._next_seq > 1):
            self._start_empty_segment(self._next_seq)
        elif self._firsts:
            self._reserve()
        if self._holes_dirty:
            self._save_meta()

    def _max_span(self, firsts: list[int]) -> int:
        return max((b - a for a, b in zip(firsts, firsts[1:])), default=0)

    def _lock(self) -> None:
        """One writer per directory: a second one would hand out the same seqs and lose records.
        The kernel drops the lock when the process dies, so a kill never leaves it stale."""
        fd = os.open(self.path / LOCK, os.O_RDWR | os.O_CREAT, FILE_MODE)
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
                if self.cipher is not None and self.cipher.encrypt_new and isinstance(record.get("payload"), str):
                    record[ENCRYPTED] = self.cipher.seal(seq, record.get("device"), record.pop("payload"))
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
            if (self._meta["reserved_from"] != self._firsts[-1]
                    or self._meta["reserved_upto"] < self._next_seq - 1):
                self._reserve()  # a new segment (once per segment_records): before the ack
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
        count = 0
        for k, first in enumerate(self._firsts):
            if self._end_of(k) > upto or first >= self._next_seq:  # or the empty active segment
                break
            newest = self._segment_newest_rx(k)  # read only once the state allows expiry
            if newest is not None and newest >= cutoff:
                break
            gone.append(first)
            count += self._held(k)
        if not gone:
            return 0
        end = self._end_of(len(gone) - 1)
        self._save_meta(removed_upto=end, expired_total=self._meta["expired_total"] + count)
        self._delete_segments(gone)
        if not self._firsts:  # keep a (new, empty) segment: the file names then still say where seqs are
            self._start_empty_segment(self._next_seq)
        self._maybe_end_episode()
        return count

    def check_all(self) -> list[Damage]:
        """Read and check every segment in full (open checks full segments only cheaply), recovering
        what is damaged as a read would; returns all damage found since the store opened."""
        for k in range(len(self._firsts)):
            table = self._table(k)
            if self.cipher is not None:  # every encrypted payload must open
                for doc in table.all():
                    if ENCRYPTED in doc:
                        self._with_state(doc)
        return self.damage

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
            "damage": [d.as_dict() for d in self._damage],
        }

    # -- internals ---------------------------------------------------------------------------

    @property
    def _count(self) -> int:
        if not self._firsts:
            return 0
        return self._next_seq - self._firsts[0] - sum(self._holes.get(f, 0) for f in self._firsts)

    def _held(self, k: int) -> int:
        """Records segment ``k`` holds: its seq range less the seqs lost to damage."""
        return self._end_of(k) - self._firsts[k] + 1 - self._holes.get(self._firsts[k], 0)

    def _end_of(self, k: int) -> int:
        """Last seq of segment ``k``: segments are contiguous, so it is the next one's first - 1."""
        return self._firsts[k + 1] - 1 if k + 1 < len(self._firsts) else self._next_seq - 1

    def _active_path(self) -> Path:
        return self._seg_dir / segment_name(self._firsts[-1])

    def _table(self, k: int, first: int | None = None, why: str | None = None) -> Table:
        """Segment ``k``'s TinyDB table: the open one for the writer's active segment, else the
        file read once and checked in full (a segment deleted meanwhile reads as empty). A damaged
        segment is recovered here (see ``_salvage``), so a read never fails on one."""
        first = self._firsts[k] if first is None else first
        if self._active is not None and first == self._firsts[-1]:
            return self._active
        if first in self._recovered:
            return _fixed_table({str(s): d for s, d in self._recovered[first].items()})
        newest = k == len(self._firsts) - 1  # a reader's view of the active one: it may have grown since
        end = self._firsts[k + 1] - 1 if not newest else self._next_seq - 1
        path = self._seg_dir / segment_name(first)
        try:
            data = storage.read_json(path)
        except StoreError as e:
            if e.reason != "corrupt":
                raise
            data, problem = None, e.detail.removeprefix(f"{path} ").removeprefix("is ")
        else:
            problem = None
            if data is None:
                size = _size(path) if path.exists() else None
                if size is None:  # removed by the writer since this view opened
                    return _fixed_table({})
                problem = "empty (0 bytes)" if size == 0 else "holds only whitespace"
            elif first in self._checked and isinstance(data.get(TABLE), dict):
                return _fixed_table(data[TABLE])
            elif (problem := check_segment(data, first, None if newest else end)) is None and not newest:
                expected = end - first + 1 - self._holes.get(first, 0)
                if len(data[TABLE]) != expected and not self._meta_problem[0]:  # holes are known
                    problem = f"holds {len(data[TABLE])} records of the {expected} its range {first}..{end} should"
        if problem is None:
            if not newest:
                self._checked.add(first)
            return _fixed_table(data[TABLE])
        problem = why or problem  # the open-time look says it more plainly ("truncated")
        kept, _ = self._salvage(first, end)
        missing = end - first + 1 - self._holes.get(first, 0) - len(kept)
        self._holes[first] = end - first + 1 - len(kept)
        lost = f"{missing} records of seqs {first}..{end} not recovered" if missing > 0 else ""
        self._set_aside(first, problem, kept, lost)
        if not self.readonly:
            if self._opening:
                self._holes_dirty = True
            else:
                self._save_meta()
        return _fixed_table({str(s): d for s, d in kept.items()})

    def _salvage(self, first: int, end: int | None) -> tuple[dict[int, dict], int]:
        """The records still whole in a damaged segment (by seq) and the highest seq seen in it."""
        path = self._seg_dir / segment_name(first)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raw = b""
        except OSError as e:
            raise StoreError(f"cannot read {path}: {e}", reason="io") from None
        kept, _, highest = load_segment(raw, first, end)
        return kept, highest

    def _set_aside(self, first: int, problem: str, kept: dict[int, dict], lost: str) -> None:
        """The writer moves the damaged file aside and writes what was recovered in its place (an
        empty segment if nothing was); a reader keeps the recovered records in memory."""
        path = self._seg_dir / segment_name(first)
        moved = None
        if self.readonly:
            self._recovered[first] = kept
        else:
            if path.exists():
                moved = str(keep_aside(path))
            raw = (dump_json({TABLE: {str(s): kept[s] for s in sorted(kept)}}) if kept else EMPTY_SEGMENT)
            try:
                atomic_write(path, raw)
            except OSError as e:
                raise StoreError(f"cannot write {path}: {e}", reason="io") from e
            self._sizes[first] = len(raw)
        self._note_damage(Damage(str(path), problem, len(kept), lost, moved))

    def _note_damage(self, damage: Damage) -> None:
        self._damage.append(damage)
        if self.readonly:
            log.warning("record buffer damaged (read-only view, nothing changed): %s", damage.line())
        else:
            log.error("record buffer damaged: %s", damage.line())

    def _write_empty(self, first: int) -> Path:
        path = self._seg_dir / segment_name(first)
        try:
            atomic_write(path, EMPTY_SEGMENT)
        except OSError as e:
            raise StoreError(f"cannot write {path}: {e}", reason="io") from e
        return path

    def _start_empty_segment(self, first: int) -> None:
        """Make an empty active segment at ``first`` (its file exists before meta.json names it)."""
        if self._db is not None:
            self._db.close()
        path = self._write_empty(first)
        self._db = TinyDB(path, storage=AtomicJSONStorage, append_only=True)
        self._active = self._db.table(TABLE, cache_size=0)
        self._active_count = 0
        self._firsts.append(first)
        self._sizes[first] = len(EMPTY_SEGMENT)
        self._next_seq = first
        self._reserve()

    def _reserve(self) -> None:
        """Record the active segment's range in meta.json once its file exists and before any of its
        records is acknowledged: if the file is later lost or emptied, seqs go on above the range
        instead of being handed out twice. One small write per segment, not per append."""
        first = self._firsts[-1]
        upto = max(first + self.config.segment_records - 1, self._next_seq - 1)
        if self._meta["reserved_from"] != first or self._meta["reserved_upto"] < self._next_seq - 1:
            self._save_meta(reserved_from=first, reserved_upto=upto)

    def _with_state(self, doc: Document) -> dict:
        out = dict(doc)
        out["seq"] = doc.doc_id
        out["state"] = self.state_of(doc.doc_id).value
        if ENCRYPTED in out:
            if self.cipher is None:  # a reader that needs no payload (status, doctor): not damage
                out["payload_error"] = (f"no_data_key: record {doc.doc_id}'s payload is encrypted at rest and this "
                                        "store was opened without the data key ([buffer] encrypt_at_rest)")
                return out
            try:
                out["payload"] = self.cipher.open(doc.doc_id, out.get("device"), out[ENCRYPTED])
                del out[ENCRYPTED]
            except RecordCipherError as e:
                out["payload_error"] = str(e)
                self._note_unreadable(doc.doc_id, e)
        return out

    def _note_unreadable(self, seq: int, error: RecordCipherError) -> None:
        """A payload that does not open is damage (listed once per seq), but the file is sound and is
        left as it is: with the right data key it opens again."""
        if seq in self._unreadable:
            return
        k = bisect_right(self._firsts, seq) - 1
        path = self._seg_dir / segment_name(self._firsts[k] if k >= 0 else seq)
        damage = Damage(str(path), f"{error.reason}: {error.detail}", 0,
                        f"record {seq}'s payload is unreadable; the file is left as it is", None)
        self._unreadable[seq] = damage
        self._note_damage(damage)

    @property
    def unreadable(self) -> dict[int, Damage]:
        """Records met so far whose encrypted payload did not open, by seq (each also in ``damage``)."""
        return dict(sorted(self._unreadable.items()))

    def _check_data_key(self) -> None:
        """With a cipher, the newest encrypted record must have been written with its data key: a
        writer that went on with another key would leave a history half of which nobody can read
        (a lost datakey.json is replaced by a new one at start; this stops the gateway instead)."""
        if self.cipher is None:
            return
        for k in range(len(self._firsts) - 1, max(-1, len(self._firsts) - 3), -1):  # the newest two segments
            for doc in sorted(self._table(k).all(), key=lambda d: d.doc_id, reverse=True):
                stored = doc.get(ENCRYPTED)
                kid = stored.partition(":")[0] if isinstance(stored, str) else ""
                if not re.fullmatch(r"[0-9a-f]{8}", kid):  # not a well-formed record: a read reports it
                    continue
                if kid != self.cipher.key_id:
                    raise StoreError(
                        f"{self.path}: record {doc.doc_id} (and likely those before it) was encrypted with data "
                        f"key {kid}, but the data key given is {self.cipher.key_id}: put back the datakey.json "
                        f"that holds key {kid} (and the node key it is sealed to); records encrypted with it "
                        "cannot be read with any other key", reason="wrong_data_key")
                return

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
            freed += self._held(k)
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
            self._holes.pop(first, None)  # meta.json keeps the stale entry until its next write: harmless
        del self._firsts[:len(gone)]
        fsync_dir(self._seg_dir)

    def _save_meta(self, **changes: int) -> None:
        meta = {**self._meta, **changes}
        holes = {str(f): n for f, n in sorted(self._holes.items()) if n}
        raw = dump_json({**meta, "holes": holes} if holes else meta)
        try:
            atomic_write(self._meta_path, raw)
        except OSError as e:
            raise StoreError(f"cannot write {self._meta_path}: {e}", reason="io") from e
        self._meta = meta
        self._meta_size = len(raw)
        self._holes_dirty = False

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


class _Fixed(Storage):
    """Records already read (and checked) from a segment file, served to a TinyDB table."""

    def __init__(self, data: dict) -> None:
        self.data = data

    def read(self) -> dict:
        return self.data

    def write(self, data: dict) -> None:
        raise StoreError("a full segment is never written through its reader", reason="readonly")


def _fixed_table(records: dict) -> Table:
    return TinyDB(storage=_Fixed, data={TABLE: records}).table(TABLE, cache_size=0)


def _newest_rx(table: Table) -> float | None:
    return max((doc["rx"] for doc in table.all()), default=None)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0
