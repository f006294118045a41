"""The applets' transactions as their project sees them: ``projects/<name>/txs.log``.

The chain thread appends one JSON line per change of a transaction's status (held when the
applet asked, then sent or voided by its event's commit, then confirmed, reverted or dropped);
``w3gate project txs`` folds them into one row per transaction. Lines, not a rewritten file,
so a crash loses at most the line being written and the log never needs a lock.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from gateway.storage import open_private

STATUSES = ("held", "sent", "voided", "confirmed", "reverted", "dropped")


def append(path: Path, entry: dict) -> None:
    """One status change of transaction ``entry["hash"]`` (the hash its applet was given)."""
    with open_private(path, "a") as f:
        f.write(json.dumps({"t": round(time.time(), 3), **entry}) + "\n")


def read(path: Path) -> list[dict]:
    """One row per transaction, in the order applets asked for them, each with its latest status,
    what was asked (event, operator, to, value) and, once final, its block and the mined hash."""
    rows: dict[str, dict] = {}
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return []
    for line in lines:
        try:
            entry = json.loads(line)
            tx_hash = entry["hash"]
        except (ValueError, KeyError, TypeError):
            continue  # a line cut by a crash
        row = rows.setdefault(tx_hash, {"hash": tx_hash})
        row.update({k: v for k, v in entry.items() if v is not None and k != "t"})
        row.setdefault("asked", entry.get("t"))
        row["updated"] = entry.get("t")
    return list(rows.values())
