"""A project's state: its KV store and its SQL database, both in one SQLite file.

Upstream keeps KV in memory by default (lost on restart) and SQL in Postgres. Here both live in
``<data>/projects/<name>/state.sqlite``: KV in table ``kv``, the applets' own tables next to it,
created from the project's schema. Each event is all or nothing (its KV writes are applied only
if it succeeds, its SQL runs in a savepoint), so a handler that traps or is killed leaves no
half-written state; a batch of events is committed at once (one fsync),
together with how far the project got in its feed of records, so a record's effects on the
state happen exactly once. What an event asks of the world outside (transactions, MQTT
messages) is written to the ``outbox`` table in the same commit and carried out by the gateway
only after it; the gateway then removes it from the outbox (with a later commit), so after a
crash it knows what is still to be done.

SQL requests use W3bstream's JSON form: ``{"statement": "... ? ...", "params": [{"int32": 1},
{"string": "x"}, {"bytes": "<base64>"}, {"time": "<RFC3339>"}, ...]}``, and results are shaped
as upstream shapes them: one row → an object, several → an array, none → empty bytes.
"""
from __future__ import annotations

import base64
import json
import sqlite3
from pathlib import Path

from gateway.applets.abi import HostError, NoDatabase
from gateway.storage import create_private, private_dir

_PARAM_TYPES = {
    "int32": int, "int64": int, "uint32": int, "uint64": int,
    "float32": float, "float64": float,
    "bool": lambda v: 1 if v else 0,
    "string": str,
    "bytes": lambda v: base64.b64decode(v, validate=True),
    "time": str,
}


def parse_sql_request(raw: bytes) -> tuple[str, list]:
    """(statement, parameters) from W3bstream's JSON; HostError names what is wrong."""
    try:
        request = json.loads(raw)
    except ValueError as e:
        raise HostError(f"the SQL request is not JSON: {e}") from None
    if not isinstance(request, dict) or not isinstance(request.get("statement"), str):
        raise HostError('the SQL request needs {"statement": "...", "params": [...]}')
    params = []
    for i, param in enumerate(request.get("params") or []):
        if not isinstance(param, dict) or len(param) != 1:
            raise HostError(f"parameter {i} must be an object with one type key, e.g. {{\"int32\": 1}}")
        (kind, value), = param.items()
        convert = _PARAM_TYPES.get(kind)
        if convert is None:
            raise HostError(f"parameter {i} has unknown type {kind!r}")
        try:
            params.append(convert(value))
        except (TypeError, ValueError) as e:
            raise HostError(f"parameter {i} ({kind}) is invalid: {e}") from None
    return request["statement"], params


META = "w3gate_meta"
OUTBOX = "w3gate_outbox"
CACHE_ENTRIES = 100_000  # KV values kept in memory between batches


def read_cursor(path: Path, name: str) -> int:
    """A feed's committed cursor, read beside the worker that writes it (0 when none yet)."""
    if not path.exists():
        return 0
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        row = db.execute(f"SELECT value FROM {META} WHERE key = ?", (name,)).fetchone()
    except sqlite3.OperationalError:
        return 0  # created by an older version, or not yet initialised
    finally:
        db.close()
    return int(row[0]) if row else 0


def _json_value(value):
    return base64.b64encode(value).decode() if isinstance(value, bytes) else value


# Results typed as upstream (PostgreSQL through Go's database/sql) returns them, whatever SQLite
# stores: a column declared BOOLEAN comes back true/false, not 1/0, and a TIMESTAMP, DATE or TIME
# column as the text it was written as (Python's own converters would make datetime objects).
# SQLite applies these by a column's declared type (PARSE_DECLTYPES), so a bare expression keeps
# SQLite's type.
def _to_bool(raw: bytes) -> bool:
    return raw.strip().lower() not in (b"0", b"", b"f", b"false", b"0.0")


for _name in ("boolean", "bool"):
    sqlite3.register_converter(_name, _to_bool)
