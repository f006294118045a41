"""Transactions from the node key: nonces, fees, confirmations, stuck ones replaced, restarts.

Why it is shaped like this:

- **Nonces are local.** The first send seeds a counter from ``eth_getTransactionCount(pending)``
  (or the journal, whichever is higher); every later transaction takes the next number without
  asking the node, so several can be in flight in one block.
- **Sign locally, send raw.** The key never leaves the process; the node only sees signed bytes.
- **Fees**: IoTeX (chain ids 4689, 4690) and any chain whose latest block has no
  ``baseFeePerGas`` get a legacy ``gasPrice`` (``eth_gasPrice``); other chains get EIP-1559 fees
  (``maxFeePerGas = 2 * baseFee + tip``, tip from ``eth_maxPriorityFeePerGas``). ``fee_mode``
  forces either.
- **The journal comes first.** Each signed transaction is written to an atomic JSON journal
  *before* it is broadcast, so after a crash or restart every transaction that may have reached
  the network is known, and is rebroadcast or waited for: never signed again with a new nonce.
- **Stuck transactions** (not mined ``resubmit_after_s`` after their last broadcast) are
  replaced: same nonce, same call, fees raised by at least ``fee_bump`` (12.5 %, the most any
  common node asks of a replacement) or to the market price if that is higher. Every attempt
  stays in the journal, since any of them may be the one mined.
- **Confirmations**: a transaction is reported once its block is ``confirmations`` deep. A
  receipt that vanishes (a reorg) puts it back to pending: it is rebroadcast if the node no
  longer knows it.
- **Held transactions** (``submit(hold=True)``) are signed and journaled but not broadcast until
  ``settle`` releases them: an applet gets its transaction's hash during its event, and the
  transaction reaches the network only once the event's state is committed. A held transaction
  whose event was rolled back is voided: its nonce is given back when no later nonce was taken,
  and otherwise filled with a zero-value transfer to the node's own address (the cheapest
  transaction that spends a nonce), so later transactions are not stuck behind a gap.

Thread boundary: web3's HTTPProvider is synchronous and a TxSender is not thread-safe. One
thread (the gateway's chain worker) owns it and calls ``submit`` and ``poll``; other code hands
work to that thread (a queue), and nothing here touches the event loop.
"""
from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from eth_account.signers.local import LocalAccount
from web3 import Web3
from web3.exceptions import TransactionNotFound, Web3Exception, Web3RPCError

from gateway.errors import W3gateError
from gateway.storage import StoreError, atomic_write, dump_json, private_dir, read_json

log = logging.getLogger("w3gate.chain")

IOTEX_CHAIN_IDS = frozenset({4689, 4690})
MIN_FEE_BUMP = 0.125
JOURNAL_VERSION = 1


class ChainError(W3gateError):
    """A chain operation failed; ``reason`` says why (``unavailable`` is worth retrying)."""

    reason = "chain"


class ChainUnavailable(ChainError):
    """The RPC endpoint cannot be reached (down, timeout): try again later, nothing was lost."""

    reason = "unavailable"


@dataclass(frozen=True)
class Network:
    name: str
    rpc_url: str
    chain_id: int | None = None  # checked against eth_chainId when known
    fee_mode: str = "auto"  # "auto", "legacy" or "eip1559"


NETWORKS = {
    "iotex-mainnet": Network("iotex-mainnet", "https://babel-api.mainnet.iotex.io", 4689, "legacy"),
    "iotex-testnet": Network("iotex-testnet", "https://babel-api.testnet.iotex.io", 4690, "legacy"),
}


def resolve_network(spec: str) -> Network:
    """A preset name (``iotex-mainnet``, ``iotex-testnet``) or any http(s) JSON-RPC URL."""
    if spec in NETWORKS:
        return NETWORKS[spec]
    if spec.startswith(("http://", "https://")):
        return Network(spec, spec)
    raise ChainError(f"unknown network {spec!r}: give one of {', '.join(NETWORKS)} or an http(s) RPC URL",
                     reason="bad_network")


def connect(network: Network | str, *, timeout: float = 10.0) -> Web3:
    """A synchronous Web3 on the network's RPC URL (no request is made yet)."""
    if isinstance(network, str):
        network = resolve_network(network)
    return Web3(Web3.HTTPProvider(network.rpc_url, request_kwargs={"timeout": timeout}))


