"""The DataMarket contract as the gateway ships it (``contracts/DataMarket.sol``, built by
``contracts/compile.js`` into package data) and the calls each party makes on it.

Who calls what: the gateway's operator deploys and vouches (`w3gate market deploy|vouch`), the
owner lists and withdraws, the buyer buys and claims refunds; the running gateway only reads
purchases and settles them (gateway/market/service.py, through its transaction sender). The
one-off calls here are waited for one by one, as `w3gate chain` does.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources

from eth_account.signers.local import LocalAccount
from web3 import Web3

from gateway.proofs.errors import AnchorError
from gateway.proofs.registry import Sent, send_and_wait

ARTIFACT = "DataMarket.json"  # package data of gateway.market (setup.cfg [options.package_data])
STATES = ("none", "open", "settled", "paid", "refunded")
DEFAULT_CHALLENGE_BLOCKS = 17_280  # a day of IoTeX blocks: the buyer's time to claim a refund
DEFAULT_GRACE_BLOCKS = 720  # an hour after a window for the gateway to settle it


@cache
def artifact() -> dict:
    """The compiled contract (``abi``, ``bytecode``…). Read once and shared: do not modify it."""
    return json.loads(resources.files("gateway.market").joinpath(ARTIFACT).read_text())


def abi() -> list:
    return artifact()["abi"]


def market(w3: Web3, address: str):
    """The contract at ``address``; AnchorError when there is no code there."""
    address = Web3.to_checksum_address(address)
    if not bytes(w3.eth.get_code(address)):
        raise AnchorError(f"there is no contract at {address} on chain {w3.eth.chain_id}", reason="no_market")
    return w3.eth.contract(address=address, abi=abi())


def _send(w3: Web3, account: LocalAccount, call, what: str, value: int = 0) -> Sent:
    return send_and_wait(w3, account, call, what, value=value, abi=abi())


def deploy(w3: Web3, account: LocalAccount, registry: str, *, challenge_blocks: int = DEFAULT_CHALLENGE_BLOCKS,
           grace_blocks: int = DEFAULT_GRACE_BLOCKS) -> Sent:
    """A new DataMarket trusting the gateways of the ProofRegistry at ``registry``."""
    contract = w3.eth.contract(abi=abi(), bytecode=artifact()["bytecode"])
    return _send(w3, account, contract.constructor(Web3.to_checksum_address(registry), challenge_blocks, grace_blocks),
                 "deploying the market")


ZERO_ADDRESS = "0x" + "00" * 20


def vouch(w3: Web3, gateway: LocalAccount, address: str, device: str, owner: str, signer: str | None = None) -> Sent:
    """``signer``: the address the device's record leaves carry (a Pebble's own), which lets a
    buyer prove a withheld reading; None for a device whose leaves the gateway signs."""
    return _send(w3, gateway, market(w3, address).functions.vouch(
        device, Web3.to_checksum_address(owner), Web3.to_checksum_address(signer or ZERO_ADDRESS)),
        f"vouching for {device}'s owner")


def stream(w3: Web3, address: str, device: str) -> dict:
    owner, gateway, signer, price = market(w3, address).functions.streamOf(device).call()
    return {"owner": owner, "gateway": gateway, "signer": signer, "price_per_block": price}


def list_stream(w3: Web3, owner: LocalAccount, address: str, device: str, price_per_block: int) -> Sent:
    return _send(w3, owner, market(w3, address).functions.list(device, price_per_block), f"listing {device}")


@dataclass(frozen=True)
class Bought:
    id: int
    start: int
    end: int
    paid: int
    sent: Sent


def buy(w3: Web3, buyer: LocalAccount, address: str, device: str, blocks: int, key: bytes, endpoint: str) -> Bought:
    """Pay exactly the listed price for ``blocks`` blocks of ``device``."""
    contract = market(w3, address)
    price = stream(w3, address, device)["price_per_block"]
    if price == 0:
        raise AnchorError(f"{device} is not for sale on market {contract.address}", reason="not_listed")
    sent = _send(w3, buyer, contract.functions.buy(device, blocks, key, endpoint), f"buying {device}",
                 value=price * blocks)
    receipt = w3.eth.get_transaction_receipt(sent.tx)
    event = contract.events.Purchased().process_receipt(receipt)[0]["args"]
    return Bought(int(event["id"]), sent.block, int(event["end"]), price * blocks, sent)


def purchase(w3: Web3, address: str, purchase_id: int) -> dict:
    """What the contract holds about a purchase (``state`` by name)."""
    p = market(w3, address).functions.purchaseOf(purchase_id).call()
    names = ("buyer", "gateway", "owner", "start", "end", "settled_at", "state", "delivered", "delivery_root",
             "amount", "signer", "start_time", "last_time")
    out = dict(zip(names, p))
    out["state"] = STATES[out["state"]]
    out["delivery_root"] = "0x" + bytes(out["delivery_root"]).hex()
    return out


def release(w3: Web3, account: LocalAccount, address: str, purchase_id: int) -> Sent:
    return _send(w3, account, market(w3, address).functions.release(purchase_id), f"releasing purchase {purchase_id}")


def refund_unsettled(w3: Web3, account: LocalAccount, address: str, purchase_id: int) -> Sent:
    return _send(w3, account, market(w3, address).functions.refundUnsettled(purchase_id),
                 f"refunding purchase {purchase_id}")


def withdraw(w3: Web3, account: LocalAccount, address: str) -> Sent:
    return _send(w3, account, market(w3, address).functions.withdraw(), "withdrawing")


def settle_call(w3: Web3, address: str, purchase_id: int, delivered: int, root: bytes, last_time: int) -> str:
    """The calldata of a settlement, for the gateway's own transaction sender; ``last_time`` is
    the timestamp of the window's last block."""
    contract = w3.eth.contract(address=Web3.to_checksum_address(address), abi=abi())
    return contract.encode_abi("settle", args=[purchase_id, delivered, root, last_time])


