"""What a purchase delivers and what the gateway keeps of it (docs/market.md).

- **The window.** A purchase pays for blocks ``[start, end)``. It covers the readings the gateway
  received from the first second of block ``start`` through the last second of block
  ``end - 1``, by the blocks' own timestamps: both ends are chain headers anyone can read, and
  every record's receive time is in its anchored leaf, so whether a reading belonged to a window
  is a fact a stranger can check. A reading is released once a block of the window stamped at or
  after its receive second exists; on IoTeX that holds it back at most one block (5 s).
- **The reading.** What the buyer decrypts: the stored record as the gateway keeps it and the
  fields its leaf commits to, so the buyer recomputes the leaf from what it received, and asks
  for the leaf's Merkle proof by the record's ``seq``.
- **The delivery log.** Each delivered record's seq and leaf, appended and synced *before* the
  message is published: the settlement's tree never misses a reading that was sent (a buyer
  could otherwise claim it withheld), and after a crash delivery resumes after the last entry.
- **The delivery tree.** The settlement's root is the Merkle tree (gateway/proofs/merkle.py
  rules) over the delivered leaves sorted ascending, so a reading left out is provable by the two
  neighbours that bracket it (``gap_proof``).
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from gateway.codec.record import Record, received_ms
from gateway.errors import W3gateError
from gateway.proofs import merkle
from gateway.storage import open_private

ENTRY = struct.Struct(">Q32s")  # seq, leaf
EMPTY_ROOT = bytes(32)  # settles a purchase that delivered nothing
INTERNAL_FIELDS = ("state",)  # derived by the store, not part of the record


class DeliveryError(W3gateError):
    reason = "delivery"


@dataclass(frozen=True)
class Window:
    """The receive times (ms) a purchase covers, as far as the chain has reached."""

    start_block: int
    end_block: int  # first block not paid for
    first_ms: int
    upto_ms: int  # readings up to here may be released now
    closed: bool  # the window's last block is known: upto_ms is final

    @classmethod
    def at(cls, start_block: int, end_block: int, start_time_s: int, reached: int, reached_time_s: int) -> Window:
        """The window once the chain has reached block ``reached`` of it (``min(head, end - 1)``),
        stamped ``reached_time_s``: readings up to that block's last second are released."""
        return cls(start_block, end_block, start_time_s * 1000, reached_time_s * 1000 + 999,
                   reached >= end_block - 1)

    def decide(self, rx_ms: int) -> str | None:
        """"deliver", "skip" (outside the window), or None: not decidable yet."""
        if rx_ms < self.first_ms:
            return "skip"
        if rx_ms <= self.upto_ms:
            return "deliver"
        return "skip" if self.closed else None


def reading(doc: dict, address: str) -> tuple[bytes, bytes]:
    """A stored record as a buyer receives it: (its leaf, the plaintext JSON)."""
    record = {k: v for k, v in doc.items() if k not in INTERNAL_FIELDS}
    fields = Record(doc).leaf_fields(address)
    leaf = merkle.leaf(fields["address"], bytes.fromhex(fields["signature"]), bytes.fromhex(fields["payload_sha256"]),
                       fields["received_ms"])
    plaintext = json.dumps({"seq": doc["seq"], "device": doc["device"], "record": record, "leaf_fields": fields},
                           separators=(",", ":"), sort_keys=True).encode()
    return leaf, plaintext


