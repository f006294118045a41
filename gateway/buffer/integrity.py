"""Checking and salvaging the record store's files: what counts as damage and what is kept of it.

The store's own writes never produce an empty, truncated or inconsistent file (each is an atomic,
fsync'd replace), so any such file is damage from outside: a file system that lost data in a
power cut, a full or failing SD card, a hand edit. Damage is never deleted and never silent: the
file is kept aside as ``<name>.damaged-<UTC time>``, one log line names it and why, and the store
lists it in ``RecordStore.damage`` (``w3gate buffer check``, ``w3gate status``).

What is salvaged: every record in a damaged segment that is still whole, sits inside the
segment's seq range and carries its own seq (a prefix of a truncated file, the records around
garbage). Seqs found anywhere, even in records that are thrown away, still count towards the
high-water mark, so they are never handed out again.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from gateway.storage import FILE_MODE, StoreError, fsync_dir

TABLE = "records"
MAX_SEQ = 10**12 - 1  # segment names hold 12 digits
EMPTY_SEGMENT = b'{"records":{}}'  # a segment that holds no record (made by recovery, never by damage)
_HEAD = re.compile(rb'\{"records":\{"(\d{1,12})":\{')
_KEY = re.compile(r'"(\d{1,12})":\{')  # where a record may start, to resynchronise after garbage


@dataclass
class Damage:
    """One damaged or missing file of the store and what was done about it."""

    file: str             # the file's path
    reason: str           # why it cannot be trusted ("empty (0 bytes)", "not valid JSON: ...", ...)
    recovered: int        # records salvaged from it (0 for meta.json)
    lost: str             # what could not be salvaged, in words ("" when nothing)
    moved_to: str | None  # where the original is now; None when missing, or for a read-only store

    def as_dict(self) -> dict:
        return asdict(self)

    def line(self) -> str:
        """One line for logs and the CLI."""
        moved = f"; moved to {Path(self.moved_to).name}" if self.moved_to else ""
        lost = f"; {self.lost}" if self.lost else ""
        return f"{self.file}: {self.reason}; {self.recovered} records recovered{lost}{moved}"


class DamagedFile(StoreError):
    """A store file failed its check; ``detail`` says why."""

    reason = "corrupt"


def is_seq(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_SEQ


def doc_problem(key: object, doc: object, first: int, last: int | None) -> str | None:
    """Why one stored record cannot be trusted (None if it can): its key must be its seq, inside
    the segment's range, and it must be a record (a dict with a numeric receive time)."""
    try:
        seq = int(key)
    except (TypeError, ValueError):
        return f"key {key!r} is not a seq"
    if not first <= seq <= (MAX_SEQ if last is None else last):
        return f"seq {seq} is outside the segment's range {first}..{'' if last is None else last}"
    if not isinstance(doc, dict):
        return f"record {seq} is not an object"
    if doc.get("seq") != seq:
        return f"record {seq} carries seq {doc.get('seq')!r}"
    rx = doc.get("rx")
    if not isinstance(rx, (int, float)) or isinstance(rx, bool):
        return f"record {seq} has no numeric receive time"
    return None


def check_segment(data: object, first: int, last: int | None) -> str | None:
    """Why a parsed segment cannot be trusted, or None: one "records" table of valid records."""
    if not isinstance(data, dict) or list(data) != [TABLE] or not isinstance(data[TABLE], dict):
        return "not a record segment (expected one 'records' table)"
    table = data[TABLE]
    if _looks_whole(table, first, MAX_SEQ if last is None else last):
        return None
    for key, doc in table.items():
        problem = doc_problem(key, doc, first, last)
        if problem:
            return problem
    return None


def _looks_whole(table: dict, first: int, last: int) -> bool:
    """The common case in a few C-speed passes (a full read checks every segment it reads); the
    record-by-record loop runs only to name what is wrong."""
    try:
        seqs = list(map(int, table))
        if seqs and not (first <= min(seqs) and max(seqs) <= last):
            return False
        return (all(type(d) is dict for d in table.values())
                and [d.get("seq") for d in table.values()] == seqs
                and all(type(d.get("rx")) in (float, int) for d in table.values()))
    except (TypeError, ValueError):
        return False


