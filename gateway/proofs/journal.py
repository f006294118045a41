"""The batch journal: per sealed batch its leaves and header under ``<data dir>/proofs/``
(docs/proofs.md, "The gateway's batch journal"), and the proofs read back from it.

Read-only it needs no chain (``w3gate proof`` reads it while the gateway runs); writable, it is
the anchorer's, which seals batches into it and marks them anchored. A header is written
atomically after its leaves, and that write is the batch's commit point.
"""
from __future__ import annotations

import os
import re
from bisect import bisect_right
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from web3 import Web3

from gateway.buffer.store import RecordStore
from gateway.chain.keystore import did_of
from gateway.proofs import merkle
from gateway.proofs.errors import AnchorError
from gateway.proofs.leaf import leaf_fields, record_leaf
from gateway.storage import StoreError, atomic_write, dump_json, private_dir, read_json

TAG_PREFIX = "anchor:"  # the sender's tag of a batch's anchor transaction: anchor:<sequence>
_HEADER_RE = re.compile(r"b-(\d{12})\.json")
_ENTRY = 20 + 32  # a leaves file holds, per record: device address, leaf
PROOF_FORMAT = "w3gate-proof/1"
META = "anchorer.json"  # chain id, registry and gateway the journal belongs to


@dataclass
class Batch:
    sequence: int
    first: int  # record seqs, inclusive
    last: int
    count: int
    root: str  # 0x hex
    first_ms: int
    last_ms: int
    sealed_at: float
    status: str = "sealed"  # "sealed" until its anchor is confirmed, then "anchored"
    from_block: int | None = None  # chain head when first submitted (where to look for its event)
    tx: str | None = None
    block: int | None = None
    anchored_at: float | None = None  # when this gateway saw the anchor confirmed (for status)

    @property
    def tag(self) -> str:
        return f"{TAG_PREFIX}{self.sequence}"

    def to_dict(self) -> dict:
        return dict(self.__dict__)


