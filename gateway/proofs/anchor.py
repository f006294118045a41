"""The anchorer: buffered records -> sealed batches -> Merkle roots on chain -> records anchored.

Exactly once per batch, whatever crashes (docs/proofs.md, "The gateway's batch journal"):

1. **Seal.** Records are taken in seq order above the last sealed one, ``batch_size`` at a time,
   or fewer once the oldest has waited ``max_age_s``. A sealed batch gets the next sequence
   number (the chain's ``nextSequence`` for the very first one), its leaves (device address and
   leaf hash per record) and its header (sequence, record range, count, root, time range) are
   written to the batch journal *before* anything is sent. A sealed batch never changes: its
   records, root and sequence are fixed for good, so a resend is the same anchor.
2. **Submit.** A batch goes to the sender (``anchor(root, sequence, ...)``, tag
   ``anchor:<sequence>``) only when no transaction of ours for it is pending and the chain does
   not hold it; batches go in sequence order, several in flight (consecutive nonces).
3. **Confirm.** A batch is anchored when its ``Anchored`` event (this gateway, this root) is in a
   block ``confirmations`` deep. Only then is its header marked and the store's anchored cursor
   moved (over the gap-free prefix of anchored batches).

After a restart the same loop runs from the journals: a batch whose transaction is still in the
sender's journal is waited for; one the chain already holds is marked; one it does not hold is
sent again with its own sequence. A reorg that drops an anchor makes its log vanish, so the
batch is sent again. The chain's ``nextSequence`` check refuses anything else.

Thread boundary: like the sender it drives, an Anchorer belongs to one thread (the chain
worker), which also owns the writable RecordStore or is handed it by its owner.
"""
from __future__ import annotations

import base64
import hashlib
import logging
import math
import os
import re
import time
from bisect import bisect_right
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from web3 import Web3

from gateway.buffer.store import RecordStore
from gateway.chain.keystore import did_of
from gateway.chain.sender import ChainError, ChainUnavailable, TxSender
from gateway.codec import pebble
from gateway.errors import CodecError, W3gateError
from gateway.proofs import merkle
from gateway.proofs.contract import load_abi
from gateway.storage import StoreError, atomic_write, dump_json, read_json

log = logging.getLogger("w3gate.proofs")

ANCHORED_TOPIC = Web3.keccak(text="Anchored(address,bytes32,uint64,uint32,uint48,uint48)")
TAG_PREFIX = "anchor:"
_HEADER_RE = re.compile(r"b-(\d{12})\.json")
_ENTRY = 20 + 32  # a leaves file holds, per record: device address, leaf
PROOF_FORMAT = "w3gate-proof/1"
META = "anchorer.json"  # chain id, registry and gateway the journal belongs to


class AnchorError(W3gateError):
    """The anchorer cannot go on or cannot answer; ``reason`` says why."""

    reason = "anchor"


@dataclass(frozen=True)
class AnchorConfig:
    batch_size: int = 1000  # records per batch at most (a batch is sealed when this many wait)
    max_age_s: float = 60.0  # ... or when the oldest waiting record is this old
    max_inflight: int = 4  # anchor transactions pending at once
    anchor_gas: int = 120_000  # gas limit of one anchor (measured 55,708; no estimation needed)
    max_seal_per_step: int = 16  # bounds one step's work when a backlog is sealed
    log_lookback: int = 0  # blocks before a batch's first submission searched for its event

    def __post_init__(self) -> None:
        if not 1 <= self.batch_size <= 0xFFFFFFFF or self.max_age_s < 0 or self.max_inflight < 1:
            raise AnchorError(f"batch_size must be 1..2^32-1, max_age_s >= 0, max_inflight >= 1: {self}",
                              reason="bad_config")


# -- the record leaf ------------------------------------------------------------------------------

def received_ms(rx: float) -> int:
    """The leaf's receive time: the record's ``rx`` (float seconds) in whole milliseconds,
    rounded half up: floor(rx * 1000 + 0.5) in IEEE-754 doubles (the same in any language)."""
    return math.floor(rx * 1000 + 0.5)


