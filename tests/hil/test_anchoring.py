"""Records anchored on a real chain (anvil) by the batcher, and proven against the chain alone:
batches by count and age, exactly once across crashes, outages and reorgs."""
from __future__ import annotations

import base64
import copy
import json
import time
from pathlib import Path

import pytest
from eth_account import Account
from web3 import Web3

from gateway.buffer.store import RecordStore, StoreConfig
from gateway.chain.sender import SenderConfig, TxSender, connect
from gateway.codec import pebble
from gateway.proofs.anchorer import ANCHORED_TOPIC, AnchorConfig, Anchorer
from gateway.proofs.contract import artifact
from gateway.proofs.verify import anchor_of, check, verify_proof
from rig.broker import free_port

ARTIFACT = artifact()  # as the gateway ships it
T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z
DEVICES = [Web3.to_checksum_address(Web3.keccak(text=f"device {i}")[:20]) for i in range(5)]


def make_docs(n: int, start: int = 0, rx0: float = T0) -> list[dict]:
    """Record docs as the buffer holds them (protobuf BinPackage payloads, random-looking
    signatures: the anchorer commits to the evidence, it does not re-check it)."""
    docs = []
    for i in range(start, start + n):
        sig = Web3.keccak(text=f"r{i}") + Web3.keccak(text=f"s{i}")
        payload = pebble.encode_binpackage(pebble.BinPackage(pebble.PackageType.DATA, b"reading %d" % i,
                                                             int(rx0) + i, sig))
        docs.append({"rx": rx0 + i * 0.0137, "device": f"35{i % 5:013d}", "address": DEVICES[i % 5],
                     "kind": "data", "wire": "protobuf", "ts": int(rx0) + i, "digest": "00" * 32,
                     "trust": "secure-element", "payload": base64.b64encode(payload).decode()})
    return docs


class Rig:
    """A deployed registry, a store, and anchorers built (and rebuilt, as after a crash) over
    the same data directory."""

    def __init__(self, anvil, tmp_path: Path, confirmations: int = 2, **config) -> None:
        self.anvil, self.dir = anvil, tmp_path
        self.w3 = Web3(Web3.HTTPProvider(anvil.url))
        owner = Account.from_key(anvil.keys[0])
        self.gateway = Account.from_key(anvil.keys[1])
        factory = self.w3.eth.contract(abi=ARTIFACT["abi"], bytecode=ARTIFACT["bytecode"])
        receipt = self._send(owner, factory.constructor())
        self.registry = self.w3.eth.contract(address=receipt.contractAddress, abi=ARTIFACT["abi"])
        self._send(owner, self.registry.functions.addGateway(self.gateway.address))
        self.store = RecordStore(tmp_path / "records", StoreConfig(segment_records=500))
        self.confirmations = confirmations
        self.config = AnchorConfig(**{"batch_size": 1000, "max_age_s": 5.0, **config})
        self.now = T0

    def _send(self, account, call):
        tx = call.build_transaction({"from": account.address, "chainId": 31337,
                                     "nonce": self.w3.eth.get_transaction_count(account.address)})
        h = self.w3.eth.send_raw_transaction(account.sign_transaction(tx).raw_transaction)
        return self.w3.eth.wait_for_transaction_receipt(h, timeout=10)

    def anchorer(self, url: str | None = None) -> Anchorer:
        sender = TxSender(connect(url or self.anvil.url, timeout=2), self.gateway, self.dir / "txjournal.json",
                          SenderConfig(confirmations=self.confirmations, resubmit_after_s=3600),
                          clock=lambda: self.now)
        return Anchorer(self.store, sender, self.registry.address, self.dir / "proofs", lambda d: d["address"],
                        self.config, clock=lambda: self.now)

    def drive(self, anchorer: Anchorer, rounds: int = 40, *, mine: bool = True) -> None:
        """Step and mine until every stored record is anchored (or ``rounds`` run out)."""
        for _ in range(rounds):
            anchorer.step()
            if self.store.stats()["anchored_upto"] == self.store.stats()["last_seq"]:
                return
            if mine:
                self.anvil.rpc("evm_mine")
            self.now += 1

    def settled_events(self, expected: int, timeout: float = 5.0) -> list:
        """The Anchored events once their count is ``expected`` (or the last answer at timeout).
        Right after evm_snapshot/evm_mine, anvil 1.7 now and then answers the same query with
        the event and then without it; asking again settles it."""
        deadline = time.monotonic() + timeout
        while True:
            events = self.anchored_events()
            if len(events) == expected or time.monotonic() > deadline:
                return events
            time.sleep(0.05)

    def anchored_events(self) -> list:
        return self.w3.eth.get_logs({"address": self.registry.address, "fromBlock": 0, "toBlock": "latest",
                                     "topics": [ANCHORED_TOPIC]})

    def assert_exactly_once(self, anchorer: Anchorer) -> None:
        """Every record in exactly one batch, batches 0..n-1 each anchored by exactly one event."""
        batches = anchorer.batches
        assert [b.sequence for b in batches] == list(range(len(batches)))
        assert [b.first for b in batches] == [1] + [b.last + 1 for b in batches[:-1]]
        assert batches[-1].last == self.store.stats()["last_seq"]
        assert all(b.status == "anchored" for b in batches)
        events = self.settled_events(len(batches))
        roots = ["0x" + bytes(e["topics"][2]).hex() for e in events]
        assert roots == [b.root for b in batches]  # one each, in order
        assert self.registry.functions.nextSequence(self.gateway.address).call() == len(batches)
        assert self.store.stats()["anchored_upto"] == self.store.stats()["last_seq"]