def claim_withheld(w3: Web3, account: LocalAccount, address: str, purchase_id: int, proof: dict, gap: dict) -> Sent:
    """Prove a reading withheld: ``proof`` is the record's proof file (`w3gate proof SEQ --json`),
    ``gap`` the delivery tree's evidence that its leaf is absent (gateway.market.delivery.gap_proof)."""
    record = proof["record"]
    reading = (bytes.fromhex(record["signature"].removeprefix("0x")), bytes.fromhex(record["payload_sha256"]
                                                                                   .removeprefix("0x")),
               int(record["received_ms"]), bytes.fromhex(proof["root"].removeprefix("0x")), int(proof["index"]),
               [bytes.fromhex(p.removeprefix("0x")) for p in proof["path"]])
    neighbours = [(int(n["index"]), bytes.fromhex(n["leaf"]), [bytes.fromhex(p) for p in n["path"]])
                  for n in gap["neighbours"]]
    return _send(w3, account, market(w3, address).functions.claimWithheld(purchase_id, reading, neighbours),
                 f"claiming a reading of purchase {purchase_id} withheld")


def purchased_logs(w3: Web3, address: str, gateway: str, from_block: int, to_block: int) -> list[dict]:
    """The purchases served by ``gateway`` made in ``[from_block, to_block]``: id, device, window,
    buyer's key and endpoint, oldest first."""
    contract = w3.eth.contract(address=Web3.to_checksum_address(address), abi=abi())
    event = contract.events.Purchased()
    topic_gateway = "0x" + bytes(12).hex() + gateway.lower().removeprefix("0x")
    logs = w3.eth.get_logs({"address": contract.address, "fromBlock": from_block, "toBlock": to_block,
                            "topics": [event.topic, None, None, topic_gateway]})
    out = []
    for entry in logs:
        args = event.process_log(entry)["args"]
        out.append({"id": int(args["id"]), "device": str(args["device"]), "start": int(entry["blockNumber"]),
                    "end": int(args["end"]), "key": bytes(args["key"]).hex(), "endpoint": str(args["endpoint"])})
    return sorted(out, key=lambda p: p["id"])