def check_reading(plaintext: bytes, leaf: bytes) -> dict:
    """The buyer's check of a decrypted reading: its leaf, recomputed from what it carries, is
    the one the message names, and the payload is the one the leaf's digest commits to.
    Returns the parsed reading; DeliveryError says what does not match."""
    try:
        r = json.loads(plaintext)
        f, record = r["leaf_fields"], r["record"]
        computed = merkle.leaf(f["address"], bytes.fromhex(f["signature"]), bytes.fromhex(f["payload_sha256"]),
                               int(f["received_ms"]))
        payload = base64.b64decode(record["payload"], validate=True)
    except (ValueError, KeyError, TypeError, AttributeError, OverflowError) as e:  # hostile shapes and values
        raise DeliveryError(f"not a reading: {type(e).__name__}: {e}", reason="malformed") from None
    if computed != leaf:
        raise DeliveryError("the reading's fields do not hash to the leaf it was sent with", reason="wrong_leaf")
    if hashlib.sha256(payload).hexdigest() != f["payload_sha256"]:
        raise DeliveryError("the payload is not the one the leaf commits to", reason="wrong_payload")
    try:
        same_time = received_ms(float(record["rx"])) == int(f["received_ms"])
    except (ValueError, KeyError, TypeError, OverflowError):
        same_time = False
    if not same_time:
        raise DeliveryError("the record's receive time is not the leaf's", reason="wrong_time")
    return r


def delivery_root(leaves: Sequence[bytes]) -> bytes:
    """The settlement's root: the Merkle tree over the delivered leaves, sorted ascending."""
    ordered = sorted(set(leaves))
    return merkle.root(ordered) if ordered else EMPTY_ROOT


def gap_proof(delivered: Sequence[bytes], leaf: bytes) -> dict:
    """Evidence that ``leaf`` is not in the delivery tree: the count, and the neighbours that
    bracket it in sorted order with their positions and Merkle paths (one neighbour at either
    end of the tree). A refund claim carries this with the leaf's own anchored proof."""
    ordered = sorted(set(delivered))
    if leaf in ordered:
        raise DeliveryError("the leaf was delivered", reason="delivered")
    from bisect import bisect_left
    i = bisect_left(ordered, leaf)
    neighbours = [j for j in (i - 1, i) if 0 <= j < len(ordered)]
    return {"count": len(ordered), "root": delivery_root(ordered).hex(),
            "neighbours": [{"index": j, "leaf": ordered[j].hex(), "path": [p.hex() for p in merkle.proof(ordered, j)]}
                           for j in neighbours]}


def check_gap(proof: dict, leaf: bytes, root: bytes) -> bool:
    """Whether ``proof`` shows ``leaf`` absent from the sorted tree with ``root``."""
    count, hood = int(proof["count"]), proof["neighbours"]
    if count == 0:
        return root == EMPTY_ROOT
    for n in hood:
        if not merkle.verify(bytes.fromhex(n["leaf"]), int(n["index"]), [bytes.fromhex(p) for p in n["path"]],
                             root, count):
            return False
    below = [n for n in hood if bytes.fromhex(n["leaf"]) < leaf]
    above = [n for n in hood if bytes.fromhex(n["leaf"]) > leaf]
    if len(below) > 1 or len(above) > 1 or not (below or above):
        return False
    lo = int(below[0]["index"]) if below else -1
    hi = int(above[0]["index"]) if above else count
    return hi == lo + 1


class DeliveryLog:
    """One purchase's delivered (seq, leaf) entries, appended and synced before publishing."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries: list[tuple[int, bytes]] = []
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raw = b""
        whole = len(raw) - len(raw) % ENTRY.size  # a torn last entry (power cut mid-write) was never published
        self.entries = [ENTRY.unpack_from(raw, i) for i in range(0, whole, ENTRY.size)]
        if whole != len(raw):
            os.truncate(path, whole)

    @property
    def last_seq(self) -> int | None:
        return self.entries[-1][0] if self.entries else None

    @property
    def leaves(self) -> list[bytes]:
        return [leaf for _, leaf in self.entries]

    def append(self, entries: Sequence[tuple[int, bytes]]) -> None:
        if not entries:
            return
        with open_private(self.path, "ab") as f:
            f.write(b"".join(ENTRY.pack(seq, leaf) for seq, leaf in entries))
            f.flush()
            os.fsync(f.fileno())
        self.entries.extend(entries)