@pytest.fixture
def rig(anvil, tmp_path):
    r = Rig(anvil, tmp_path)
    yield r
    r.store.close()


def test_2500_records_go_on_chain_in_three_batches_and_every_record_proves(rig, anvil):
    rig.store.append(make_docs(2500))
    anchorer = rig.anchorer()
    started = time.perf_counter()
    anchorer.step()
    assert [b.count for b in anchorer.batches] == [1000, 1000]  # the last 500 wait for their age
    rig.now += 5
    rig.drive(anchorer)
    elapsed = time.perf_counter() - started
    assert [b.count for b in anchorer.batches] == [1000, 1000, 500]
    rig.assert_exactly_once(anchorer)

    gas = [rig.w3.eth.get_transaction_receipt(b.tx).gasUsed for b in anchorer.batches]
    print(f"\nanchor gas {gas}: {sum(gas) / 2500:.1f} gas per record; 2,500 records anchored in "
          f"{elapsed:.2f} s ({2500 / elapsed:.0f} records/s, {rig.confirmations} confirmations, automine)")
    assert max(g / b.count for g, b in zip(gas[:2], anchorer.batches)) <= 100

    anchors = {b.root: anchor_of(anvil.url, rig.registry.address, bytes.fromhex(b.root[2:]))
               for b in anchorer.batches}
    for seq in range(1, 2501):
        proof = anchorer.proof_for(seq)
        verdict = check(proof, anchors[proof["root"]])
        assert verdict.ok, (seq, verdict)
    # the whole way through JSON and a real eth_call, as `w3gate proof verify` does it
    proof = json.loads(json.dumps(anchorer.proof_for(1717)))
    verdict = verify_proof(proof, anvil.url, rig.registry.address)
    assert verdict.ok and verdict.anchor.count == 1000 and verdict.anchor.sequence == 1
    assert proof["anchor"]["tx"] == anchorer.batches[1].tx
    assert proof["gateway_did"] == "did:io:" + rig.gateway.address.lower()


