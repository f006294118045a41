"""A TinyDB storage that never tears a file and never forgets an acknowledged write.

TinyDB's own JSONStorage rewrites its file in place: a crash can tear it, and a kill between
the write and the truncate leaves trailing bytes TinyDB cannot parse again. Here every write
goes to ``<file>.tmp`` in the same directory, is flushed and fsync'd, replaces the file with
``os.replace`` and then the directory is fsync'd, so after a kill or a power cut the file holds
the old or the new data, never a mix, and a write that returned is on disk.

The record store's writer opens its active segment with ``append_only=True``: the storage keeps
what it last wrote in memory and serves ``read()`` from it (TinyDB reads the whole table before
every write; re-parsing the file just written would cost a full JSON parse per append), and it
keeps each table's JSON text: when a table only grew (the same document objects, new ones at
the end), only the new documents are encoded and spliced in, so a group commit encodes O(batch),
not O(segment). Removals and replacements are detected and encoded in full, but a document
changed *in place* (TinyDB's ``update``/``upsert`` do that) would not be: that is why this mode
is only for append-only tables. A read-only storage never caches (the file changes under it)
and never creates or writes anything.

Everything w3gate keeps in its data directory is private to the account that runs it (issue 13:
records are location histories): files are created 0600 and directories 0700 whatever the
process's umask (``FILE_MODE``, ``DIR_MODE``; ``atomic_write``, ``open_private``,
``create_private``, ``private_dir``). The process umask is never changed: w3gate is a library too.
"""
from __future__ import annotations

import fcntl
import json
import operator
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Generic, Iterator, TypeVar

from tinydb import TinyDB
from tinydb.storages import Storage

from gateway.errors import W3gateError

TMP_SUFFIX = ".tmp"
FILE_MODE = 0o600  # every file w3gate writes in its data directory
DIR_MODE = 0o700   # every directory it makes there


class StoreError(W3gateError):
    """The record store cannot do what was asked; ``reason`` says why, the message names the file."""

    reason = "store"


