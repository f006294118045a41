"""The transaction sender on a real chain (anvil): nonces, fee kinds, confirmations, stuck
transactions replaced, restarts and reorgs followed up without signing anything twice."""
from __future__ import annotations

import json
import time

import pytest
from eth_account import Account
from web3 import Web3

from gateway.chain.sender import (ChainUnavailable, Network, SenderConfig, TxSender, connect,
                                  resolve_network)
from rig.chain import start_anvil


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def make_sender(anvil, tmp_path, clock=None, **config) -> TxSender:
    return TxSender(connect(anvil.url), Account.from_key(anvil.keys[1]), tmp_path / "txjournal.json",
                    SenderConfig(**{"confirmations": 1, **config}), clock=clock or Clock())


def transfer(sender: TxSender, anvil, tag: str, value: int = 1) -> str:
    return sender.submit(anvil.addresses[2], b"", value=value, gas=21_000, tag=tag)


def mine(anvil, blocks: int = 1) -> None:
    for _ in range(blocks):
        anvil.rpc("evm_mine")


def test_nonces_are_consecutive_from_the_pending_count_without_asking_per_transaction(anvil, tmp_path):
    w3 = Web3(Web3.HTTPProvider(anvil.url))
    other = make_sender(anvil, tmp_path / "other")
    transfer(other, anvil, "before")  # nonce 0 spent by someone else with the same key
    anvil.rpc("evm_setAutomine", False)
    sender = make_sender(anvil, tmp_path)
    hashes = [transfer(sender, anvil, f"t{i}") for i in range(5)]
    assert [w3.eth.get_transaction(h).nonce for h in hashes] == [1, 2, 3, 4, 5]
    assert [p["nonce"] for p in sender.pending()] == [1, 2, 3, 4, 5]
    assert sender.poll() == []  # nothing mined yet
    mine(anvil)
    outcomes = sender.poll()
    assert [(o.tag, o.nonce, o.status) for o in outcomes] == [(f"t{i}", i + 1, "confirmed") for i in range(5)]
    assert [o.tx_hash for o in outcomes] == hashes
    assert sender.pending() == [] and sender.poll() == []


def test_an_eip1559_chain_gets_dynamic_fees(anvil, tmp_path):
    sender = make_sender(anvil, tmp_path)
    assert sender.fee_mode() == "eip1559"
    tx = sender.w3.eth.get_transaction(transfer(sender, anvil, "t"))
    base = sender.w3.eth.get_block("latest").baseFeePerGas
    assert tx.type == 2 and tx.maxFeePerGas >= base + tx.maxPriorityFeePerGas


def test_a_chain_without_base_fee_gets_a_legacy_gas_price(tmp_path):
    chain = start_anvil(tmp_path / "berlin", "--hardfork", "berlin")
    try:
        sender = make_sender(chain, tmp_path)
        assert sender.fee_mode() == "legacy"
        tx = sender.w3.eth.get_transaction(transfer(sender, chain, "t"))
        assert tx.type == 0 and tx.gasPrice == sender.w3.eth.gas_price
    finally:
        chain.stop()


def test_legacy_can_be_forced_and_iotex_is_always_legacy(anvil, tmp_path):
    forced = make_sender(anvil, tmp_path, fee_mode="legacy")
    assert forced.w3.eth.get_transaction(transfer(forced, anvil, "t")).type == 0

    class IoTeX:  # what babel-api answers, without the network
        class eth:
            chain_id = 4689

            @staticmethod
            def get_block(_):
                return {"baseFeePerGas": 1_000_000_000_000}

    sender = TxSender(IoTeX(), Account.create(), tmp_path / "iotex.json")
    assert sender.fee_mode() == "legacy"
    assert resolve_network("iotex-mainnet") == Network("iotex-mainnet", "https://babel-api.mainnet.iotex.io", 4689, "legacy")
    assert resolve_network("iotex-testnet").chain_id == 4690
    assert resolve_network("http://127.0.0.1:8545").chain_id is None


def test_a_transaction_is_reported_only_once_its_block_is_deep_enough(anvil, tmp_path):
    sender = make_sender(anvil, tmp_path, confirmations=3)
    tx_hash = transfer(sender, anvil, "t")  # automine: in a block at once
    assert sender.poll() == []
    mine(anvil)
    assert sender.poll() == []
    mine(anvil)
    (outcome,) = sender.poll()
    assert outcome.tx_hash == tx_hash and outcome.status == "confirmed" and outcome.gas_used == 21_000


