"""The DataMarket's rules on anvil, each party signing with its own key: who may vouch, list,
settle; when the owner is paid; when the buyer gets the money back."""
from __future__ import annotations

import json
import subprocess

import pytest
from eth_account import Account
from web3 import Web3

from gateway.market import contract
from gateway.proofs.errors import AnchorError
from rig.chain import deploy_registry
from tests.support.gateway import w3gate_exe

DEVICE = "351358810263514"
PRICE = 10**12


@pytest.fixture
def parties(anvil):
    w3 = Web3(Web3.HTTPProvider(anvil.url))
    admin, gateway, owner, buyer, stranger = (Account.from_key(k) for k in anvil.keys[:5])
    registry = deploy_registry(anvil.url, anvil.keys[0], [gateway.address])
    market = contract.deploy(w3, admin, registry, challenge_blocks=5, grace_blocks=10).contract
    return w3, market, gateway, owner, buyer, stranger


def mine(w3, blocks: int) -> None:
    w3.provider.make_request("anvil_mine", [hex(blocks)])


def refused(call, *args, error: str) -> None:
    with pytest.raises(AnchorError, match=error):
        call(*args)


def listed(parties):
    w3, market, gateway, owner, buyer, _ = parties
    contract.vouch(w3, gateway, market, DEVICE, owner.address)
    contract.list_stream(w3, owner, market, DEVICE, PRICE)
    return contract.buy(w3, buyer, market, DEVICE, 3, b"\x01" * 32, "mqtt://broker.example.org/t")


def test_only_a_registered_gateway_vouches_and_only_the_vouched_owner_lists(parties):
    w3, market, gateway, owner, _, stranger = parties
    refused(contract.vouch, w3, stranger, market, DEVICE, stranger.address, error="NotGateway")
    refused(contract.list_stream, w3, stranger, market, DEVICE, PRICE, error="NotOwner")
    contract.vouch(w3, gateway, market, DEVICE, owner.address)
    refused(contract.list_stream, w3, stranger, market, DEVICE, PRICE, error="NotOwner")
    contract.list_stream(w3, owner, market, DEVICE, PRICE)
    assert contract.stream(w3, market, DEVICE) == {"owner": owner.address, "gateway": gateway.address,
                                                   "signer": contract.ZERO_ADDRESS, "price_per_block": PRICE}


def test_a_settled_purchase_pays_the_owner_after_the_challenge_period(parties):
    w3, market, gateway, owner, buyer, stranger = parties
    bought = listed(parties)
    assert bought.paid == 3 * PRICE and bought.end == bought.start + 3
    functions = contract.market(w3, market).functions
    with pytest.raises(Exception, match=Web3.keccak(text="TooEarly(uint64,uint64)")[:4].hex()):
        functions.settle(bought.id, 2, b"\x02" * 32, 0).call({"from": gateway.address})  # the window is not over
    mine(w3, 3)
    settle = functions.settle(bought.id, 2, b"\x02" * 32, w3.eth.get_block(bought.end - 1)["timestamp"])
    with pytest.raises(Exception, match=Web3.keccak(text="NotServingGateway(uint64,address)")[:4].hex()):
        settle.call({"from": stranger.address})
    tx = settle.build_transaction({"from": gateway.address, "nonce": w3.eth.get_transaction_count(gateway.address)})
    w3.eth.wait_for_transaction_receipt(w3.eth.send_raw_transaction(gateway.sign_transaction(tx).raw_transaction))
    state = contract.purchase(w3, market, bought.id)
    assert (state["state"], state["delivered"], state["delivery_root"]) == ("settled", 2, "0x" + "02" * 32)
    refused(contract.refund_unsettled, w3, buyer, market, bought.id, error="NotOpen")
    refused(contract.release, w3, stranger, market, bought.id, error="TooEarly")
    mine(w3, 5)
    contract.release(w3, stranger, market, bought.id)  # anyone may release; the owner is paid
    before = w3.eth.get_balance(owner.address)
    sent = contract.withdraw(w3, owner, market)
    receipt = w3.eth.get_transaction_receipt(sent.tx)
    assert w3.eth.get_balance(owner.address) == before + 3 * PRICE - receipt["gasUsed"] * receipt["effectiveGasPrice"]
    refused(contract.withdraw, w3, owner, market, error="NothingToWithdraw")


def test_a_purchase_never_settled_is_refunded_to_the_buyer(parties):
    w3, market, _, owner, buyer, stranger = parties
    bought = listed(parties)
    mine(w3, 3 + 5)
    refused(contract.refund_unsettled, w3, stranger, market, bought.id, error="TooEarly")  # the gateway's grace
    mine(w3, 5)
    contract.refund_unsettled(w3, stranger, market, bought.id)
    assert contract.purchase(w3, market, bought.id)["state"] == "refunded"
    assert contract.market(w3, market).functions.balanceOf(buyer.address).call() == 3 * PRICE
    assert contract.market(w3, market).functions.balanceOf(owner.address).call() == 0
    contract.withdraw(w3, buyer, market)