def quick_check(path: Path, first: int) -> str | None:
    """A cheap look at a full segment at open (a stat and two small reads, no parse): it must start
    like a segment written by the store and end its JSON object. None when it looks whole. A file
    that fails this is checked in full before being called damaged (a hand-formatted copy is fine)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as e:
        return f"cannot be read ({e.strerror or e})"
    try:
        size = os.fstat(fd).st_size
        if size == 0:
            return "empty (0 bytes)"
        head = os.pread(fd, 64, 0)
        tail = os.pread(fd, 2, max(0, size - 2))
    except OSError as e:
        return f"cannot be read ({e.strerror or e})"
    finally:
        os.close(fd)
    if head == EMPTY_SEGMENT:
        return None
    m = _HEAD.match(head)
    if m is None or int(m.group(1)) < first:
        return "does not start like a record segment"
    if tail != b"}}":
        return "truncated (its JSON object is not closed)"
    return None


def load_segment(raw: bytes, first: int, last: int | None) -> tuple[dict[int, dict], str | None, int]:
    """Parse a segment leniently: (the records to keep by seq, why the file is damaged or None, the
    highest seq seen anywhere in it, kept or not)."""
    if not raw or raw.isspace():
        return {}, "empty (0 bytes)" if not raw else "holds only whitespace", 0
    try:
        data = json.loads(raw)
    except ValueError as e:
        data, problem = None, f"not valid JSON ({e})"
    else:
        problem = check_segment(data, first, last)
        if problem is None:
            return {int(k): v for k, v in data[TABLE].items()}, None, max(map(int, data[TABLE]), default=0)
    if isinstance(data, dict) and isinstance(data.get(TABLE), dict):
        candidates = list(data[TABLE].items())
    else:
        candidates = _salvage(raw.decode("utf-8", errors="replace"))
    kept: dict[int, dict] = {}
    highest = 0
    for key, doc in candidates:
        for value in (key, doc.get("seq") if isinstance(doc, dict) else None):
            try:
                seq = int(value)
            except (TypeError, ValueError, OverflowError):  # OverflowError: Infinity where a seq was
                continue
            if is_seq(seq):
                highest = max(highest, seq)
        if doc_problem(key, doc, first, last) is None:
            kept.setdefault(int(key), doc)
    return kept, problem, highest


def _salvage(text: str) -> list[tuple[str, object]]:
    """Every ``"<seq>":{...}`` that still parses, skipping over garbage and a cut-off tail."""
    decoder = json.JSONDecoder()
    found: list[tuple[str, object]] = []
    pos = 0
    while (m := _KEY.search(text, pos)) is not None:
        try:
            doc, end = decoder.raw_decode(text, m.end() - 1)
        except ValueError:
            pos = m.end()
            continue
        found.append((m.group(1), doc))
        pos = end
    return found


def salvage_ints(raw: bytes, keys: tuple[str, ...]) -> dict[str, int]:
    """``"key": <int>`` pairs still readable in a damaged meta.json."""
    text = raw.decode("utf-8", errors="replace")
    out = {}
    for key in keys:
        m = re.search(rf'"{re.escape(key)}"\s*:\s*(\d{{1,12}})\b', text)
        if m:
            out[key] = int(m.group(1))
    return out


def keep_aside(path: Path) -> Path:
    """Keep a damaged file as ``<name>.damaged-<UTC time>`` next to it (never deleted) before the
    caller replaces it: a hard link, so at every moment the name holds the old or the new file and
    a crash during recovery loses nothing (a copy where the file system has no hard links)."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = path.with_name(f"{path.name}.damaged-{stamp}")
    n = 1
    while target.exists():
        target = path.with_name(f"{path.name}.damaged-{stamp}-{n}")
        n += 1
    try:
        os.link(path, target)
    except OSError:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)  # a link keeps the mode; so does this
        with open(fd, "wb") as out, open(path, "rb") as src:
            shutil.copyfileobj(src, out)
            out.flush()
            os.fsync(out.fileno())
    fsync_dir(path.parent)
    return target
