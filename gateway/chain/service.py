"""The node's chain: one thread for all blocking web3 work, the node key's transaction sender,
the operator keys' senders, and the applets' chain calls (``ws_send_tx``,
``ws_send_tx_with_operator``, ``ws_call_contract``, the system API's ``send_tx``).

Why a thread of its own: web3.py's HTTP calls block, for seconds when an RPC node is slow, and
neither the event loop nor the group commit may wait for the chain. Everything that talks to the
chain (the anchorer, the chain monitors, applets) runs there through ``call``, so one sender is
only ever used from one thread. Anchors and applets share the node key's sender (one nonce
sequence, one journal); projects may name operator keys of their own, each with its sender.

An applet's transaction is signed and held when it asks (it gets the hash), and sent or voided
by ``settle`` once its event's fate is committed. Every step of it is appended to the project's
``txs.log`` (held, sent, voided, then confirmed, reverted or dropped), which `w3gate project txs`
reads.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from gateway.chain import txlog
from gateway.chain.keystore import load_key, operator_keystore_path, read_passphrase_file
from gateway.chain.sender import ChainError, SenderConfig, TxOutcome, TxSender, connect, resolve_network
from gateway.layout import DataDir

log = logging.getLogger("w3gate.chain")


class ChainService:
    def __init__(self, chain_config, layout: DataDir) -> None:
        c = chain_config
        if not c.key_passphrase_file:
            raise ChainError("[chain] key_passphrase_file: the node key's passphrase file is not set "
                             "(create the key with `w3gate key new --passphrase-file FILE`)", reason="bad_config")
        account = load_key(layout.node_key, read_passphrase_file(c.key_passphrase_file))
        self.network = resolve_network(c.network)
        self._sender_config = SenderConfig(confirmations=c.confirmations, resubmit_after_s=c.resubmit_after_s)
        self.sender = TxSender(connect(self.network), account, layout.txjournal, self._sender_config,
                               network=self.network)
        self.sender.on_final = self._tx_final
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="w3gate-chain")
        self.interval_s = c.poll_s
        self.follow_node_key = not c.registry  # else the anchorer follows it, in its own step
        self._layout, self._passphrase_file = layout, c.key_passphrase_file
        self._operators: dict[str, TxSender] = {}  # operator keys' senders, opened when first used

    @property
    def w3(self):
        """The node key's web3 connection: use it only on the chain thread (``call``)."""
        return self.sender.w3

    async def call(self, fn: Callable[..., Any], *args) -> Any:
        """Run blocking chain work on the chain thread."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    async def run(self, stop: asyncio.Event) -> None:
        """Follow the applets' transactions of operator keys (confirm, resubmit) every poll, and
        the node key's when no anchorer does."""
        while not stop.is_set():
            await self.call(self.poll_operators)
            try:
                await asyncio.wait_for(stop.wait(), self.interval_s)
            except TimeoutError:
                pass

    def poll_operators(self) -> None:
        senders = list(self._operators.items()) + ([("node key", self.sender)] if self.follow_node_key else [])
        for name, sender in senders:
            try:
                sender.poll()
            except Exception as e:  # noqa: BLE001 - the anchoring status already says when the chain is down
                log.debug("operator %s: %s", name, e)

    def _operator(self, name: str) -> TxSender:
        sender = self._operators.get(name)
        if sender is None:
            account = load_key(operator_keystore_path(self._layout, name), read_passphrase_file(self._passphrase_file))
            sender = self._operators[name] = TxSender(
                connect(self.network), account, self._layout.operator_txjournal(name), self._sender_config,
                network=self.network)
            sender.on_final = self._tx_final
            log.info("operator %s (%s) opened for applets' transactions", name, account.address)
        return sender

    # -- the chain for applets (ws_send_tx, ws_send_tx_with_operator, ws_call_contract) -------------

    async def applet_call(self, fn: str, args: dict) -> object:
        """An applet's chain call, on the chain thread: the same sender, nonces and journal as
        the anchors. The node key is the only operator (``operatorName`` "default" or none)."""
        return await self.call(self._applet_call, fn, args)

    def _applet_call(self, fn: str, args: dict) -> object:
        """``args["operators"]``: the operator keys the applet's project may use, its default first;
        none: the node key. ``operatorName`` "default" is always the project's default."""
        request = args.get("request") or {}
        chain_id = args.get("chain_id")  # None: this node's chain (the system API's send_tx)
        allowed = list(args.get("operators") or [])
        if fn in ("send_tx", "call_contract") and chain_id is not None and int(chain_id) != self.sender.chain_id:
            raise ChainError(f"this node is on chain {self.sender.chain_id}, the applet asked for {chain_id}",
                             reason="wrong_chain")
        data = str(request.get("data") or "")
        data = data if data.startswith("0x") else "0x" + data
        if fn == "send_tx":
            operator = args.get("operator") or "default"
            if operator == "default":
                operator = allowed[0] if allowed else None
            elif operator not in allowed:
                raise ChainError(f"project {args.get('project')!r} has no operator {operator!r} "
                                 f"(it may use: {', '.join(allowed) or 'the node key only'})",
                                 reason="unknown_operator")
            sender = self._operator(operator) if operator else self.sender
            value = request.get("value") or 0
            value = int(value, 0) if isinstance(value, str) else int(value)
            project, event = args.get("project") or "", args.get("event") or ""
            tx_hash = sender.submit(request.get("to"), data, value=value, tag=f"applet:{project}:{event}", hold=True)
            self._tx_log(project, {"hash": tx_hash, "status": "held", "event": event, "operator": operator or "",
                                   "to": request.get("to"), "value": str(value)})
            return {"hash": tx_hash, "operator": operator or ""}
        if fn == "call_contract":
            return bytes(self.w3.eth.call({"to": self.w3.to_checksum_address(request["to"]), "data": data})).hex()
        raise ChainError(f"{fn} is not a chain call", reason="bad_call")

    async def settle_applet_txs(self, project: str, release: list[dict], void: list[dict]) -> None:
        """Send the held transactions of events the project committed, void those of events it
        did not (effects ``{"hash", "operator"}``)."""
        await self.call(self._settle, project, release, void)

    def _settle(self, project: str, release: list[dict], void: list[dict]) -> None:
        by_operator: dict[str, tuple[list[str], list[str]]] = {}
        for n, effects in enumerate((release, void)):
            for effect in effects:
                by_operator.setdefault(effect.get("operator") or "", ([], []))[n].append(effect["hash"])
        for operator, (sent, voided) in by_operator.items():
            sender = self._operator(operator) if operator else self.sender
            held = set(sender.held())
            sender.settle(sent, voided)
            for status, hashes in (("sent", sent), ("voided", voided)):
                for tx_hash in hashes:
                    if tx_hash in held:  # settled once: a second settle (after a restart) is silent
                        self._tx_log(project, {"hash": tx_hash, "status": status})

    async def void_held(self, operators: list[str]) -> None:
        """Void every transaction still held by the node key and ``operators`` (at start, once
        every project's outbox was carried out: no committed event claims them)."""
        await self.call(self._void_held, operators)

    def _void_held(self, operators: list[str]) -> None:
        for name in [None, *operators]:
            try:
                sender = self._operator(name) if name else self.sender
            except (ChainError, OSError) as e:
                log.warning("operator %s: held transactions not checked (%s)", name, e)
                continue
            held = sender.held()
            if held:
                log.info("%d transaction(s) held for events that never committed are voided", len(held))
                tags = {p["hashes"][0]: p["tag"] for p in sender.pending()}
                sender.settle([], held)
                for tx_hash in held:
                    project = (tags.get(tx_hash) or "").split(":")[1:2]
                    if project:
                        self._tx_log(project[0], {"hash": tx_hash, "status": "voided"})

    def _tx_final(self, outcome: TxOutcome) -> None:
        """A sender's report on a transaction: an applet's is added to its project's txs.log."""
        tag = outcome.tag or ""
        if tag.startswith("applet:") and outcome.first_hash:
            project = tag.split(":")[1]
            self._tx_log(project, {"hash": outcome.first_hash, "status": outcome.status,
                                   "mined_hash": outcome.tx_hash, "block": outcome.block_number,
                                   "gas_used": outcome.gas_used})

    def _tx_log(self, project: str, entry: dict) -> None:
        if not project:
            return
        try:
            txlog.append(self._layout.project(project).txs, entry)
        except OSError as e:  # the project was removed meanwhile, or the disk is full: the journal has it
            log.warning("could not record transaction %s of project %s: %s", entry.get("hash"), project, e)

    def close(self) -> None:
        """After every task using the chain has ended: wait for the chain thread's last call."""
        self.executor.shutdown(wait=True)