def test_a_new_owner_vouched_for_takes_the_stream_off_sale(parties):
    w3, market, gateway, owner, buyer, stranger = parties
    listed(parties)
    contract.vouch(w3, gateway, market, DEVICE, stranger.address)  # the device changed hands
    refused(contract.buy, w3, buyer, market, DEVICE, 1, b"\x01" * 32, "", error="not_listed|NotListed|not for sale")


def test_a_reading_withheld_from_the_buyer_is_proven_from_the_anchors_and_refunded(parties, anvil, tmp_path):
    """The gateway anchored three readings of the Pebble inside the window but settled with two:
    the third, its leaf's anchored proof and the delivery tree's neighbours that bracket it, refund
    the buyer. A delivered reading, one outside the window or one never anchored proves nothing."""
    from gateway.market.delivery import delivery_root, gap_proof
    from gateway.proofs import merkle
    from gateway.proofs.registry import send_and_wait
    from gateway.proofs.contract import artifact

    w3, market, gateway, owner, buyer, stranger = parties
    pebble = Account.create()
    contract.vouch(w3, gateway, market, DEVICE, owner.address, pebble.address)
    contract.list_stream(w3, owner, market, DEVICE, PRICE)
    bought = contract.buy(w3, buyer, market, DEVICE, 3, b"\x01" * 32, "mqtt://broker.example.org/t")
    start_ms = w3.eth.get_block(bought.start)["timestamp"] * 1000

    def fields(i: int, rx_ms: int) -> dict:
        return {"signature": bytes([i]) * 64, "payload_sha256": bytes([100 + i]) * 32, "received_ms": rx_ms}

    readings = [fields(i, start_ms + 100 * i) for i in range(3)] + [fields(9, start_ms - 1)]  # the last: before
    leaves = [merkle.leaf(pebble.address, r["signature"], r["payload_sha256"], r["received_ms"]) for r in readings]
    root = merkle.root(leaves)
    registry = contract.market(w3, market).functions.registry().call()
    send_and_wait(w3, gateway, w3.eth.contract(address=registry, abi=artifact()["abi"]).functions.anchor(
        root, 0, len(leaves), start_ms - 1, start_ms + 200), "anchoring")
    mine(w3, 3)
    delivered = leaves[:2]  # leaves[2] withheld
    tx = contract.market(w3, market).functions.settle(
        bought.id, 2, delivery_root(delivered), w3.eth.get_block(bought.end - 1)["timestamp"]).build_transaction(
        {"from": gateway.address, "nonce": w3.eth.get_transaction_count(gateway.address)})
    w3.eth.wait_for_transaction_receipt(w3.eth.send_raw_transaction(gateway.sign_transaction(tx).raw_transaction))

    def proof_of(i: int) -> dict:
        r = readings[i]
        return {"record": {"signature": r["signature"].hex(), "payload_sha256": r["payload_sha256"].hex(),
                           "received_ms": r["received_ms"]},
                "root": "0x" + root.hex(), "index": i, "path": ["0x" + p.hex() for p in merkle.proof(leaves, i)]}

    gap = gap_proof(delivered, leaves[2])
    refused(contract.claim_withheld, w3, stranger, market, bought.id, proof_of(3), gap_proof(delivered, leaves[3]),
            error="NotInWindow")
    forged = {**proof_of(2), "record": {**proof_of(2)["record"], "payload_sha256": "ee" * 32}}
    refused(contract.claim_withheld, w3, stranger, market, bought.id, forged, gap, error="NotAnchored")
    lying_gap = {"neighbours": [{**n, "leaf": leaves[2].hex()} for n in gap["neighbours"]]}
    refused(contract.claim_withheld, w3, stranger, market, bought.id, proof_of(2), lying_gap, error="NotWithheld")
    # the buyer, with what `w3gate market receive --json` printed and the record's proof file
    proof_file, received = tmp_path / "proof.json", tmp_path / "received.jsonl"
    proof_file.write_text(json.dumps({**proof_of(2), "leaf": "0x" + leaves[2].hex()}))
    received.write_text("".join(json.dumps({"n": n, "leaf": "0x" + leaf.hex()}) + "\n"
                                for n, leaf in enumerate(delivered)) + json.dumps({"received": 2}) + "\n")
    wallet = tmp_path / "buyer.key"
    wallet.write_text(buyer.key.hex())
    claimed = subprocess.run([*w3gate_exe(), "market", "claim", str(bought.id), "--proof", str(proof_file),
                              "--received", str(received), "--wallet", str(wallet), "--rpc", anvil.url,
                              "--market", market], capture_output=True, text=True, timeout=60)
    assert claimed.returncode == 0 and "proven withheld" in claimed.stdout, claimed.stdout + claimed.stderr
    assert contract.purchase(w3, market, bought.id)["state"] == "refunded"
    assert contract.market(w3, market).functions.balanceOf(buyer.address).call() == 3 * PRICE
    refused(contract.release, w3, stranger, market, bought.id, error="NotOpen")  # the owner is not paid