def test_a_tampered_record_or_proof_fails(rig, anvil):
    rig.store.append(make_docs(300))
    anchorer = rig.anchorer()
    rig.now += 5
    rig.drive(anchorer)
    good = anchorer.proof_for(123)
    assert verify_proof(good, anvil.url, rig.registry.address).ok

    def tampered(change) -> str:
        proof = copy.deepcopy(good)
        change(proof)
        return verify_proof(proof, anvil.url, rig.registry.address).reason

    payload = bytearray(base64.b64decode(good["record"]["payload"]))
    payload[5] ^= 1
    forged = base64.b64encode(bytes(payload)).decode()
    assert tampered(lambda p: p["record"].update(payload=forged)) == "payload_mismatch"
    assert tampered(lambda p: (p["record"].update(payload=forged), p["record"].pop("payload_sha256"),
                               p.pop("leaf"))) == "bad_path"
    assert tampered(lambda p: p["record"].update(received_ms=p["record"]["received_ms"] + 1)) == "leaf_mismatch"
    assert tampered(lambda p: (p["record"].update(address=DEVICES[0] if p["record"]["address"] != DEVICES[0]
                                                  else DEVICES[1]), p.pop("leaf"))) == "bad_path"
    assert tampered(lambda p: p.update(index=p["index"] + 1)) == "bad_path"
    assert tampered(lambda p: p["path"].reverse()) == "bad_path"
    assert tampered(lambda p: p.update(root="0x" + "11" * 32)) == "not_anchored"
    assert tampered(lambda p: p.update(gateway=DEVICES[0])) == "wrong_gateway"
    assert tampered(lambda p: p.update(format="other")) == "bad_format"


@pytest.mark.parametrize("crash", ["after_seal", "after_submit", "after_submit_node_forgot", "tx_journal_lost"])
def test_a_crash_between_submit_and_confirm_neither_duplicates_nor_skips(rig, anvil, crash):
    rig.store.append(make_docs(2500))
    anvil.rpc("evm_setAutomine", False)
    first = rig.anchorer()
    if crash == "after_seal":
        first.seal()
    else:
        first.step()  # sealed 2 batches and submitted both; nothing mined
        assert len(first.sender.pending()) == 2
    if crash == "after_submit_node_forgot":
        anvil.rpc("anvil_dropAllTransactions")  # crashed before the broadcast reached the node
    if crash == "tx_journal_lost":
        (rig.dir / "txjournal.json").unlink()  # the restarted gateway sends the batches again
    del first  # killed: nothing of it is used again

    anvil.rpc("evm_setAutomine", True)
    restarted = rig.anchorer()
    rig.now += 5
    rig.drive(restarted)
    rig.assert_exactly_once(restarted)
    for seq in (1, 1000, 1001, 2500):
        assert verify_proof(restarted.proof_for(seq), anvil.url, rig.registry.address).ok


def test_a_backlog_built_while_the_chain_is_down_drains_in_order(rig, anvil):
    anchorer = rig.anchorer()
    rig.store.append(make_docs(1000))
    rig.drive(anchorer)
    assert len(anchorer.batches) == 1

    live = anchorer.w3.provider.endpoint_uri
    anchorer.w3.provider.endpoint_uri = f"http://127.0.0.1:{free_port()}"  # the chain goes away
    for k in range(4):
        rig.store.append(make_docs(1000, start=1000 * (k + 1)))
        report = anchorer.step()
        assert report["chain"] == "down"
        rig.now += 60
    assert [b.status for b in anchorer.batches] == ["anchored"] + ["sealed"] * 4  # sealed offline
    assert rig.store.stats()["anchored_upto"] == 1000

    anchorer.w3.provider.endpoint_uri = live  # and comes back
    rig.drive(anchorer)
    rig.assert_exactly_once(anchorer)
    assert [b.sequence for b in anchorer.batches] == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("depth", [1, 2])
