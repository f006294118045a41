"""A TinyDB storage whose writes are atomic and durable.

TinyDB's JSONStorage rewrites its file in place, so a crash can tear it, and a kill between
write and truncate leaves a file TinyDB cannot open again. Here every write goes to a temporary
file in the same directory, is fsync'd, replaces the old file with ``os.replace`` and fsyncs the
directory: after a crash or power cut the file holds the old or the new data, never a mix.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from tinydb.storages import Storage

from gateway.errors import W3gateError


class StorageError(W3gateError):
    reason = "storage"


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` durably (temp file, fsync, rename, fsync directory)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


class AtomicJSONStorage(Storage):
    """Compact JSON, atomic replace on every write; ``readonly`` never creates or writes."""

    def __init__(self, path: str | os.PathLike, *, readonly: bool = False) -> None:
        self.path = Path(path)
        self.readonly = readonly

    def read(self) -> dict | None:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        if not raw.strip():
            return None
        try:
            return json.loads(raw)
        except ValueError as e:
            raise StorageError(f"{self.path} is not valid JSON: {e}", reason="corrupt") from None

    def write(self, data: dict) -> None:
        if self.readonly:
            raise StorageError(f"{self.path} is open read-only", reason="readonly")
        atomic_write(self.path, json.dumps(data, separators=(",", ":")).encode())

    def close(self) -> None:
        pass
