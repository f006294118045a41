"""A TinyDB storage for the segment being filled: an append-only journal.

TinyDB hands its storage the whole database on every write, and JSONStorage rewrites the whole
file each time, so an insert costs O(segment) in serialisation and I/O. This storage compares
what TinyDB hands it with what is already on disk and appends only the difference as one JSON
line, then fsyncs: a group commit costs O(batch). On read it replays the lines. A crash can only
tear the last line, which was never acknowledged (acknowledgement follows the fsync); it is
ignored on read and cut off before the next append.

Line format: ``{"<table>": {"<doc id>": {...}, ...}, ...}`` for new or changed documents, plus
``"-": {"<table>": [<doc id>, ...]}`` for removed ones.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from tinydb.storages import Storage

from gateway.atomicstorage import StorageError, fsync_dir

_DELETED = "-"


def replay(raw: bytes, path: Path) -> tuple[dict, int]:
    """The database a journal describes, and the byte length of its intact prefix."""
    data: dict = {}
    good = 0
    for line in raw.splitlines(keepends=True):
        if not line.endswith(b"\n"):
            break  # torn by a crash mid-append
        try:
            change = json.loads(line)
        except ValueError:
            if good + len(line) == len(raw):
                break  # a garbled last line: also a torn append
            raise StorageError(f"{path}: corrupt journal line at byte {good}", reason="corrupt") from None
        for table, ids in change.pop(_DELETED, {}).items():
            for doc_id in ids:
                data.get(table, {}).pop(str(doc_id), None)
        for table, docs in change.items():
            data.setdefault(table, {}).update(docs)
        good += len(line)
    return data, good


class JournalStorage(Storage):
    def __init__(self, path: str | os.PathLike, *, readonly: bool = False) -> None:
        self.path = Path(path)
        self.readonly = readonly
        self._snapshot: dict | None = None  # what the file holds, as TinyDB last saw it
        self._fd: int | None = None

    def read(self) -> dict | None:
        if self._snapshot is None:
            try:
                raw = self.path.read_bytes()
            except FileNotFoundError:
                return None
            data, good = replay(raw, self.path)
            if good < len(raw) and not self.readonly:
                with open(self.path, "r+b") as f:  # cut the torn tail before appending again
                    f.truncate(good)
                    os.fsync(f.fileno())
            self._snapshot = data
        # TinyDB edits what read() returns (update() changes documents in place) before handing
        # it to write(), which compares it with the snapshot: give out copies.
        if not self._snapshot:
            return None
        return {table: {k: dict(v) for k, v in docs.items()} for table, docs in self._snapshot.items()}

    def write(self, data: dict) -> None:
        if self.readonly:
            raise StorageError(f"{self.path} is open read-only", reason="readonly")
        old = self._snapshot or {}
        change: dict = {}
        deleted: dict = {}
        for table, docs in data.items():
            before = old.get(table, {})
            fresh = {k: v for k, v in docs.items() if before.get(k) != v}
            if fresh:
                change[table] = fresh
            gone = [k for k in before if k not in docs]
            if gone:
                deleted[table] = gone
        if deleted:
            change[_DELETED] = deleted
        if not change and self._snapshot is not None:
            return
        line = json.dumps(change, separators=(",", ":")).encode() + b"\n"
        self._append(line)
        snapshot = self._snapshot if self._snapshot is not None else {}
        for table, ids in deleted.items():
            for k in ids:
                snapshot[table].pop(k, None)
        for table, docs in change.items():
            if table != _DELETED:
                snapshot.setdefault(table, {}).update((k, dict(v)) for k, v in docs.items())
        for table in data:
            snapshot.setdefault(table, {})
        self._snapshot = snapshot

    def _append(self, line: bytes) -> None:
        if self._fd is None:
            created = not self.path.exists()
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            if created:
                fsync_dir(self.path.parent)
        try:
            os.write(self._fd, line)
            os.fdatasync(self._fd)
        except OSError:
            self._snapshot = None  # unknown what reached the file: re-read it next time
            raise

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