for _name in ("timestamp", "timestamptz", "date", "time", "timetz"):
    sqlite3.register_converter(_name, lambda raw: raw.decode("utf-8", "replace"))


class StateView:
    """A project's committed state, read-only, beside a running worker (``w3gate project state``):
    SQLite opened read-only, so no statement can change it."""

    def __init__(self, path: Path) -> None:
        if not path.exists():
            raise FileNotFoundError(path)
        self._db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, detect_types=sqlite3.PARSE_DECLTYPES)

    def kv(self, prefix: str = "") -> list[tuple[str, bytes]]:
        rows = self._db.execute("SELECT key, value FROM kv WHERE key >= ? ORDER BY key", (prefix,))
        return [(k, bytes(v)) for k, v in rows if k.startswith(prefix)]

    def tables(self) -> dict[str, int]:
        """The applets' own tables and their row counts."""
        names = [r[0] for r in self._db.execute("SELECT name FROM sqlite_master WHERE type = 'table' "
                                                "AND name NOT IN ('kv', ?, ?) ORDER BY name", (META, OUTBOX))]
        return {n: self._db.execute(f'SELECT count(*) FROM "{n}"').fetchone()[0] for n in names}

    def query(self, statement: str) -> list[dict]:
        """Rows as applets get them (typed as upstream returns them; bytes as base64)."""
        try:
            cursor = self._db.execute(statement)
            rows = cursor.fetchall()
        except sqlite3.Error as e:
            raise HostError(f"{e} in {statement!r}") from None
        names = [c[0] for c in cursor.description or []]
        return [{n: _json_value(v) for n, v in zip(names, row)} for row in rows]

    def close(self) -> None:
        self._db.close()


