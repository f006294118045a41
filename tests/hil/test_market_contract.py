"""The DataMarket's rules on anvil, each party signing with its own key: who may vouch, list,
settle; when the owner is paid; when the buyer gets the money back."""
from __future__ import annotations

import pytest
from eth_account import Account
from web3 import Web3

from gateway.market import contract
from gateway.proofs.errors import AnchorError
from rig.chain import deploy_registry

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
    assert contract.market(w3, market).functions.streamOf(DEVICE).call() == [owner.address, gateway.address, PRICE]


def test_a_settled_purchase_pays_the_owner_after_the_challenge_period(parties):
    w3, market, gateway, owner, buyer, stranger = parties
    bought = listed(parties)
    assert bought.paid == 3 * PRICE and bought.end == bought.start + 3
    settle = contract.market(w3, market).functions.settle(bought.id, 2, b"\x02" * 32)
    with pytest.raises(Exception, match=Web3.keccak(text="TooEarly(uint64,uint64)")[:4].hex()):
        settle.call({"from": gateway.address})  # the window is not over
    mine(w3, 3)
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