def signature_of(doc: dict) -> bytes:
    """The record's 64-byte r||s: the device's, taken from the payload exactly as received, or
    for a legacy device the gateway's attestation."""
    if doc.get("attestation"):  # a legacy device's record: the gateway signed it (gateway/legacy/attest.py)
        return bytes.fromhex(doc["attestation"])[:64]
    payload = base64.b64decode(doc["payload"])
    if doc.get("kind") == "confirm":
        return pebble.decode_confirm(payload).signature
    if doc.get("wire") == "json":
        return pebble.decode_g1(payload).signature
    return pebble.decode_binpackage(payload).signature


def leaf_fields(doc: dict, address: str) -> dict:
    """What the leaf commits to, as a verifier receives it (docs/proofs.md, proof file)."""
    payload = base64.b64decode(doc["payload"])
    return {"address": Web3.to_checksum_address(address), "signature": signature_of(doc).hex(),
            "payload_sha256": hashlib.sha256(payload).hexdigest(), "received_ms": received_ms(doc["rx"])}


def record_leaf(doc: dict, address: str) -> bytes:
    f = leaf_fields(doc, address)
    return merkle.leaf(f["address"], bytes.fromhex(f["signature"]), bytes.fromhex(f["payload_sha256"]),
                       f["received_ms"])


def addresses_from(registry) -> Callable[[dict], str]:
    """Device address of a record: the record's own "address" when it has one, else the device
    registry's entry for its IMEI (gateway/verify/registry.py)."""
    def address_of(doc: dict) -> str:
        if doc.get("address"):
            return doc["address"]
        registry.reload()
        device = registry.get(doc["device"])
        if device is None:
            raise AnchorError(f"record {doc.get('seq')}: device {doc['device']} is not in the registry, "
                              "so its address (part of the leaf) is unknown", reason="unknown_device")
        return device.address
    return address_of


# -- the registry contract ------------------------------------------------------------------------

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

    @property
    def tag(self) -> str:
        return f"{TAG_PREFIX}{self.sequence}"

    def to_dict(self) -> dict:
        return dict(self.__dict__)


class ProofIndex:
    """The batch journal read back: which batch holds a record, and its proof. Needs no chain
    (``w3gate proof`` uses it on a read-only store while the gateway runs)."""

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
            self.dir.mkdir(parents=True, exist_ok=True)
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
                       "kind": doc.get("kind"), "rx": doc["rx"], "payload": doc["payload"], **fields},
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