class ProjectState:
    """KV and SQL of one project; used by one worker process at a time."""

    def __init__(self, path: Path, *, schema: list[str] | None = None) -> None:
        private_dir(path.parent)
        create_private(path)  # SQLite would make it 0644, and its -wal and -shm files take its mode
        self.path = path
        self.has_database = bool(schema)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False,
                                   detect_types=sqlite3.PARSE_DECLTYPES)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # a committed batch survives power loss
        self._db.execute("CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value BLOB NOT NULL)")
        self._db.execute(f"CREATE TABLE IF NOT EXISTS {META} (key TEXT PRIMARY KEY, value INTEGER NOT NULL)")
        self._db.execute(f"CREATE TABLE IF NOT EXISTS {OUTBOX} (id TEXT PRIMARY KEY, effect TEXT NOT NULL)")
        for statement in schema or []:
            try:
                self._db.execute(statement)
            except sqlite3.OperationalError as e:
                if "already exists" not in str(e):  # the schema is applied on every start
                    raise HostError(f"the project's schema fails: {e} in {statement!r}") from None
        self._in_batch = False
        self._savepoint = False
        # KV in memory between commits: an event's writes, then the batch's, then what is on disk.
        # Most events touch a few keys, so this saves SQLite round trips and per-event savepoints.
        self._event_kv: dict[str, bytes] = {}
        self._batch_kv: dict[str, bytes] = {}
        self._cache: dict[str, bytes | None] = {}
        self._cursors: dict[str, int] = {}
        self._outbox: list[tuple[str, str]] = []  # (id, effect JSON) of the batch's kept events
        self._done: list[str] = []  # outbox entries the gateway has carried out

    def close(self) -> None:
        self._db.close()

    # -- transactions: a batch of events, each event all or nothing ---------------------------------

    def begin_batch(self) -> None:
        if not self._in_batch:
            self._db.execute("BEGIN")
            self._in_batch = True

    def commit_batch(self) -> None:
        """Write the batch's KV and cursors and commit: one fsync for the whole batch."""
        if not (self._batch_kv or self._cursors or self._in_batch or self._outbox or self._done):
            return
        self.begin_batch()
        if self._outbox:
            self._db.executemany(f"INSERT OR REPLACE INTO {OUTBOX} (id, effect) VALUES (?, ?)", self._outbox)
        if self._done:
            self._db.executemany(f"DELETE FROM {OUTBOX} WHERE id = ?", [(i,) for i in self._done])
        if self._batch_kv:
            self._db.executemany("INSERT INTO kv (key, value) VALUES (?, ?) "
                                 "ON CONFLICT(key) DO UPDATE SET value = excluded.value", self._batch_kv.items())
        if self._cursors:
            self._db.executemany(f"INSERT INTO {META} (key, value) VALUES (?, ?) "
                                 "ON CONFLICT(key) DO UPDATE SET value = excluded.value", self._cursors.items())
        self._db.execute("COMMIT")
        self._in_batch = False
        if len(self._cache) > CACHE_ENTRIES:
            self._cache.clear()
        self._cache.update(self._batch_kv)
        self._batch_kv.clear()
        self._cursors.clear()
        self._outbox.clear()
        self._done.clear()

    def begin_event(self) -> None:
        self._event_kv = {}

    def end_event(self, keep: bool) -> None:
        if keep:
            self._batch_kv.update(self._event_kv)
        self._event_kv = {}
        if self._savepoint:
            if not keep:
                self._db.execute("ROLLBACK TO event")
            self._db.execute("RELEASE event")
            self._savepoint = False

    def _sql_savepoint(self) -> None:
        """SQL changes of an event are undone with a savepoint, opened only by events that use SQL."""
        if not self._savepoint:
            self.begin_batch()
            self._db.execute("SAVEPOINT event")
            self._savepoint = True

    def add_effects(self, effects: list[dict]) -> None:
        """A kept event's effects (each with its ``id``), committed with the batch's state."""
        self._outbox.extend((e["id"], json.dumps(e)) for e in effects)

    def effects_done(self, ids: list[str]) -> None:
        """Effects the gateway carried out: removed from the outbox with the next commit."""
        self._done.extend(ids)

    def pending_effects(self) -> list[dict]:
        """Committed effects not yet reported carried out, in the order they were asked for."""
        return [json.loads(e) for (e,) in self._db.execute(f"SELECT effect FROM {OUTBOX} ORDER BY rowid")]

    def set_cursor(self, name: str, value: int) -> None:
        """How far a feed of events got; committed with the state its events produced."""
        self._cursors[name] = value

    # -- KV -----------------------------------------------------------------------------------------

    def kv_get(self, key: str) -> bytes | None:
        for layer in (self._event_kv, self._batch_kv, self._cache):
            if key in layer:
                return layer[key]
        row = self._db.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        value = None if row is None else bytes(row[0])
        self._cache[key] = value
        return value

    def kv_set(self, key: str, value: bytes) -> None:
        self._event_kv[key] = bytes(value)

    def kv_items(self, prefix: str = "") -> list[tuple[str, bytes]]:
        """Committed KV entries (for tools reading a project's state)."""
        rows = self._db.execute("SELECT key, value FROM kv WHERE key >= ? ORDER BY key", (prefix,))
        return [(k, bytes(v)) for k, v in rows if k.startswith(prefix)]

    # -- SQL ------------------------------------------------------------------------------------------

    def sql_exec(self, raw: bytes) -> None:
        if not self.has_database:
            raise NoDatabase("the project declares no database")
        statement, params = parse_sql_request(raw)
        self._sql_savepoint()
        try:
            self._db.execute(statement, params)
        except sqlite3.Error as e:
            raise HostError(f"{e} in {statement!r}") from None

    def sql_query(self, raw: bytes) -> bytes:
        if not self.has_database:
            raise NoDatabase("the project declares no database")
        statement, params = parse_sql_request(raw)
        self._sql_savepoint()
        try:
            cursor = self._db.execute(statement, params)
            rows = cursor.fetchall()
        except sqlite3.Error as e:
            raise HostError(f"{e} in {statement!r}") from None
        if not rows:
            return b""
        names = [c[0] for c in cursor.description]
        objects = [{n: _json_value(v) for n, v in zip(names, row)} for row in rows]
        return json.dumps(objects[0] if len(objects) == 1 else objects).encode()
