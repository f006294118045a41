"""The running node's chain side: anchoring, applets' transactions and calls, chain monitors,
on one thread of their own. Anchors and applets share the node key's TxSender (one nonce
sequence, one journal); projects may name operator keys of their own, each with its sender.

Why a thread of their own: web3.py's HTTP calls block, for seconds when an RPC node is slow,
and the group commit must never wait for the chain. Why a view of the store: the store belongs
to its writer thread, so the anchorer reaches it through ``StoreView``, which runs each call
there. The view also shows the anchorer only records the applets have processed, so records
move accepted → processed → anchored in that order.
"""
from __future__ import annotations

import asyncio
import logging
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from gateway.applets.runtime import AppletRuntime, Event
from gateway.buffer.store import RecordStore
from gateway.chain.monitors import ChainMonitors, Monitor
from gateway.chain.keystore import load_key, operator_keystore_path, read_passphrase_file
from gateway.chain.sender import SenderConfig, TxSender, connect, resolve_network
from gateway.layout import DataDir
from gateway.proofs.anchor import AnchorConfig, AnchorError, Anchorer, addresses_from
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
    def __init__(self, chain_config, layout: DataDir, store: RecordStore, registry: Registry,
                 run_on_writer: Callable) -> None:
        c = chain_config
        if not c.registry:
            raise AnchorError("[chain] registry: the proof registry's contract address is not set",
                              reason="bad_config")
        if not c.key_passphrase_file:
            raise AnchorError("[chain] key_passphrase_file: the node key's passphrase file is not set "
                              "(create the key with `w3gate key new --passphrase-file FILE`)", reason="bad_config")
        account = load_key(layout.node_key, read_passphrase_file(c.key_passphrase_file))
        network = resolve_network(c.network)
        self.sender = TxSender(connect(network), account, layout.txjournal,
                               SenderConfig(confirmations=c.confirmations, resubmit_after_s=c.resubmit_after_s),
                               network=network)
        self.anchorer = Anchorer(StoreView(store, run_on_writer), self.sender, c.registry, layout.proofs,
                                 addresses_from(registry),
                                 AnchorConfig(batch_size=c.batch_records, max_age_s=c.batch_age_s))
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="w3gate-chain")
        self._network, self._layout, self._chain_config = network, layout, c
        self._operators: dict[str, TxSender] = {}  # operator keys' senders, opened when first used
        self.interval_s = c.poll_s
        self.last_report: dict = {}
        self.stopped: str | None = None  # why anchoring stopped, when it had to
        self.monitor_events = 0
        log.info("anchoring as %s (did:io:%s) on %s, registry %s", account.address, account.address.lower(),
                 network.name, c.registry)

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        chain_was = "up"
        while not stop.is_set() and self.stopped is None:
            try:
                self.last_report = await loop.run_in_executor(self.executor, self._step)
            except AnchorError as e:
                self.stopped = f"{e.reason}: {e}"
                log.error("anchoring stopped: %s", self.stopped)
                break
            except Exception:  # noqa: BLE001 - an unexpected failure: log it, try again later
                log.exception("anchoring step failed")
                self.last_report = {"chain": "error"}
            chain = self.last_report.get("chain", "up")
            if chain != chain_was:
                (log.warning if chain != "up" else log.info)("chain is %s", chain)
                chain_was = chain
            try:
                await asyncio.wait_for(stop.wait(), self.interval_s)
            except asyncio.TimeoutError:
                pass

    def _step(self) -> dict:
        report = self.anchorer.step()
        for name, sender in self._operators.items():  # follow applets' transactions: confirm, resubmit
            try:
                sender.poll()
            except Exception as e:  # noqa: BLE001 - the anchor report already says when the chain is down
                log.debug("operator %s: %s", name, e)
        return report

    def _operator(self, name: str) -> TxSender:
        sender = self._operators.get(name)
        if sender is None:
            c = self._chain_config
            account = load_key(operator_keystore_path(self._layout, name), read_passphrase_file(c.key_passphrase_file))
            sender = self._operators[name] = TxSender(
                connect(self._network), account, self._layout.operator_txjournal(name),
                SenderConfig(confirmations=c.confirmations, resubmit_after_s=c.resubmit_after_s), network=self._network)
            log.info("operator %s (%s) opened for applets' transactions", name, account.address)
        return sender

    # -- chain monitors: heights and contract logs the deployed projects watch --------------------------

    async def run_monitors(self, stop: asyncio.Event, runtime: AppletRuntime) -> None:
        """Deliver what the projects' chain monitors see as their events (at least once)."""
        monitors = ChainMonitors(self.sender.w3, lambda name: runtime.store.files(name).monitors)
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            specs = [Monitor(name, m["kind"], m.get("event", "MONITOR_DEFAULT"), m.get("height"), m.get("address"),
                             tuple(m.get("topics") or ()), m.get("block_start"))
                     for name, project in runtime.projects.items() for m in project.monitors]
            try:
                firings = await loop.run_in_executor(self.executor, monitors.poll, specs)
            except Exception as e:  # noqa: BLE001 - the chain is down: the next round tries again
                log.debug("chain monitors: %s", e)
                firings = []
            for firing in firings:
                m = firing.monitor
                if firing.payloads:
                    await runtime.handle([Event(m.project, payload, event_type=m.event,
                                                event_id=f"{uuid.uuid4()}_monitor", publisher="chain", trust="chain")
                                          for payload in firing.payloads])
                    self.monitor_events += len(firing.payloads)
                monitors.commit(firing)
            try:
                await asyncio.wait_for(stop.wait(), self.interval_s)
            except asyncio.TimeoutError:
                pass

    # -- the chain for applets (ws_send_tx, ws_send_tx_with_operator, ws_call_contract) -------------

    async def applet_call(self, fn: str, args: dict):
        """An applet's chain call, on the chain thread: the same sender, nonces and journal as
        the anchors. The node key is the only operator (``operatorName`` "default" or none)."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, self._applet_call, fn, args)

    def _applet_call(self, fn: str, args: dict):
        """``args["operators"]``: the operator keys the applet's project may use, its default first;
        none: the node key. ``operatorName`` "default" is always the project's default."""
        request = args.get("request") or {}
        chain_id = args.get("chain_id")  # None: this node's chain (the system API's send_tx)
        allowed = list(args.get("operators") or [])
        if fn in ("send_tx", "call_contract") and chain_id is not None and int(chain_id) != self.sender.chain_id:
            raise AnchorError(f"this node is on chain {self.sender.chain_id}, the applet asked for {chain_id}",
                              reason="wrong_chain")
        data = str(request.get("data") or "")
        data = data if data.startswith("0x") else "0x" + data
        if fn == "send_tx":
            operator = args.get("operator") or "default"
            if operator == "default":
                operator = allowed[0] if allowed else None
            elif operator not in allowed:
                raise AnchorError(f"project {args.get('project')!r} has no operator {operator!r} "
                                  f"(it may use: {', '.join(allowed) or 'the node key only'})", reason="unknown_operator")
            sender = self._operator(operator) if operator else self.sender
            value = request.get("value") or 0
            value = int(value, 0) if isinstance(value, str) else int(value)
            return sender.submit(request.get("to"), data, value=value, tag=f"applet:{args.get('event', '')}")
        if fn == "call_contract":
            return bytes(self.sender.w3.eth.call({"to": self.sender.w3.to_checksum_address(request["to"]),
                                                  "data": data})).hex()
        raise AnchorError(f"{fn} is not a chain call", reason="bad_call")

    def status(self) -> dict:
        try:
            stats = self.anchorer.stats()
        except Exception:  # noqa: BLE001 - a status read never fails the node
            stats = {}
        return {"gateway": self.sender.address, "stopped": self.stopped, **self.last_report, **stats}

    def close(self) -> None:
        self.executor.shutdown(wait=True)