class Anchorer(ProofIndex):
    """Batches a RecordStore's records and anchors them through a TxSender (see module doc)."""

    def __init__(self, store: RecordStore, sender: TxSender, registry_address: str,
                 journal_dir: str | os.PathLike, address_of: Callable[[dict], str],
                 config: AnchorConfig = AnchorConfig(), *, clock: Callable[[], float] = time.time) -> None:
        self.sender = sender
        self.w3 = sender.w3
        self.gateway = sender.address
        self.config = config
        self.address_of = address_of
        self.registry = self.w3.eth.contract(address=Web3.to_checksum_address(registry_address), abi=load_abi())
        self._clock = clock
        super().__init__(journal_dir, store, writable=True)
        for key, mine in (("registry", self.registry.address), ("gateway", self.gateway)):
            if self.meta.get(key, mine).lower() != mine.lower():
                raise AnchorError(f"{self.dir} is the batch journal of {key} {self.meta[key]}, not {mine}",
                                  reason="journal_mismatch")

    # -- batch journal ---------------------------------------------------------------------------

    def _write_header(self, batch: Batch) -> None:
        try:
            atomic_write(self._header_path(batch.sequence), dump_json(batch.to_dict()))
        except OSError as e:
            raise StoreError(f"cannot write {self._header_path(batch.sequence)}: {e}", reason="io") from e

    # -- sealing ---------------------------------------------------------------------------------

    def _next_sequence_on_chain(self) -> int:
        try:
            return int(self.registry.functions.nextSequence(self.gateway).call())
        except OSError as e:
            raise ChainUnavailable(str(e)) from None

    def _sealed_upto(self) -> int:
        anchored = self.store.stats()["anchored_upto"]
        return max(anchored, self._batches[-1].last) if self._batches else anchored

    def backlog(self) -> int:
        """Records stored but not yet in a sealed batch."""
        return max(0, self.store.stats()["last_seq"] - self._sealed_upto())

    def _seal_one(self, now: float) -> Batch | None:
        waiting = self.backlog()
        if waiting == 0:
            return None
        docs = list(self.store.iter_records(newest_first=False, after_seq=self._sealed_upto(),
                                            limit=self.config.batch_size))
        if not docs:
            return None
        if len(docs) < self.config.batch_size and now - docs[0]["rx"] < self.config.max_age_s:
            return None
        # a batch is a gap-free record range (records removed unanchored would leave a gap)
        end = next((i for i in range(1, len(docs)) if docs[i]["seq"] != docs[i - 1]["seq"] + 1), len(docs))
        docs = docs[:end]
        if self._batches:
            sequence = self._batches[-1].sequence + 1
        else:
            sequence = self._next_sequence_on_chain()  # the first batch continues the chain's count
        entries, leaves, times = bytearray(), [], []
        for doc in docs:
            address = self.address_of(doc)
            try:
                leaf = record_leaf(doc, address)
            except (CodecError, KeyError, ValueError) as e:
                raise AnchorError(f"record {doc['seq']} has no usable leaf: {e}", reason="bad_record") from None
            entries += bytes.fromhex(address.removeprefix("0x")) + leaf
            leaves.append(leaf)
            times.append(received_ms(doc["rx"]))
        batch = Batch(sequence, docs[0]["seq"], docs[-1]["seq"], len(docs), "0x" + merkle.root(leaves).hex(),
                      min(times), max(times), now)
        try:
            atomic_write(self._leaves_path(sequence), bytes(entries))
        except OSError as e:
            raise StoreError(f"cannot write {self._leaves_path(sequence)}: {e}", reason="io") from e
        self._write_header(batch)  # the commit point: from here on the batch exists
        self._batches.append(batch)
        self._firsts.append(batch.first)
        log.info("sealed batch %d: records %d..%d, root %s", sequence, batch.first, batch.last, batch.root)
        return batch

    def seal(self, now: float | None = None) -> list[Batch]:
        """Seal every batch that is due (at most max_seal_per_step)."""
        now = self._clock() if now is None else now
        sealed = []
        while len(sealed) < self.config.max_seal_per_step:
            batch = self._seal_one(now)
            if batch is None:
                break
            sealed.append(batch)
        return sealed

    # -- the chain -------------------------------------------------------------------------------

    def _event(self, batch: Batch, head: int) -> tuple[str, int] | None:
        """(tx hash, block) of the Anchored event of this gateway and this root, if on chain.
        A batch never submitted (no ``from_block``) cannot be: no log query (RPC nodes such as
        IoTeX's limit the block range of eth_getLogs)."""
        if batch.from_block is None:
            return None
        start = max(0, (batch.from_block or 0) - self.config.log_lookback)
        logs = self.w3.eth.get_logs({
            "address": self.registry.address, "fromBlock": start, "toBlock": head,
            "topics": [ANCHORED_TOPIC, "0x" + bytes(12).hex() + self.gateway[2:].lower(), batch.root]})
        if not logs:
            return None
        entry = logs[0]
        return "0x" + bytes(entry["transactionHash"]).hex(), int(entry["blockNumber"])

    def _anchor_of(self, root: str) -> tuple:
        return tuple(self.registry.functions.anchorOf(root).call())

    def _submit(self, batch: Batch, head: int) -> None:
        holder = self._anchor_of(batch.root)[0]
        if int(holder, 16) != 0 and holder.lower() != self.gateway.lower():
            raise AnchorError(f"batch {batch.sequence}: root {batch.root} is already anchored by gateway {holder}; "
                              "reseal it (docs/proofs.md)", reason="root_collision")
        if batch.from_block is None:
            batch.from_block = head
            self._write_header(batch)
        data = self.registry.encode_abi("anchor", args=[bytes.fromhex(batch.root[2:]), batch.sequence, batch.count,
                                                        batch.first_ms, batch.last_ms])
        self.sender.submit(self.registry.address, data, gas=self.config.anchor_gas, tag=batch.tag)
        log.info("submitted batch %d (%d records)", batch.sequence, batch.count)

    def _mark_anchored(self, batch: Batch, tx: str, block: int) -> None:
        batch.status, batch.tx, batch.block = "anchored", tx, block
        self._write_header(batch)
        upto = None
        for b in self._batches:
            if b.status != "anchored":
                break
            upto = b.last
        if upto is not None:
            self.store.mark_anchored(upto)
        log.info("batch %d anchored in block %d (tx %s)", batch.sequence, block, tx)

    def step(self, now: float | None = None) -> dict:
        """One round: follow pending transactions, seal what is due, confirm, submit.

        Never raises for an unreachable chain (``"chain": "down"`` in the report: sealing goes
        on, everything else waits); raises AnchorError when it must not go on."""
        now = self._clock() if now is None else now
        report = {"chain": "up", "sealed": 0, "submitted": 0, "anchored": 0}
        try:
            outcomes = self.sender.poll()
            for o in outcomes:
                if o.tag and o.tag.startswith(TAG_PREFIX) and o.status != "confirmed":
                    log.warning("anchor tx of batch %s %s; checking the chain", o.tag[len(TAG_PREFIX):], o.status)
        except ChainUnavailable:
            report["chain"] = "down"
        try:
            report["sealed"] = len(self.seal(now))
        except ChainUnavailable:  # the first batch needs nextSequence
            report["chain"] = "down"
        if report["chain"] == "down":
            return report
        try:
            self._advance(report)
        except (ChainUnavailable, OSError):
            report["chain"] = "down"
        return report

    def _write_meta(self) -> None:
        meta = {"chain_id": self.sender.chain_id, "registry": self.registry.address, "gateway": self.gateway}
        if self.meta.get("chain_id") not in (None, meta["chain_id"]):
            raise AnchorError(f"{self.dir} is the batch journal of chain {self.meta['chain_id']}, "
                              f"not {meta['chain_id']}", reason="journal_mismatch")
        if self.meta != meta:
            atomic_write(self.dir / META, dump_json(meta))
            self.meta = meta

    def _advance(self, report: dict) -> None:
        self._write_meta()
        head = int(self.w3.eth.block_number)
        inflight = {p["tag"] for p in self.sender.pending() if p["tag"] and p["tag"].startswith(TAG_PREFIX)}
        budget = self.config.max_inflight - len(inflight)
        next_seq = None
        for batch in self._batches:
            if batch.status == "anchored" or batch.tag in inflight:
                continue
            found = self._event(batch, head)
            if found is not None:
                tx, block = found
                if head - block + 1 >= self.sender.config.confirmations:
                    self._mark_anchored(batch, tx, block)
                    report["anchored"] += 1
                continue  # on chain: anchored, or soon
            if next_seq is None:
                next_seq = self._next_sequence_on_chain()
            if batch.sequence < next_seq:
                raise AnchorError(f"batch {batch.sequence} (root {batch.root}) is not on chain, but the chain's "
                                  f"next sequence for {self.gateway} is {next_seq}: the sequence went to another "
                                  "root (a lost or foreign batch journal?)", reason="sequence_taken")
            if budget <= 0:
                break
            # in order: every batch between the chain's next and this one must be in flight
            if any(b.tag not in inflight for b in self._batches
                   if next_seq <= b.sequence < batch.sequence and b.status != "anchored"):
                break
            try:
                self._submit(batch, head)
            except ChainError as e:
                if isinstance(e, ChainUnavailable):
                    raise
                log.warning("batch %d not submitted: %s", batch.sequence, e)
                break
            inflight.add(batch.tag)
            budget -= 1
            report["submitted"] += 1


def load_batches(journal_dir: str | os.PathLike) -> Iterable[Batch]:
    """Batch headers of a journal directory, for read-only tools (``w3gate proof``)."""
    d = Path(journal_dir)
    for name in sorted(os.listdir(d)) if d.exists() else []:
        if _HEADER_RE.fullmatch(name):
            yield Batch(**read_json(d / name))