class BatchJournal:
    """The sealed batches of one gateway, in sequence order, and the proofs of their records."""

    def __init__(self, journal_dir: str | os.PathLike, store: RecordStore, *, writable: bool = False) -> None:
        self.dir = Path(journal_dir)
        self.store = store
        self._writable = writable
        self._batches: list[Batch] = []
        self._firsts: list[int] = []
        self._tree_cache: tuple[int, list[list[bytes]], list[bytes]] | None = None
        self.meta: dict = read_json(self.dir / META) or {}
        self._load()

    def _header_path(self, sequence: int) -> Path:
        return self.dir / f"b-{sequence:012d}.json"

    def _leaves_path(self, sequence: int) -> Path:
        return self.dir / f"b-{sequence:012d}.leaves"

    def _load(self) -> None:
        if self._writable:
            private_dir(self.dir)
        names = os.listdir(self.dir) if self.dir.exists() else []
        seqs = sorted(int(m.group(1)) for m in map(_HEADER_RE.fullmatch, names) if m)
        for s in seqs:
            try:
                batch = Batch(**read_json(self._header_path(s)))
            except TypeError as e:
                raise AnchorError(f"{self._header_path(s)}: not a batch header ({e})", reason="journal_corrupt") from None
            if self._batches and (batch.sequence != self._batches[-1].sequence + 1
                                  or batch.first <= self._batches[-1].last):
                raise AnchorError(f"{self._header_path(s)} does not follow batch {self._batches[-1].sequence}",
                                  reason="journal_corrupt")
            self._batches.append(batch)
        self._firsts = [b.first for b in self._batches]
        if not self._writable:
            return
        # leaves written by a seal that crashed before its header: not part of the journal
        for p in self.dir.glob("b-*.leaves"):
            if not self._header_path(int(p.stem[2:])).exists():
                p.unlink()
        for p in self.dir.glob("*.tmp"):
            p.unlink()

    @property
    def batches(self) -> list[Batch]:
        return list(self._batches)

    @property
    def last(self) -> Batch | None:
        return self._batches[-1] if self._batches else None

    # -- writing (the anchorer's) ----------------------------------------------------------------

    def write_header(self, batch: Batch) -> None:
        """Save a batch's header (atomic, fsync'd): after its leaves, and whenever its state moves."""
        try:
            atomic_write(self._header_path(batch.sequence), dump_json(batch.to_dict()))
        except OSError as e:
            raise StoreError(f"cannot write {self._header_path(batch.sequence)}: {e}", reason="io") from e

    def append(self, batch: Batch, entries: bytes) -> None:
        """Seal ``batch``: its leaves (address ‖ leaf per record) first, then its header, the
        commit point: from there on the batch exists and never changes its records."""
        try:
            atomic_write(self._leaves_path(batch.sequence), entries)
        except OSError as e:
            raise StoreError(f"cannot write {self._leaves_path(batch.sequence)}: {e}", reason="io") from e
        self.write_header(batch)
        self._batches.append(batch)
        self._firsts.append(batch.first)

    def write_meta(self, meta: dict) -> None:
        """Bind the journal to a chain, registry and gateway; a journal is never used with another."""
        if self.meta.get("chain_id") not in (None, meta["chain_id"]):
            raise AnchorError(f"{self.dir} is the batch journal of chain {self.meta['chain_id']}, "
                              f"not {meta['chain_id']}", reason="journal_mismatch")
        if self.meta != meta:
            atomic_write(self.dir / META, dump_json(meta))
            self.meta = meta

    # -- proofs ----------------------------------------------------------------------------------

    def _batch_of(self, record_seq: int) -> Batch | None:
        i = bisect_right(self._firsts, record_seq) - 1
        if i >= 0 and self._batches[i].first <= record_seq <= self._batches[i].last:
            return self._batches[i]
        return None

    def _tree(self, batch: Batch) -> tuple[list[list[bytes]], list[bytes]]:
        if self._tree_cache is None or self._tree_cache[0] != batch.sequence:
            raw = self._leaves_path(batch.sequence).read_bytes()
            if len(raw) != batch.count * _ENTRY:
                raise AnchorError(f"{self._leaves_path(batch.sequence)} holds {len(raw) // _ENTRY} leaves, "
                                  f"not {batch.count}", reason="journal_corrupt")
            leaves = [raw[i + 20:i + _ENTRY] for i in range(0, len(raw), _ENTRY)]
            addresses = [raw[i:i + 20] for i in range(0, len(raw), _ENTRY)]
            self._tree_cache = (batch.sequence, merkle.levels(leaves), addresses)
        return self._tree_cache[1], self._tree_cache[2]

    def proof_for(self, record_seq: int) -> dict:
        """The proof file of one record (format in docs/proofs.md): the record, its leaf index,
        Merkle path, root, batch and anchoring transaction. A record in a batch not yet anchored
        gets ``"anchor": null``; one in no batch yet is an AnchorError ``not_sealed``."""
        batch = self._batch_of(record_seq)
        if batch is None:
            raise AnchorError(f"record {record_seq} is in no sealed batch (yet)", reason="not_sealed")
        doc = self.store.get(record_seq)
        if doc is None:
            raise AnchorError(f"record {record_seq} is no longer in the buffer", reason="no_record")
        tree, addresses = self._tree(batch)
        index = record_seq - batch.first
        address = Web3.to_checksum_address(addresses[index])
        fields = leaf_fields(doc, address)
        leaf = tree[0][index]
        if record_leaf(doc, address) != leaf:
            raise AnchorError(f"record {record_seq} no longer matches the leaf sealed for it", reason="tampered")
        path = merkle.proof(tree[0], index)
        return {
            "format": PROOF_FORMAT,
            "chain_id": self.meta.get("chain_id"),
            "registry": self.meta.get("registry"),
            "gateway": self.meta.get("gateway"),
            "gateway_did": did_of(self.meta["gateway"]) if self.meta.get("gateway") else None,
            "record": {"seq": record_seq, "device": doc.get("device"), "device_did": did_of(address),
                       "kind": doc.get("kind"), "wire": doc.get("wire", "protobuf"), "rx": doc["rx"],
                       "payload": doc["payload"], **fields},
            "leaf": "0x" + leaf.hex(),
            "index": index,
            "path": ["0x" + p.hex() for p in path],
            "root": batch.root,
            "batch": {"sequence": batch.sequence, "count": batch.count, "first_seq": batch.first,
                      "last_seq": batch.last, "first_ms": batch.first_ms, "last_ms": batch.last_ms},
            "anchor": {"tx": batch.tx, "block": batch.block} if batch.status == "anchored" else None,
        }

    def stats(self) -> dict:
        """Counts for status displays (no chain access)."""
        anchored = sum(b.status == "anchored" for b in self._batches)
        return {"batches": len(self._batches), "anchored_batches": anchored,
                "unanchored_batches": len(self._batches) - anchored,
                "last_sealed_record": self._batches[-1].last if self._batches else None,
                "next_sequence": self._batches[-1].sequence + 1 if self._batches else None}


def load_batches(journal_dir: str | os.PathLike) -> Iterable[Batch]:
    """Batch headers of a journal directory, for read-only tools (``w3gate proof``)."""
    d = Path(journal_dir)
    for name in sorted(os.listdir(d)) if d.exists() else []:
        if _HEADER_RE.fullmatch(name):
            yield Batch(**read_json(d / name))