@dataclass(frozen=True)
class SenderConfig:
    confirmations: int = 2  # blocks deep (1 = mined) before a transaction is reported
    resubmit_after_s: float = 60.0  # replace a transaction not mined this long after its broadcast
    fee_bump: float = MIN_FEE_BUMP  # fraction a replacement raises every fee by, at least 12.5 %
    fee_mode: str = "auto"  # "auto": IoTeX and chains without baseFeePerGas legacy, else EIP-1559
    max_fee_wei: int | None = None  # cap on gasPrice / maxFeePerGas (None: no cap)
    gas_margin: float = 1.25  # gas limit = estimate * margin, when the caller gives none

    def __post_init__(self) -> None:
        if self.confirmations < 1:
            raise ChainError("confirmations must be >= 1", reason="bad_config")
        if self.fee_bump < MIN_FEE_BUMP:
            raise ChainError(f"fee_bump must be >= {MIN_FEE_BUMP} (nodes refuse smaller replacements)",
                             reason="bad_config")
        if self.fee_mode not in ("auto", "legacy", "eip1559"):
            raise ChainError(f"fee_mode must be auto, legacy or eip1559, not {self.fee_mode!r}",
                             reason="bad_config")


@dataclass(frozen=True)
class TxOutcome:
    """What became of a submitted transaction, reported once by ``poll``.

    ``status``: "confirmed" (mined, succeeded, deep enough), "reverted" (mined, failed, deep
    enough: the nonce is spent) or "dropped" (the nonce was spent by a transaction that is none
    of ours, e.g. another process with the same key: the call did not happen).
    """

    tag: str | None
    nonce: int
    status: str
    tx_hash: str | None
    block_number: int | None = None
    gas_used: int | None = None
    effective_gas_price: int | None = None
    first_hash: str | None = None  # the hash ``submit`` returned (a replacement changes the mined one)


@dataclass
class _Entry:
    """One nonce's call and every signed attempt at it (journaled)."""

    nonce: int
    to: str | None
    data: str
    value: int
    gas: int
    tag: str | None
    created: float
    attempts: list[dict] = field(default_factory=list)  # {"hash", "raw", "fees", "sent"}
    held: bool = False  # signed, not to be broadcast until released (see ``settle``)
    broadcast: bool = False  # in memory only: the node took the last attempt since we (re)started

    def to_dict(self) -> dict:
        return {"nonce": self.nonce, "to": self.to, "data": self.data, "value": self.value, "gas": self.gas,
                "tag": self.tag, "created": self.created, "attempts": self.attempts,
                **({"held": True} if self.held else {})}

    @classmethod
    def from_dict(cls, d: dict) -> _Entry:
        return cls(int(d["nonce"]), d.get("to"), d["data"], int(d.get("value", 0)), int(d["gas"]), d.get("tag"),
                   float(d.get("created", 0.0)), list(d.get("attempts") or []), bool(d.get("held", False)))


def _rpc_message(e: Exception) -> str:
    arg = e.args[0] if e.args else e
    if isinstance(arg, dict):
        return str(arg.get("message", arg))
    return str(arg)


