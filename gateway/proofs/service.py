"""The running node's anchoring: the anchorer stepped on the chain thread (``ChainService``)
every poll, its report and stop reason kept for the node's status, with the chain's health as
an owner needs it: the node key's balance and how long it lasts at the current spending, the
last anchor's age, what is not anchored yet and since when, and why anchoring is paused.

Why a view of the store: the store belongs to its writer thread, so the anchorer reaches it
through ``StoreView``, which runs each call there. The view also shows the anchorer only records
the applets have processed, so records move accepted → processed → anchored in that order.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from gateway.buffer.store import RecordStore
from gateway.chain.service import ChainService
from gateway.layout import DataDir
from gateway.proofs.anchorer import AnchorConfig, Anchorer
from gateway.proofs.errors import AnchorError
from gateway.proofs.leaf import addresses_from
from gateway.verify.registry import Registry

log = logging.getLogger("w3gate.proofs")

NO_BLOCKS_AFTER_S = 30.0  # a chain making no block this long while an anchor waits to be confirmed


class StoreView:
    """The store as the anchorer sees it: processed records, each call run on the writer thread."""

    def __init__(self, store: RecordStore, run_on_writer: Callable) -> None:
        self._store = store
        self._run = run_on_writer  # run_on_writer(fn, *args) -> fn's result, on the writer thread

    def stats(self) -> dict:
        stats = self._run(self._store.stats)
        return {**stats, "last_seq": stats["processed_upto"]}

    def iter_records(self, **kwargs):
        def read() -> list[dict]:
            upto = self._store.stats()["processed_upto"]
            return [d for d in self._store.iter_records(**kwargs) if d["seq"] <= upto]
        return iter(self._run(read))

    def get(self, seq: int) -> dict | None:
        return self._run(self._store.get, seq)

    def mark_anchored(self, upto_seq: int) -> None:
        self._run(self._store.mark_anchored, upto_seq)


class AnchorService:
    def __init__(self, chain: ChainService, chain_config, layout: DataDir, store: RecordStore, registry: Registry,
                 run_on_writer: Callable) -> None:
        c = chain_config
        if not c.registry:
            raise AnchorError("[chain] registry: the proof registry's contract address is not set",
                              reason="bad_config")
        self.chain = chain
        self.store = StoreView(store, run_on_writer)
        self.anchorer = Anchorer(self.store, chain.sender, c.registry, layout.proofs, addresses_from(registry),
                                 AnchorConfig(batch_size=c.batch_records, max_age_s=c.batch_age_s,
                                              batch_max=max(c.batch_records_max, c.batch_records),
                                              max_inflight=c.max_inflight))
        self.registry_address = c.registry
        self.network = chain.network.name
        self.backlog: dict = {}  # unanchored records and the oldest one's age, from the last step
        self.interval_s = c.poll_s
        self.last_report: dict = {}
        self.stopped: str | None = None  # why anchoring stopped, when it had to
        address = chain.sender.address
        log.info("anchoring as %s (did:io:%s) on %s, registry %s", address, address.lower(), chain.network.name,
                 c.registry)

    async def run(self, stop: asyncio.Event) -> None:
        chain_was = "up"
        while not stop.is_set() and self.stopped is None:
            try:
                self.last_report = await self.chain.call(self.anchorer.step)
                self.backlog = await self.chain.call(self._backlog)
            except AnchorError as e:
                self.stopped = str(e)
                log.error("anchoring stopped: %s", self.stopped)
                break
            except Exception:  # an unexpected failure: log it, try again later
                log.exception("anchoring step failed")
                self.last_report = {"chain": "error"}
            chain = self.last_report.get("chain", "up")
            if chain != chain_was:
                (log.warning if chain != "up" else log.info)("chain is %s", chain)
                chain_was = chain
            try:
                await asyncio.wait_for(stop.wait(), self.interval_s)
            except TimeoutError:
                pass

    def trouble(self) -> str | None:
        """Why anchoring is not working now, for the node's ``degraded`` list; None when it is."""
        if self.stopped:
            return f"stopped: {self.stopped}"
        if self.anchorer.paused:
            return f"paused: {self.anchorer.paused}"
        if self.last_report.get("chain") == "down":
            return f"rpc_down: {self.network} cannot be reached; records wait in the buffer"
        confirming = self.last_report.get("confirming")
        still = time.time() - self.anchorer.head_since
        if confirming is not None and still > NO_BLOCKS_AFTER_S:
            return (f"unconfirmed: batch {confirming} waits for {self.chain.sender.config.confirmations} "
                    f"confirmations, and the chain has made no block for {still:.0f} s (a chain that mines only "
                    "on transactions never confirms the last anchor: set [chain] confirmations = 1 for it)")
        return None

    def _backlog(self) -> dict:
        """Records processed but not anchored, and how old the oldest is (on the chain thread)."""
        stats = self.store.stats()
        first = stats["anchored_upto"] + 1
        count = max(0, stats["last_seq"] - stats["anchored_upto"])
        doc = self.store.get(first) if count else None
        return {"unanchored_records": count, "oldest_unanchored_rx": doc["rx"] if doc else None}

    def status(self) -> dict:
        """For ``w3gate status``: every figure an owner needs to know anchoring is healthy."""
        try:
            stats = self.anchorer.stats()
        except Exception:  # noqa: BLE001 - a status read never fails the node
            stats = {}
        now = time.time()
        anchorer, report = self.anchorer, self.last_report
        balance, rate = anchorer.balance_wei, anchorer.spend_rate()
        last = next((b for b in reversed(anchorer.batches) if b.anchored_at), None)
        oldest = self.backlog.get("oldest_unanchored_rx")
        return {"gateway": self.chain.sender.address, "network": self.network, "registry": self.registry_address,
                "chain": report.get("chain"), "paused": anchorer.paused, "stopped": self.stopped,
                "balance_wei": balance, "spend_wei_per_day": round(rate * 86400) if rate else None,
                "days_left": round(balance / rate / 86400, 1) if rate and balance is not None else None,
                "last_anchor_age_s": round(now - last.anchored_at, 1) if last else None,
                "unanchored_records": self.backlog.get("unanchored_records"),
                "unanchored_age_s": round(now - oldest, 1) if oldest else None,
                "last_batch_records": anchorer.batches[-1].count if anchorer.batches else None,
                **stats}