def test_a_stuck_transaction_is_replaced_with_the_same_nonce_and_higher_fees(anvil, tmp_path, clock):
    anvil.rpc("evm_setAutomine", False)
    sender = make_sender(anvil, tmp_path, clock, resubmit_after_s=30)
    first = transfer(sender, anvil, "t")
    clock.now += 29
    sender.poll()
    assert len(sender.pending()[0]["hashes"]) == 1  # not yet
    clock.now += 1
    sender.poll()
    (pending,) = sender.pending()
    assert pending["hashes"][0] == first and len(pending["hashes"]) == 2
    old, new = json.loads((tmp_path / "txjournal.json").read_text())["txs"][0]["attempts"]
    for fee in ("maxFeePerGas", "maxPriorityFeePerGas"):
        assert new["fees"][fee] >= old["fees"][fee] * 1.125
    replacement = sender.w3.eth.get_transaction(new["hash"])  # the node took the replacement
    assert replacement.nonce == 0 and replacement.maxFeePerGas == new["fees"]["maxFeePerGas"]
    mine(anvil)
    (outcome,) = sender.poll()
    assert outcome.tx_hash == pending["hashes"][1] and outcome.status == "confirmed"
    assert sender.w3.eth.get_transaction_count(sender.address) == 1  # one transfer, not two


def test_a_restart_follows_up_the_journal_instead_of_signing_again(anvil, tmp_path, clock):
    anvil.rpc("evm_setAutomine", False)
    sender = make_sender(anvil, tmp_path, clock)
    tx_hash = transfer(sender, anvil, "t")
    journal = json.loads((tmp_path / "txjournal.json").read_text())
    assert [a["hash"] for a in journal["txs"][0]["attempts"]] == [tx_hash]  # journaled before sent

    anvil.rpc("anvil_dropAllTransactions")  # the node forgot it too (a restarted node)
    restarted = make_sender(anvil, tmp_path, clock)
    assert restarted.pending()[0]["hashes"] == [tx_hash]
    restarted.poll()  # rebroadcasts the same signed bytes
    mine(anvil)
    (outcome,) = restarted.poll()
    assert outcome.tx_hash == tx_hash
    assert transfer(restarted, anvil, "next")  # takes nonce 1
    assert restarted.pending()[0]["nonce"] == 1


def test_a_transaction_lost_in_a_reorg_is_rebroadcast_and_confirmed_again(anvil, tmp_path):
    sender = make_sender(anvil, tmp_path, confirmations=2)
    snapshot = anvil.rpc("evm_snapshot")
    tx_hash = transfer(sender, anvil, "t")  # mined at once, one confirmation
    assert sender.poll() == []
    anvil.rpc("evm_revert", snapshot)  # the block is gone, and the pool with it
    assert sender.poll() == []  # noticed: no receipt, unknown to the node: sent again
    mine(anvil, 2)
    (outcome,) = sender.poll()
    assert outcome.tx_hash == tx_hash and outcome.status == "confirmed"


def test_an_unreachable_node_journals_nothing(tmp_path):
    from rig.broker import free_port

    sender = TxSender(connect(f"http://127.0.0.1:{free_port()}", timeout=1), Account.create(),
                      tmp_path / "txjournal.json")
    with pytest.raises(ChainUnavailable):
        sender.submit("0x" + "11" * 20, b"", gas=21_000)
    assert sender.pending() == [] and not (tmp_path / "txjournal.json").exists()


def test_held_transactions_wait_for_settle_and_a_voided_nonce_is_given_back_or_filled(anvil, tmp_path):
    w3 = Web3(Web3.HTTPProvider(anvil.url))
    receiver = Account.create().address
    sender = make_sender(anvil, tmp_path)
    held = lambda tag, value: sender.submit(receiver, b"", value=value, gas=21_000, tag=tag, hold=True)  # noqa: E731
    a, b, c = held("a", 1), held("b", 2), held("c", 4)
    assert sender.poll() == [] and sender.held() == [a, b, c]
    for tx_hash in (a, b, c):  # signed and journaled, never shown to the network
        with pytest.raises(Exception):
            w3.eth.get_transaction(tx_hash)
    restarted = make_sender(anvil, tmp_path)  # the holds survive a restart
    assert restarted.held() == [a, b, c]
    restarted.settle(release=[b], void=[a, c])  # c is the top nonce: given back; a is filled
    assert restarted.held() == []
    outcomes: dict = {}
    deadline = time.monotonic() + 10
    while len(outcomes) < 2 and time.monotonic() < deadline:  # anvil mines each at once, reporting it a moment later
        outcomes.update({o.tag: o for o in restarted.poll()})
        time.sleep(0.02)
    assert set(outcomes) == {"void:a", "b"} and all(o.status == "confirmed" for o in outcomes.values())
    assert outcomes["b"].tx_hash == b and outcomes["b"].first_hash == b
    assert w3.eth.get_balance(receiver) == 2  # only the released transfer moved value
    assert w3.eth.get_transaction_count(restarted.address) == 2
    restarted.settle(release=[a, b, c], void=[])  # settling again is harmless
    assert transfer(restarted, anvil, "next") and w3.eth.get_transaction(restarted.pending()[0]["hashes"][0]).nonce == 2