class TxSender:
    """Signs and sends the node key's transactions and follows them to confirmation.

    ``journal_path``: the JSON file holding every transaction not yet reported by ``poll``.
    """

    def __init__(self, w3: Web3, account: LocalAccount, journal_path: str | os.PathLike,
                 config: SenderConfig = SenderConfig(), *, network: Network | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.w3 = w3
        self.account = account
        self.address = account.address
        self.config = config
        self.network = network
        self.journal_path = Path(journal_path)
        self._clock = clock
        self._chain_id: int | None = None
        self._chain_checked = False
        self._next_nonce: int | None = None
        self._entries: dict[int, _Entry] = {}
        self.on_final: Callable[[TxOutcome], None] | None = None  # told of every outcome poll reports
        self._load()

    # -- journal ---------------------------------------------------------------------------------

    def _load(self) -> None:
        data = read_json(self.journal_path)
        if data is None:
            return
        if data.get("version") != JOURNAL_VERSION or data.get("address", "").lower() != self.address.lower():
            raise ChainError(f"{self.journal_path} belongs to {data.get('address')} (version "
                             f"{data.get('version')}), not to {self.address}", reason="journal_mismatch")
        self._chain_id = data.get("chain_id")
        try:
            for d in data.get("txs", []):
                entry = _Entry.from_dict(d)
                self._entries[entry.nonce] = entry
        except (KeyError, TypeError, ValueError) as e:
            raise ChainError(f"{self.journal_path}: a transaction entry is malformed ({e})",
                             reason="journal_corrupt") from None
        if self._entries:
            log.info("tx journal: %d transaction(s) from before the restart are followed up, none re-signed",
                     len(self._entries))

    def _save(self) -> None:
        data = {"version": JOURNAL_VERSION, "address": self.address, "chain_id": self._chain_id,
                "txs": [e.to_dict() for e in sorted(self._entries.values(), key=lambda e: e.nonce)]}
        private_dir(self.journal_path.parent)
        try:
            atomic_write(self.journal_path, dump_json(data))
        except OSError as e:
            raise StoreError(f"cannot write {self.journal_path}: {e}", reason="io") from e

    # -- chain access ----------------------------------------------------------------------------

    def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """One RPC; an unreachable endpoint becomes ChainUnavailable (RPC errors pass through)."""
        try:
            return fn(*args, **kwargs)
        except OSError as e:  # requests' ConnectionError and Timeout are OSErrors
            raise ChainUnavailable(f"{self._endpoint()}: {e.__class__.__name__}: {e}") from None

    def _endpoint(self) -> str:
        return getattr(self.w3.provider, "endpoint_uri", None) or repr(self.w3.provider)

    @property
    def known_chain_id(self) -> int | None:
        """The chain id once asked (or from the journal), without a call: for the event loop."""
        return self._chain_id

    @property
    def chain_id(self) -> int:
        """The chain's id, checked against the network preset and the journal (asked once)."""
        if not self._chain_checked:
            actual = int(self._call(lambda: self.w3.eth.chain_id))
            expected = self.network.chain_id if self.network else None
            if expected is not None and actual != expected:
                raise ChainError(f"{self._endpoint()} is chain {actual}, not {self.network.name} ({expected})",
                                 reason="wrong_chain")
            if self._chain_id is not None and self._chain_id != actual:
                raise ChainError(f"{self.journal_path} holds transactions for chain {self._chain_id}, "
                                 f"but {self._endpoint()} is chain {actual}", reason="journal_mismatch")
            self._chain_id = actual
            self._chain_checked = True
        return self._chain_id

    def fee_mode(self) -> str:
        """"legacy" or "eip1559" for the next transaction (see the module docstring)."""
        mode = self.config.fee_mode
        if mode == "auto" and self.network is not None and self.network.fee_mode != "auto":
            mode = self.network.fee_mode
        if mode != "auto":
            return mode
        if self.chain_id in IOTEX_CHAIN_IDS:
            return "legacy"
        block = self._call(self.w3.eth.get_block, "latest")
        return "eip1559" if block.get("baseFeePerGas") is not None else "legacy"

    def market_fees(self) -> dict[str, int]:
        """The fee fields a new transaction would carry now (capped by max_fee_wei)."""
        cap = self.config.max_fee_wei
        if self.fee_mode() == "legacy":
            price = int(self._call(lambda: self.w3.eth.gas_price))
            return {"gasPrice": min(price, cap) if cap else price}
        base = int(self._call(self.w3.eth.get_block, "latest")["baseFeePerGas"])
        try:
            tip = int(self._call(lambda: self.w3.eth.max_priority_fee))
        except Web3RPCError:  # a node without eth_maxPriorityFeePerGas
            tip = Web3.to_wei(1, "gwei")
        max_fee = 2 * base + tip
        if cap:
            max_fee = min(max_fee, cap)
            tip = min(tip, max_fee)
        return {"maxFeePerGas": max_fee, "maxPriorityFeePerGas": tip}

    def _bumped(self, old: dict[str, int]) -> dict[str, int] | None:
        """Fees for a replacement: every field up by fee_bump (rounded up) or to the market,
        whichever is higher; None when the cap forbids a large enough raise."""
        market = self.market_fees()
        if set(market) != set(old):  # the fee mode changed under us: keep the old kind of fees
            market = {}
        fees = {k: max(math.ceil(v * (1 + self.config.fee_bump)), market.get(k, 0)) for k, v in old.items()}
        cap = self.config.max_fee_wei
        if cap and max(fees.values()) > cap:
            return None
        return fees

    # -- sending ---------------------------------------------------------------------------------

    def _seed_nonce(self) -> int:
        if self._next_nonce is None:
            pending = int(self._call(self.w3.eth.get_transaction_count, self.address, "pending"))
            journaled = max(self._entries, default=-1) + 1
            self._next_nonce = max(pending, journaled)
        return self._next_nonce

    def _sign(self, entry: _Entry, fees: dict[str, int]) -> dict:
        tx = {"nonce": entry.nonce, "to": entry.to, "data": entry.data, "value": entry.value, "gas": entry.gas,
              "chainId": self.chain_id, **fees}
        if entry.to is None:
            del tx["to"]
        signed = self.account.sign_transaction(tx)
        return {"hash": "0x" + bytes(signed.hash).hex(), "raw": "0x" + bytes(signed.raw_transaction).hex(),
                "fees": fees, "sent": self._clock()}

    def _broadcast(self, entry: _Entry) -> None:
        """Send the entry's last attempt; an unreachable node leaves it for the next poll."""
        raw = entry.attempts[-1]["raw"]
        try:
            self.w3.eth.send_raw_transaction(raw)
        except OSError as e:
            entry.broadcast = False
            log.info("tx %d not broadcast yet (%s); will retry", entry.nonce, e.__class__.__name__)
            return
        except Web3RPCError as e:
            message = _rpc_message(e).lower()
            if "already" in message or "known" in message:
                entry.broadcast = True  # the node has it: fine
                return
            if "nonce too low" in message:
                entry.broadcast = True  # mined already (ours or not): poll finds out which
                return
            raise
        entry.broadcast = True

    def submit(self, to: str | None, data: bytes | str, *, value: int = 0, gas: int | None = None,
               tag: str | None = None, hold: bool = False) -> str:
        """Sign a call with the next nonce, journal it, broadcast it; returns its first hash.
        ``hold``: journal it only, until ``settle`` releases or voids it.

        Raises ChainUnavailable when the node cannot be reached *before* anything was journaled
        (nothing to undo), ChainError ``rejected`` when the node refuses the transaction for
        good (insufficient funds, a reverting call at estimation...).
        """
        data_hex = data if isinstance(data, str) else "0x" + bytes(data).hex()
        to = Web3.to_checksum_address(to) if to else None
        nonce = self._seed_nonce()
        if gas is None:
            try:
                estimate = self._call(self.w3.eth.estimate_gas,
                                      {"from": self.address, "to": to, "data": data_hex, "value": value})
            except Web3Exception as e:
                raise ChainError(f"estimating gas for {tag or 'a call'} failed: {e}", reason="rejected") from None
            gas = math.ceil(estimate * self.config.gas_margin)
        entry = _Entry(nonce, to, data_hex, value, gas, tag, self._clock(), held=hold)
        entry.attempts.append(self._sign(entry, self.market_fees()))
        self._entries[nonce] = entry
        self._save()  # journaled before the network can see it
        self._next_nonce = nonce + 1
        if hold:
            return entry.attempts[-1]["hash"]
        try:
            self._broadcast(entry)
        except Web3RPCError as e:
            # Refused outright: it was never in any pool, so the nonce is free again.
            del self._entries[nonce]
            self._save()
            self._next_nonce = None  # re-seed from the node next time
            raise ChainError(f"{tag or 'transaction'} refused by the node: {_rpc_message(e)}",
                             reason="rejected") from None
        return entry.attempts[-1]["hash"]

    def settle(self, release: list[str], void: list[str]) -> None:
        """Broadcast the held transactions in ``release`` and void those in ``void`` (by first
        hash). Voids go first, highest nonce first, so a run of voided nonces at the top is given
        back whole. Hashes not held (settled before a restart, or unknown) are skipped: settling
        twice is harmless."""
        by_hash = {e.attempts[0]["hash"]: e for e in self._entries.values() if e.held}
        filled: list[_Entry] = []
        for entry in sorted((by_hash[h] for h in set(void) if h in by_hash), key=lambda e: -e.nonce):
            if entry.nonce == max(self._entries) and self._next_nonce in (None, entry.nonce + 1):
                del self._entries[entry.nonce]
                self._next_nonce = None if self._next_nonce is None else entry.nonce
                log.info("tx nonce %d (%s) voided: its event was rolled back; the nonce is free again",
                         entry.nonce, entry.tag)
            else:
                entry.to, entry.data, entry.value, entry.gas = self.address, "0x", 0, 21_000
                entry.tag, entry.held = f"void:{entry.tag}", False
                entry.attempts = [self._sign(entry, entry.attempts[-1]["fees"])]
                filled.append(entry)
                log.info("tx nonce %d voided: its event was rolled back; a zero-value transfer to ourselves "
                         "takes the nonce, as later ones are in use", entry.nonce)
        released = [by_hash[h] for h in dict.fromkeys(release) if h in by_hash and by_hash[h].held]
        for entry in released:
            entry.held = False
        if not (released or filled or void):
            return
        self._save()  # released and voided, journaled before the network sees any of it
        for entry in sorted(released + filled, key=lambda e: e.nonce):
            entry.attempts[-1]["sent"] = self._clock()
            self._broadcast_or_keep(entry)

    def held(self) -> list[str]:
        """First hashes of the transactions still held, lowest nonce first."""
        return [e.attempts[0]["hash"] for e in sorted(self._entries.values(), key=lambda e: e.nonce) if e.held]

    # -- following up ----------------------------------------------------------------------------

    def _receipt(self, entry: _Entry) -> Any | None:
        for attempt in reversed(entry.attempts):
            try:
                receipt = self._call(self.w3.eth.get_transaction_receipt, attempt["hash"])
            except TransactionNotFound:
                continue
            if receipt is not None and receipt.get("blockNumber") is not None:
                return receipt
        return None

    def _known_to_node(self, entry: _Entry) -> bool:
        try:
            self._call(self.w3.eth.get_transaction, entry.attempts[-1]["hash"])
            return True
        except TransactionNotFound:
            return False

    def poll(self) -> list[TxOutcome]:
        """Follow every pending transaction one step; returns those now final (each once).

        Raises ChainUnavailable when the node cannot be reached (nothing changes then)."""
        if not self._entries:
            return []
        head = int(self._call(lambda: self.w3.eth.block_number))
        spent = None  # the account's mined nonce count, asked only when needed
        now = self._clock()
        outcomes: list[TxOutcome] = []
        changed = False
        for nonce in sorted(self._entries):
            entry = self._entries[nonce]
            if entry.held:
                continue  # not on the network until released
            receipt = self._receipt(entry)
            if receipt is not None:
                depth = head - receipt["blockNumber"] + 1
                if depth >= self.config.confirmations:
                    status = "confirmed" if receipt["status"] == 1 else "reverted"
                    outcomes.append(TxOutcome(entry.tag, nonce, status, "0x" + bytes(receipt["transactionHash"]).hex(),
                                              receipt["blockNumber"], receipt["gasUsed"],
                                              receipt.get("effectiveGasPrice"), entry.attempts[0]["hash"]))
                    del self._entries[nonce]
                    changed = True
                continue
            if spent is None:
                spent = int(self._call(self.w3.eth.get_transaction_count, self.address, "latest"))
            if nonce < spent:
                receipt = self._receipt(entry)  # mined between the two questions?
                if receipt is None:
                    log.warning("tx nonce %d (%s) was spent by a transaction that is not ours", nonce, entry.tag)
                    outcomes.append(TxOutcome(entry.tag, nonce, "dropped", None, first_hash=entry.attempts[0]["hash"]))
                    del self._entries[nonce]
                    changed = True
                continue
            if now - entry.attempts[-1]["sent"] >= self.config.resubmit_after_s:
                fees = self._bumped(entry.attempts[-1]["fees"])
                if fees is None:
                    log.warning("tx nonce %d (%s) is stuck and max_fee_wei forbids a higher fee", nonce, entry.tag)
                    entry.attempts[-1]["sent"] = now  # ask again after another period
                    changed = True
                else:
                    entry.attempts.append(self._sign(entry, fees))
                    self._save()  # journaled before the network sees the replacement
                    log.info("tx nonce %d (%s) not mined after %.0f s: replaced with fees %s",
                             nonce, entry.tag, self.config.resubmit_after_s, fees)
                    self._broadcast_or_keep(entry)
                continue
            if not entry.broadcast or not self._known_to_node(entry):
                self._broadcast_or_keep(entry)  # after a restart, an outage or a reorg
        if changed:
            self._save()
        if self._entries and self._next_nonce is not None and spent is not None:
            self._next_nonce = max(self._next_nonce, spent)
        if self.on_final is not None:
            for outcome in outcomes:
                self.on_final(outcome)
        return outcomes

    def _broadcast_or_keep(self, entry: _Entry) -> None:
        try:
            self._broadcast(entry)
        except Web3RPCError as e:
            # e.g. "replacement transaction underpriced": the earlier attempt stays in the pool
            # and may still be mined; the next period raises again.
            log.warning("tx nonce %d (%s) rebroadcast refused: %s", entry.nonce, entry.tag, _rpc_message(e))

    # -- inspection ------------------------------------------------------------------------------

    def pending(self) -> list[dict]:
        """Journaled transactions not yet final, oldest nonce first (for status and tests)."""
        return [{"nonce": e.nonce, "tag": e.tag, "hashes": [a["hash"] for a in e.attempts],
                 "fees": e.attempts[-1]["fees"], "held": e.held} for e in sorted(self._entries.values(), key=lambda e: e.nonce)]

    def find(self, tag: str) -> dict | None:
        """The pending transaction carrying ``tag``, if any."""
        return next((p for p in self.pending() if p["tag"] == tag), None)