def test_an_anchor_lost_in_a_reorg_is_anchored_again(anvil, tmp_path, depth):
    rig = Rig(anvil, tmp_path, confirmations=3)
    rig.store.append(make_docs(1000))
    anchorer = rig.anchorer()
    snapshot = anvil.rpc("evm_snapshot")
    anchorer.step()  # submitted and mined at once (automine): 1 confirmation
    for _ in range(depth - 1):
        anvil.rpc("evm_mine")
        anchorer.step()
    assert len(rig.settled_events(1)) == 1
    assert anchorer.batches[0].status == "sealed"  # not deep enough yet
    anvil.rpc("evm_revert", snapshot)  # the blocks holding the anchor are gone
    assert rig.settled_events(0) == []
    rig.drive(anchorer)
    rig.assert_exactly_once(anchorer)
    rig.store.close()


def test_the_proof_cli_prints_a_proof_and_verifies_it_against_the_chain(rig, anvil, tmp_path):
    from click.testing import CliRunner

    from gateway.cli.proof import proof

    rig.store.append(make_docs(40))
    anchorer = rig.anchorer()
    rig.now += 5
    rig.drive(anchorer)

    def run(*args):
        return CliRunner().invoke(proof, list(args), catch_exceptions=False)

    text = run("17", "--data-dir", str(tmp_path))  # `w3gate proof 17`
    assert text.exit_code == 0, text.output
    assert anchorer.batches[0].root in text.output and anchorer.batches[0].tx in text.output

    as_json = run("17", "--json", "--data-dir", str(tmp_path))
    file = tmp_path / "proof-17.json"
    file.write_text(as_json.output)
    assert json.loads(as_json.output)["record"]["seq"] == 17

    valid = run("verify", str(file), "--rpc", anvil.url, "--registry", rig.registry.address)
    assert valid.exit_code == 0 and valid.output.startswith("valid")
    did = "did:io:" + rig.gateway.address.lower()
    assert run("verify", str(file), "--rpc", anvil.url, "--registry", rig.registry.address,
               "--gateway", did).exit_code == 0

    forged = json.loads(file.read_text())
    forged["record"]["received_ms"] += 1000
    file.write_text(json.dumps(forged))
    invalid = run("verify", str(file), "--rpc", anvil.url, "--registry", rig.registry.address)
    assert invalid.exit_code == 1 and "INVALID (leaf_mismatch)" in invalid.output

    down = run("verify", str(file), "--rpc", f"http://127.0.0.1:{free_port()}", "--registry", rig.registry.address)
    assert down.exit_code == 3

    assert run("99999", "--data-dir", str(tmp_path)).exit_code != 0


def test_a_backlog_is_anchored_in_fewer_larger_batches_as_it_grows(anvil, tmp_path):
    rig = Rig(anvil, tmp_path, confirmations=1, batch_size=100, batch_max=1000, max_inflight=2)
    rig.store.append(make_docs(3000))
    anchorer = rig.anchorer()
    report = anchorer.step()
    assert report["sealed"] == 2 and [b.count for b in anchorer.batches] == [1000, 1000]  # 3000 / 2, capped
    rig.drive(anchorer)
    rig.assert_exactly_once(anchorer)
    rest = [b.count for b in anchorer.batches[2:]]  # shared by the slots free when it was sealed: 1 or 2
    assert sum(rest) == 1000 and rest in ([1000], [500, 500]), rest
    sealed = len(anchorer.batches)
    rig.store.append(make_docs(150, start=3000))
    rig.now = T0 + 100  # every record has waited longer than max_age_s
    rig.drive(anchorer)
    assert [b.count for b in anchorer.batches][sealed:] == [100, 50]  # no backlog: batch_size (50 once old)
    rig.store.close()


