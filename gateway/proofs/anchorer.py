"""The anchorer: buffered records -> sealed batches -> Merkle roots on chain -> records anchored.

Exactly once per batch, whatever crashes (docs/proofs.md, "The gateway's batch journal"):

1. **Seal.** Records are taken in seq order above the last sealed one, ``batch_size`` at a time,
   or fewer once the oldest has waited ``max_age_s``; more when a backlog builds (below). A
   batch is sealed only when it can be sent: at most ``max_inflight`` batches are unanchored at
   once. A sealed batch gets the next sequence
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

**Keeping pace.** An anchor costs the same gas whatever its batch holds, and a chain confirms a
bounded number of them per block time. So when records wait faster than ``batch_size``-record
batches can be anchored, each new batch takes its share of the backlog: ``backlog / free
slots``, up to ``batch_max``. Fewer, larger roots; gas per record falls as the backlog grows.

**Stopping and resuming by itself.** Before it sends, the anchorer asks the registry whether
this gateway is registered and the chain whether the node key can pay for an anchor; if not, it
pauses (``paused`` in its report says why: ``not_gateway``, ``out_of_funds``, ``no_registry``,
``wrong_chain``) and sends nothing, so a removed or unfunded gateway burns no gas, and asks again
every step: it resumes once the owner adds it back or the key is funded.

After a restart the same loop runs from the journals: a batch whose transaction is still in the
sender's journal is waited for; one the chain already holds is marked; one it does not hold is
sent again with its own sequence. A reorg that drops an anchor makes its log vanish, so the
batch is sent again. The chain's ``nextSequence`` check refuses anything else.

Thread boundary: like the sender it drives, an Anchorer belongs to one thread (the chain
thread), which also owns the writable RecordStore or is handed it by its owner.
"""
from __future__ import annotations

import logging
import math
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from web3 import Web3

from gateway.buffer.store import RecordStore
from gateway.chain.sender import ChainError, ChainUnavailable, TxSender
from gateway.codec.record import received_ms
from gateway.errors import CodecError
from gateway.proofs import merkle
from gateway.proofs.contract import ANCHORED_EVENT, load_abi
from gateway.proofs.errors import AnchorError
from gateway.proofs.journal import TAG_PREFIX, Batch, BatchJournal
from gateway.proofs.leaf import record_leaf

log = logging.getLogger("w3gate.proofs")

ANCHORED_TOPIC = Web3.keccak(text=ANCHORED_EVENT)


@dataclass(frozen=True)
class AnchorConfig:
    batch_size: int = 1000  # records per batch (a batch is sealed when this many wait) ...
    max_age_s: float = 60.0  # ... or when the oldest waiting record is this old
    batch_max: int = 50_000  # records per batch when a backlog builds (backlog / free slots)
    max_inflight: int = 8  # batches unanchored at once (sealed and sent, not yet confirmed)
    anchor_gas: int = 120_000  # gas limit of one anchor (measured 55,708; no estimation needed)
    max_seal_per_step: int = 16  # bounds one step's work when a backlog is sealed
    log_lookback: int = 0  # blocks before a batch's first submission searched for its event

    def __post_init__(self) -> None:
        if not (1 <= self.batch_size <= self.batch_max <= 0xFFFFFFFF and self.max_age_s >= 0
                and self.max_inflight >= 1):
            raise AnchorError(f"batch_size must be 1..batch_max, batch_max at most 2^32-1, max_age_s >= 0, "
                              f"max_inflight >= 1: {self}", reason="bad_config")


SEAL_CHUNK = 2000  # records read from the store at a time while a batch is sealed
COST_WINDOW_S = 24 * 3600  # anchors' cost over this window gives the spending rate