def fsync_dir(path: Path) -> None:
    """Make a rename or unlink in ``path`` durable (the directory entry is data too)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def private_dir(path: Path) -> Path:
    """Make ``path`` and any missing parent directories, each 0700 whatever the umask (``mkdir -p``
    would give the parents the umask's mode). Directories that already exist are left as they are
    (``gateway.layout.check_permissions`` reports a looser one). Returns ``path``."""
    path = Path(path)
    missing = []
    p = path
    while not p.is_dir():
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    for d in reversed(missing):
        try:
            os.mkdir(d, DIR_MODE)
        except FileExistsError:
            if not d.is_dir():
                raise
            continue  # another process made it meanwhile: its maker chose its mode
        os.chmod(d, DIR_MODE)  # a umask like 0o277 would have taken the owner's bits too
    return path


def open_private(path: str | os.PathLike, mode: str = "a", **kwargs):
    """``open(path, mode)`` for appending (``"a"``, ``"ab"``), creating the file 0600 if missing
    (an existing file keeps its mode). ``kwargs`` go to ``open`` (``buffering``, ``encoding``)."""
    if mode not in ("a", "ab", "a+", "ab+", "a+b"):
        raise ValueError(f"open_private only appends, not {mode!r}")
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
    if "+" in mode:
        flags = (flags & ~os.O_WRONLY) | os.O_RDWR
    fd = os.open(path, flags, FILE_MODE)  # the umask can only take bits away from 0o600
    try:
        return open(fd, mode, **kwargs)
    except BaseException:
        os.close(fd)
        raise


def create_private(path: str | os.PathLike) -> None:
    """Create ``path`` empty and 0600 if it does not exist yet (an existing file is left alone):
    for files another library creates with its own mode (SQLite gives a new database 0644, and
    its -wal and -shm files the database's mode)."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE))
    except FileExistsError:
        pass


def atomic_write(path: Path, data: bytes, *, mode: int = FILE_MODE) -> None:
    """Replace ``path`` with ``data`` durably: temp file, fsync, rename, fsync directory. The file
    has ``mode`` from its first byte whatever the umask (0600 by default: nothing w3gate keeps
    in its data directory is for other accounts)."""
    tmp = path.with_name(path.name + TMP_SUFFIX)
    tmp.unlink(missing_ok=True)  # an old temp file could carry a wider mode
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)  # whatever the umask
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def read_json(path: Path) -> dict | None:
    """The JSON object in ``path``; None when missing or empty; StoreError naming it when corrupt."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise StoreError(f"cannot read {path}: {e}", reason="io") from None
    if not raw or raw.isspace():
        return None
    try:
        data = json.loads(raw)
    except ValueError as e:
        raise StoreError(f"{path} is not valid JSON ({e})", reason="corrupt") from None
    if not isinstance(data, dict):
        raise StoreError(f"{path} does not hold a JSON object", reason="corrupt")
    return data


_ENCODER = json.JSONEncoder(separators=(",", ":"))  # one instance: json.dumps builds one per call


def _dumps(value: object) -> str:
    return _ENCODER.encode(value)


def dump_json(data: dict) -> bytes:
    return _dumps(data).encode()


class AtomicJSONStorage(Storage):
    """Compact JSON with atomic, durable replace on every write.

    ``readonly``: never creates, writes or caches (for readers in other processes).
    ``append_only``: serve reads from memory and encode only appended documents (see the module
    docstring); only for a single writer whose documents, once written, never change in place.
    """

    def __init__(self, path: str | os.PathLike, *, readonly: bool = False,
                 append_only: bool = False, mode: int = FILE_MODE) -> None:
        self.path = Path(path)
        self.readonly = readonly
        self.mode = mode
        self._keep = append_only and not readonly
        self._data: dict | None = None
        self._text: dict[str, str] = {}  # table name -> its JSON text as last written (keep only)
        self.size: int | None = None  # bytes of the last write, for the store's disk accounting

    def read(self) -> dict | None:
        if self._data is None:
            data = read_json(self.path)
            if data is None or not self._keep:
                return data
            self._data = data
        # A shallow copy: TinyDB assigns the rebuilt table into the dict it was given, and that
        # must not touch the kept data before the write has succeeded.
        return dict(self._data)

    def write(self, data: dict) -> None:
        if self.readonly:
            raise StoreError(f"{self.path} is open read-only", reason="readonly")
        if self._keep:
            text = {name: self._encode_table(name, table) for name, table in data.items()}
            raw = ("{" + ",".join(_dumps(name) + ":" + t for name, t in text.items()) + "}").encode()
        else:
            raw = dump_json(data)
        atomic_write(self.path, raw, mode=self.mode)
        self.size = len(raw)
        if self._keep:
            self._data, self._text = data, text

    def _encode_table(self, name: str, table: dict) -> str:
        """The table's JSON text, re-using what was written last time when the table only grew."""
        old = (self._data or {}).get(name)
        text = self._text.get(name)
        if old is None or text is None or not isinstance(table, dict) or len(table) < len(old):
            return _dumps(table)
        n = len(old)
        keys = list(table)
        # the same keys first, in the same order, holding the very same document objects
        if keys[:n] != list(old) or not all(map(operator.is_, old.values(), table.values())):
            return _dumps(table)
        if len(keys) == n:
            return text
        added = {key: table[key] for key in keys[n:]}
        return text[:-1] + ("," if old else "") + _dumps(added)[1:]

    def close(self) -> None:
        self._data = None
        self._text = {}


T = TypeVar("T")


class WatchedTable(Generic[T]):
    """One small TinyDB table that the CLI edits while the gateway runs (the device registries).

    Readers keep it in memory, keyed by ``key``, and ``reload`` re-reads the file only when it
    changed. Every read-modify-write holds an flock, so the CLI and the gateway never lose each
    other's updates. The file and its lock file are 0600 (``mode``).
    """

    def __init__(self, path: str | os.PathLike, table: str, key: str, load: Callable[[dict], T], *,
                 mode: int = FILE_MODE) -> None:
        self.path = Path(path)
        self._table_name, self._key, self._load, self._mode = table, key, load, mode
        self._lock_path = self.path.with_name(self.path.name + ".lock")
        self._items: dict[str, T] = {}
        self._stamp: tuple[int, int] | None = None
        self.reload()

    def _file_stamp(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns, st.st_ino)

    def reload(self) -> bool:
        """Re-read the file if it changed since the last read; True when it did."""
        stamp = self._file_stamp()
        if stamp == self._stamp and stamp is not None:
            return False
        if stamp is None:
            self._stamp = stamp
            changed = bool(self._items)
            self._items = {}
            return changed
        try:
            db = TinyDB(self.path, storage=AtomicJSONStorage, readonly=True)
            try:
                items = {d[self._key]: self._load(d) for d in db.table(self._table_name).all()}
            finally:
                db.close()
        except StoreError as e:  # the last good copy stays in effect; the next reload tries again
            raise StoreError(f"{e.detail}; the previous contents stay in effect", reason=e.reason) from None
        except Exception as e:  # noqa: BLE001 - whatever the file holds, the reason names it
            raise StoreError(f"{self.path} cannot be read ({type(e).__name__}: {str(e)[:200]}); "
                             "the previous contents stay in effect", reason="corrupt") from None
        self._items, self._stamp = items, stamp
        return True

    def get(self, key: str) -> T | None:
        return self._items.get(key)

    def __iter__(self) -> Iterator[T]:
        return iter([self._items[k] for k in sorted(self._items)])

    def __len__(self) -> int:
        return len(self._items)

    @contextmanager
    def _table(self):
        """The TinyDB table, under the lock; the in-memory copy is re-read afterwards."""
        private_dir(self.path.parent)
        with open_private(self._lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            db = TinyDB(self.path, storage=AtomicJSONStorage, mode=self._mode)
            try:
                yield db.table(self._table_name)
            finally:
                db.close()
        self.reload()
