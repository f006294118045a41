"""The running node's anchoring: the anchorer stepped on the chain thread (``ChainService``)
every poll, its report and stop reason kept for the node's status.

Why a view of the store: the store belongs to its writer thread, so the anchorer reaches it
through ``StoreView``, which runs each call there. The view also shows the anchorer only records
the applets have processed, so records move accepted → processed → anchored in that order.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from gateway.buffer.store import RecordStore
from gateway.chain.service import ChainService
from gateway.layout import DataDir
from gateway.proofs.anchorer import AnchorConfig, Anchorer
from gateway.proofs.errors import AnchorError
from gateway.proofs.leaf import addresses_from
from gateway.verify.registry import Registry

log = logging.getLogger("w3gate.proofs")


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
        self.anchorer = Anchorer(StoreView(store, run_on_writer), chain.sender, c.registry, layout.proofs,
                                 addresses_from(registry),
                                 AnchorConfig(batch_size=c.batch_records, max_age_s=c.batch_age_s))
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
            except AnchorError as e:
                self.stopped = f"{e.reason}: {e}"
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

    def status(self) -> dict:
        try:
            stats = self.anchorer.stats()
        except Exception:  # noqa: BLE001 - a status read never fails the node
            stats = {}
        return {"gateway": self.chain.sender.address, "stopped": self.stopped, **self.last_report, **stats}