class Anchorer:
    """Batches a RecordStore's records into its batch journal and anchors them through a
    TxSender (see module doc)."""

    def __init__(self, store: RecordStore, sender: TxSender, registry_address: str,
                 journal_dir: str | os.PathLike, address_of: Callable[[dict], str],
                 config: AnchorConfig = AnchorConfig(), *, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.sender = sender
        self.w3 = sender.w3
        self.gateway = sender.address
        self.config = config
        self.address_of = address_of
        self.registry = self.w3.eth.contract(address=Web3.to_checksum_address(registry_address), abi=load_abi())
        self._clock = clock
        self.paused: str | None = None  # "<reason>: <why>" while sending is held back (see module doc)
        self.balance_wei: int | None = None
        self.head, self.head_since = -1, 0.0  # the chain's last block number, and since when it is
        self._costs: deque[tuple[float, int]] = deque()  # (when, wei) of confirmed anchors
        self._registry_checked = False
        self.journal = BatchJournal(journal_dir, store, writable=True)
        for key, mine in (("registry", self.registry.address), ("gateway", self.gateway)):
            if self.journal.meta.get(key, mine).lower() != mine.lower():
                raise AnchorError(f"{self.journal.dir} is the batch journal of {key} {self.journal.meta[key]}, "
                                  f"not {mine}", reason="journal_mismatch")

    @property
    def batches(self) -> list[Batch]:
        return self.journal.batches

    def proof_for(self, record_seq: int) -> dict:
        """The proof file of one record (``BatchJournal.proof_for``)."""
        return self.journal.proof_for(record_seq)

    def stats(self) -> dict:
        return self.journal.stats()

    # -- sealing ---------------------------------------------------------------------------------

    def _next_sequence_on_chain(self) -> int:
        try:
            if not self._registry_checked:
                reason = self._no_registry()
                if reason:
                    raise ChainError(reason.partition(": ")[2], reason="no_registry")
            return int(self.registry.functions.nextSequence(self.gateway).call())
        except OSError as e:
            raise ChainUnavailable(str(e)) from None

    def _no_registry(self) -> str | None:
        if not bytes(self.w3.eth.get_code(self.registry.address)):
            return (f"no_registry: there is no contract at {self.registry.address} on this chain "
                    "(`w3gate chain deploy-registry` makes one)")
        self._registry_checked = True
        return None

    def _sealed_upto(self) -> int:
        anchored = self.store.stats()["anchored_upto"]
        last = self.journal.last
        return max(anchored, last.last) if last else anchored

    def backlog(self) -> int:
        """Records stored but not yet in a sealed batch."""
        return max(0, self.store.stats()["last_seq"] - self._sealed_upto())

    def _seal_one(self, now: float, free: int) -> Batch | None:
        waiting = self.backlog()
        if waiting == 0:
            return None
        size = min(self.config.batch_max, max(self.config.batch_size, math.ceil(waiting / free)))
        after, first, first_rx = self._sealed_upto(), None, None
        entries, leaves, times = bytearray(), [], []
        while len(leaves) < size:
            # in chunks: each read holds the store's writer thread briefly, and only a chunk of
            # records is in memory at once, however large the batch
            chunk = list(self.store.iter_records(newest_first=False, after_seq=after,
                                                 limit=min(SEAL_CHUNK, size - len(leaves))))
            if not chunk:
                break
            if first is None:
                first, first_rx = chunk[0]["seq"], chunk[0]["rx"]
                if waiting < self.config.batch_size and now - first_rx < self.config.max_age_s:
                    return None  # not enough records yet, and the oldest has not waited long enough
            # a batch is a gap-free record range (records removed unanchored leave a gap)
            expected = first + len(leaves)
            gap = next((i for i, d in enumerate(chunk) if d["seq"] != expected + i), len(chunk))
            for doc in chunk[:gap]:
                address = self.address_of(doc)
                try:
                    leaf = record_leaf(doc, address)
                except (CodecError, KeyError, ValueError) as e:
                    raise AnchorError(f"record {doc['seq']} has no usable leaf: {e}", reason="bad_record") from None
                entries += bytes.fromhex(address.removeprefix("0x")) + leaf
                leaves.append(leaf)
                times.append(received_ms(doc["rx"]))
            if gap < len(chunk):
                break
            after = chunk[-1]["seq"]
        if not leaves:
            return None
        last = self.journal.last
        # the first batch continues the chain's count
        sequence = last.sequence + 1 if last else self._next_sequence_on_chain()
        batch = Batch(sequence, first, first + len(leaves) - 1, len(leaves), "0x" + merkle.root(leaves).hex(),
                      min(times), max(times), now)
        self.journal.append(batch, bytes(entries))
        log.info("sealed batch %d: records %d..%d, root %s", sequence, batch.first, batch.last, batch.root)
        return batch

    def seal(self, now: float | None = None) -> list[Batch]:
        """Seal every batch that is due and can be sent (see the module doc), at most
        max_seal_per_step."""
        now = self._clock() if now is None else now
        sealed = []
        while len(sealed) < self.config.max_seal_per_step:
            free = self.config.max_inflight - sum(b.status != "anchored" for b in self.journal.batches)
            if free <= 0:
                break
            batch = self._seal_one(now, free)
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
            self.journal.write_header(batch)
        data = self.registry.encode_abi("anchor", args=[bytes.fromhex(batch.root[2:]), batch.sequence, batch.count,
                                                        batch.first_ms, batch.last_ms])
        self.sender.submit(self.registry.address, data, gas=self.config.anchor_gas, tag=batch.tag)
        log.info("submitted batch %d (%d records)", batch.sequence, batch.count)

    def _mark_anchored(self, batch: Batch, tx: str, block: int) -> None:
        batch.status, batch.tx, batch.block, batch.anchored_at = "anchored", tx, block, self._clock()
        self.journal.write_header(batch)
        upto = None
        for b in self.journal.batches:
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
        report = {"chain": "up", "sealed": 0, "submitted": 0, "anchored": 0, "paused": None}
        try:
            for o in self.sender.poll():
                if not (o.tag and o.tag.startswith(TAG_PREFIX)):
                    continue
                if o.gas_used is not None and o.effective_gas_price is not None:
                    self._costs.append((now, o.gas_used * o.effective_gas_price))
                if o.status != "confirmed":
                    log.warning("anchor tx of batch %s %s; checking the chain", o.tag[len(TAG_PREFIX):], o.status)
        except ChainUnavailable:
            report["chain"] = "down"
        except ChainError as e:  # e.g. the RPC serves another chain than the journal's
            report["paused"] = str(e)
        while self._costs and self._costs[0][0] < now - COST_WINDOW_S:
            self._costs.popleft()
        try:
            report["sealed"] = len(self.seal(now))
        except ChainUnavailable:  # the first batch needs nextSequence
            report["chain"] = "down"
        except ChainError as e:  # ... from a registry that is there
            report["paused"] = str(e)
        if report["chain"] == "up" and report["paused"] is None:
            try:
                self._advance(report)
            except (ChainUnavailable, OSError):
                report["chain"] = "down"
            except ChainError as e:
                report["paused"] = str(e)
        self._note_pause(report["paused"])
        return report

    def _note_pause(self, paused: str | None) -> None:
        if paused != self.paused:
            if paused:
                log.warning("anchoring paused, nothing is sent: %s", paused)
            else:
                log.info("anchoring resumed")
        self.paused = paused

    def _cannot_send(self) -> str | None:
        """Why an anchor sent now would fail or could not be paid (``reason: why``), or None."""
        missing = None if self._registry_checked else self._no_registry()
        if missing:
            return missing
        if not self.registry.functions.isGateway(self.gateway).call():
            return (f"not_gateway: {self.gateway} is not a registered gateway of the registry at "
                    f"{self.registry.address} (its owner runs `w3gate chain add-gateway {self.gateway}`)")
        fees = self.sender.market_fees()
        need = self.config.anchor_gas * max(fees.values())
        if self.balance_wei is not None and self.balance_wei < need:
            return (f"out_of_funds: the node key {self.gateway} holds {self.balance_wei / 1e18:.6f}, an anchor "
                    f"needs up to {need / 1e18:.6f} at the current gas price: fund it")
        return None

    def spend_rate(self) -> float | None:
        """Wei per second spent on anchors over the last day (None before two anchors)."""
        if len(self._costs) < 2:
            return None
        span = self._costs[-1][0] - self._costs[0][0]
        return sum(c for _, c in self._costs) / span if span > 0 else None

    def _advance(self, report: dict) -> None:
        self.journal.write_meta({"chain_id": self.sender.chain_id, "registry": self.registry.address,
                                 "gateway": self.gateway})
        head = int(self.w3.eth.block_number)
        if head != self.head:
            self.head, self.head_since = head, self._clock()
        self.balance_wei = int(self.w3.eth.get_balance(self.gateway))
        inflight = {p["tag"] for p in self.sender.pending() if p["tag"] and p["tag"].startswith(TAG_PREFIX)}
        checked = False
        budget = self.config.max_inflight - len(inflight)
        next_seq = None
        batches = self.journal.batches
        for batch in batches:
            if batch.status == "anchored":
                continue
            if batch.tag in inflight:
                report.setdefault("confirming", batch.sequence)  # sent: waits to be mined and confirmed
                continue
            found = self._event(batch, head)
            if found is not None:
                tx, block = found
                if head - block + 1 >= self.sender.config.confirmations:
                    self._mark_anchored(batch, tx, block)
                    report["anchored"] += 1
                else:
                    report.setdefault("confirming", batch.sequence)
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
            if any(b.tag not in inflight for b in batches
                   if next_seq <= b.sequence < batch.sequence and b.status != "anchored"):
                break
            if not checked:
                report["paused"] = self._cannot_send()
                checked = True
                if report["paused"]:
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
