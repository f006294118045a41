"""The ProofRegistry as its owner manages it: deploy one, add and remove gateways, and read what
it says about a gateway (registered, next sequence, when it was added or removed).

Why separate from the anchorer: these are one-off owner transactions a person runs from the
command line (`w3gate chain`), waited for one by one, not the gateway's stream of anchors, and
they may be signed by a key that is not the gateway's.
"""
from __future__ import annotations

from dataclasses import dataclass

from eth_account.signers.local import LocalAccount
from web3 import Web3
from web3.exceptions import ContractCustomError, ContractLogicError, Web3Exception

from gateway.proofs.contract import artifact
from gateway.proofs.errors import AnchorError

RECEIPT_TIMEOUT_S = 120.0  # IoTeX mines every 5 s; a public RPC may be slow to report


@dataclass(frozen=True)
class Sent:
    """A mined owner transaction."""

    tx: str
    block: int
    gas_used: int
    contract: str | None = None  # the address it created, for a deployment


def send_and_wait(w3: Web3, account: LocalAccount, call, what: str, *, value: int = 0, abi: list | None = None) -> Sent:
    """Sign ``call`` with ``account`` (paying ``value`` wei), send it and wait for it to be mined;
    AnchorError with the contract's own error name (from ``abi``, the registry's by default)
    when it would revert or did."""
    try:
        tx = call.build_transaction({"from": account.address, "chainId": w3.eth.chain_id, "value": value,
                                     "nonce": w3.eth.get_transaction_count(account.address, "pending")})
        tx_hash = w3.eth.send_raw_transaction(account.sign_transaction(tx).raw_transaction)
        receipt = w3.eth.wait_for_transaction_receipt(tx_hash, timeout=RECEIPT_TIMEOUT_S)
    except (ContractCustomError, ContractLogicError) as e:
        raise AnchorError(f"{what} refused by the contract: {_error_name(e, abi or artifact()['abi'])}",
                          reason="reverted") from None
    except (Web3Exception, ValueError) as e:
        raise AnchorError(f"{what} failed: {e}", reason="rejected") from None
    if receipt["status"] != 1:
        raise AnchorError(f"{what} reverted in block {receipt['blockNumber']}", reason="reverted")
    return Sent("0x" + bytes(receipt["transactionHash"]).hex(), int(receipt["blockNumber"]),
                int(receipt["gasUsed"]), receipt.get("contractAddress"))


def _error_name(e: Exception, abi: list) -> str:
    """The contract's custom error (``NotOwner``, ``NotGateway``…) from a revert's data."""
    data = getattr(e, "data", None) or (e.args[1] if len(e.args) > 1 else None) or ""
    data = data if isinstance(data, str) else ""
    for item in abi:
        if item.get("type") == "error":
            signature = f"{item['name']}({','.join(i['type'] for i in item['inputs'])})"
            if data.startswith("0x" + Web3.keccak(text=signature)[:4].hex().removeprefix("0x")):
                return item["name"]
    return str(e)


def deploy(w3: Web3, owner: LocalAccount) -> Sent:
    """A new ProofRegistry owned by ``owner``."""
    contract = w3.eth.contract(abi=artifact()["abi"], bytecode=artifact()["bytecode"])
    return send_and_wait(w3, owner, contract.constructor(), "deploying the registry")


def _registry(w3: Web3, address: str):
    address = Web3.to_checksum_address(address)
    if not bytes(w3.eth.get_code(address)):
        raise AnchorError(f"there is no contract at {address} on chain {w3.eth.chain_id}", reason="no_registry")
    return w3.eth.contract(address=address, abi=artifact()["abi"])


def add_gateway(w3: Web3, owner: LocalAccount, registry: str, gateway: str) -> Sent:
    return send_and_wait(w3, owner, _registry(w3, registry).functions.addGateway(Web3.to_checksum_address(gateway)),
                 f"adding gateway {gateway}")


def remove_gateway(w3: Web3, owner: LocalAccount, registry: str, gateway: str) -> Sent:
    return send_and_wait(w3, owner, _registry(w3, registry).functions.removeGateway(Web3.to_checksum_address(gateway)),
                 f"removing gateway {gateway}")


def gateway_state(w3: Web3, registry: str, gateway: str) -> dict:
    """What the registry says about ``gateway``: its owner, whether the gateway is registered, its
    next batch sequence, and the blocks it was added and removed in (from the contract's events)."""
    contract = _registry(w3, registry)
    gateway = Web3.to_checksum_address(gateway)
    topic = "0x" + bytes(12).hex() + gateway[2:].lower()
    history = []
    for name in ("GatewayAdded", "GatewayRemoved"):
        event = getattr(contract.events, name)
        for entry in w3.eth.get_logs({"address": contract.address, "fromBlock": 0, "toBlock": "latest",
                                      "topics": [event().topic, topic]}):
            history.append({"event": name, "block": int(entry["blockNumber"])})
    return {"registry": contract.address, "owner": contract.functions.owner().call(),
            "gateway": gateway, "registered": contract.functions.isGateway(gateway).call(),
            "next_sequence": int(contract.functions.nextSequence(gateway).call()),
            "history": sorted(history, key=lambda h: h["block"])}