def test_a_removed_gateway_pauses_without_spending_and_resumes_when_added_back(rig, anvil):
    owner = Account.from_key(anvil.keys[0])
    rig._send(owner, rig.registry.functions.removeGateway(rig.gateway.address))
    rig.store.append(make_docs(1000))
    anchorer = rig.anchorer()
    before = (rig.w3.eth.get_balance(rig.gateway.address), rig.w3.eth.get_transaction_count(rig.gateway.address))
    for _ in range(3):
        report = anchorer.step()
        assert report["paused"].startswith(f"not_gateway: {rig.gateway.address} is not a registered gateway")
        assert report["submitted"] == 0
    assert anchorer.paused == report["paused"]
    after = (rig.w3.eth.get_balance(rig.gateway.address), rig.w3.eth.get_transaction_count(rig.gateway.address))
    assert after == before  # no reverting anchor, no gas burnt
    rig._send(owner, rig.registry.functions.addGateway(rig.gateway.address))
    report = anchorer.step()
    assert report["paused"] is None and report["submitted"] == 1 and anchorer.paused is None
    rig.drive(anchorer)
    rig.assert_exactly_once(anchorer)


def test_an_unfunded_node_key_pauses_and_resumes_once_funded(rig, anvil):
    anvil.rpc("anvil_setBalance", rig.gateway.address, "0x0")
    rig.store.append(make_docs(1000))
    anchorer = rig.anchorer()
    report = anchorer.step()
    assert report["paused"].startswith(f"out_of_funds: the node key {rig.gateway.address} holds 0.000000")
    assert report["submitted"] == 0 and rig.w3.eth.get_transaction_count(rig.gateway.address) == 0
    anvil.rpc("anvil_setBalance", rig.gateway.address, hex(10**18))
    rig.drive(anchorer)
    rig.assert_exactly_once(anchorer)
    assert anchorer.balance_wei < 10**18 and anchorer.paused is None


def test_a_registry_address_with_no_contract_pauses_with_that_reason(rig, anvil, tmp_path):
    rig.store.append(make_docs(10))
    rig.now += 10
    sender = TxSender(connect(anvil.url), rig.gateway, tmp_path / "other-journal.json", SenderConfig(confirmations=1))
    nowhere = Account.create().address
    anchorer = Anchorer(rig.store, sender, nowhere, tmp_path / "other-proofs", lambda d: d["address"],
                        AnchorConfig(batch_size=10), clock=lambda: rig.now)
    report = anchorer.step()
    assert report["paused"] == (f"no_registry: there is no contract at {nowhere} on this chain "
                                "(`w3gate chain deploy-registry` makes one)")
    assert anchorer.batches == [] and rig.w3.eth.get_transaction_count(rig.gateway.address) == 0


def test_an_anchor_waiting_for_confirmations_on_a_chain_that_makes_no_blocks_is_reported(rig, anvil):
    rig.store.append(make_docs(1000))
    anchorer = rig.anchorer()  # 2 confirmations; anvil mines only when a transaction arrives
    anchorer.step()  # sealed and sent: mined at once (anvil may report it a moment later), 1 confirmation
    while rig.w3.eth.get_transaction_count(rig.gateway.address) == 0:
        time.sleep(0.01)
    rig.now += 20
    anchorer.step()  # sees the block that holds it
    head, since = anchorer.head, anchorer.head_since
    for _ in range(3):
        rig.now += 20
        report = anchorer.step()
        assert report["confirming"] == 0 and report["anchored"] == 0
    assert (anchorer.head, anchorer.head_since) == (head, since)  # what status turns into "no block for 60 s"
    anvil.rpc("evm_mine")
    assert anchorer.step()["anchored"] == 1 and anchorer.head == head + 1


def test_an_rpc_serving_another_chain_pauses_anchoring_with_that_reason(rig, anvil, tmp_path):
    from rig.chain import start_anvil

    rig.store.append(make_docs(1000))
    rig.drive(rig.anchorer())
    rig.store.append(make_docs(1000, start=1000))
    other = start_anvil(tmp_path / "other", "--chain-id", "999")
    try:
        moved = rig.anchorer(other.url)  # a restart with [chain] network pointing at the wrong chain
        report = moved.step()
        assert report["paused"].startswith("journal_mismatch:") and "is chain 999" in report["paused"]
        assert report["submitted"] == 0 and moved.paused == report["paused"]
    finally:
        other.stop()
