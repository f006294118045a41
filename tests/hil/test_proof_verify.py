"""`w3gate proof verify` proves what it prints (issue 15): every tampered field of a real proof
is caught with its reason, a missing expected gateway is an error unless --any-gateway, the
gateway's registration history is checked against the anchor's block and reported, and a
registry address without a contract is invalid, not "cannot tell".

The main proofs come from the real pipeline, once per module: emulated Pebbles (every firmware,
protobuf and G1 JSON) → mosquitto → `w3gate run` anchoring on a real anvil → `w3gate proof N
--json`. The registry-history cases need anchors a well-behaved gateway cannot make (a signature
not from its payload, an anchor after its removal): there a test gateway anchors by hand on a
registry of its own, on the same anvil.
"""
from __future__ import annotations

import base64
import copy
import hashlib
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner
from eth_account import Account
from web3 import Web3

from gateway.cli.proof import proof as proof_cli
from gateway.codec import pebble
from gateway.codec.record import received_ms
from gateway.proofs import merkle
from gateway.proofs.contract import artifact
from rig.broker import free_port, start_broker
from rig.chain import deploy_registry, start_anvil
from tests.support.gateway import chain_gateway, cli, cli_json, sim, w3gate_exe

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z


@dataclass
class Produced:
    anvil: object
    registry: str
    gateway: str  # the node key's address, checksummed
    proofs: list[dict]  # proof files of anchored readings, protobuf and G1 JSON among them


@pytest.fixture(scope="module")
def produced(tmp_path_factory):
    work = tmp_path_factory.mktemp("pipeline")
    anvil = start_anvil(work / "anvil")
    broker = start_broker(work / "broker")
    gw = None
    try:
        fleet = work / "fleet"
        sim(broker, fleet, "--count", "4", "--profile", "mixed", "--duration", "0.2")
        gw, registry, identity, _ = chain_gateway(work, broker, anvil, chain__batch_records=5,
                                                  chain__batch_age_s=1.0)
        cli("device", "import", str(fleet / "devices.json"), data_dir=gw.data_dir)
        gw.start()
        sent = sim(broker, fleet, "--messages", "3", "--time-scale", "300", "--qos", "1")["published"]["data"]
        gw.wait_for(lambda s: s["accepted"].get("data", 0) == sent and s["buffer"]["last_seq"] > 0
                    and s["buffer"]["anchored_upto"] >= s["buffer"]["last_seq"], timeout=60, what="all anchored")
        gw.stop()
        records = cli_json("records", "--limit", "0", data_dir=gw.data_dir)
        proofs = [cli_json("proof", str(r["seq"]), data_dir=gw.data_dir) for r in records if r["kind"] == "data"]
        yield Produced(anvil, registry, identity["address"], proofs)
    finally:
        if gw is not None and gw.proc is not None and gw.proc.poll() is None:
            gw.stop()
        broker.stop()
        anvil.stop()


@pytest.fixture
def good(produced) -> dict:
    """A fresh copy of a protobuf reading's proof, not the first leaf of its batch."""
    return copy.deepcopy(next(p for p in produced.proofs if p["record"]["wire"] == "protobuf" and p["index"] > 0))


def verify(produced_or_url, registry: str, proof: dict, *args: str, tmp: Path) -> tuple[int, str]:
    """`w3gate proof verify FILE` in process: (exit code, everything printed)."""
    url = produced_or_url if isinstance(produced_or_url, str) else produced_or_url.anvil.url
    file = tmp / "proof.json"
    file.write_text(json.dumps(proof))
    result = CliRunner().invoke(proof_cli, ["verify", str(file), "--rpc", url, "--registry", registry, *args],
                                catch_exceptions=False)
    return result.exit_code, result.output


def test_an_untouched_proof_is_valid_and_every_field_is_proven_or_listed_as_not(produced, tmp_path):
    for p in produced.proofs:
        code, out = verify(produced, produced.registry, p, tmp=tmp_path)
        assert code == 0 and out.startswith("valid: "), out
    assert {p["record"]["wire"] for p in produced.proofs} == {"protobuf", "json"}  # G1 signatures too
    p = produced.proofs[-1]
    code, out = verify(produced, produced.registry, p, "--json", tmp=tmp_path)
    verdict = json.loads(out)
    assert code == 0 and verdict["valid"] is True and verdict["reason"] == "valid"

    def paths(value, prefix=""):
        if isinstance(value, dict) and value:
            return {q for k, v in value.items() for q in paths(v, f"{prefix}.{k}" if prefix else k)}
        return {prefix}
    shown = paths(p)
    assert shown <= set(verdict["proven"]) | set(verdict["not_proven"])
    assert not set(verdict["proven"]) & set(verdict["not_proven"])
    assert set(verdict["not_proven"]) == {"record.seq", "record.device", "batch.first_seq", "batch.last_seq"}
    for key in ("record.device_did", "record.rx", "record.signature", "batch.sequence", "batch.count",
                "anchor.tx", "anchor.block", "gateway", "gateway_did", "chain_id", "registry"):
        assert key in verdict["proven"], key
    assert verdict["proven"]["gateway.registration"]["removed_in_block"] is None


def test_a_changed_imei_and_device_did_is_invalid(produced, good, tmp_path):
    good["record"]["device"] = "350000000000999"
    good["record"]["device_did"] = "did:io:0x" + "12" * 20
    code, out = verify(produced, produced.registry, good, tmp=tmp_path)
    assert code == 1 and out.startswith("INVALID (device_did_mismatch): device_did did:io:0x1212"), out


def test_a_changed_imei_alone_is_printed_as_not_proven(produced, good, tmp_path):
    good["record"]["device"] = "350000000000999"
    code, out = verify(produced, produced.registry, good, tmp=tmp_path)
    assert code == 0, out
    proven, _, not_proven = out.partition("not proven")
    assert "350000000000999" not in proven and "record.device" in not_proven and "350000000000999" in not_proven


@pytest.mark.parametrize("field, delta", [("sequence", 1), ("count", 1), ("first_ms", -1), ("last_ms", 1)])
def test_a_changed_batch_field_is_invalid(produced, good, tmp_path, field, delta):
    real = good["batch"][field]
    good["batch"][field] += delta
    code, out = verify(produced, produced.registry, good, tmp=tmp_path)
    assert code == 1 and out.startswith(f"INVALID (batch_mismatch): batch.{field} is {real + delta}, "
                                        f"the chain says {real}"), out


def test_a_changed_anchor_tx_is_invalid(produced, good, tmp_path):
    real = good["anchor"]["tx"]
    good["anchor"]["tx"] = "0x" + "ab" * 32
    code, out = verify(produced, produced.registry, good, tmp=tmp_path)
    assert code == 1 and out.startswith(f"INVALID (tx_mismatch): anchor.tx is 0x{'ab' * 32}, "
                                        f"the root was anchored by transaction {real.lower()}"), out


@pytest.mark.parametrize("delta", [1, -1])
def test_a_changed_anchor_block_is_invalid(produced, good, tmp_path, delta):
    real = good["anchor"]["block"]
    good["anchor"]["block"] += delta
    code, out = verify(produced, produced.registry, good, tmp=tmp_path)
    assert code == 1 and out.startswith(f"INVALID (block_mismatch): anchor.block is {real + delta}, "
                                        f"the root was anchored in block {real}"), out


@pytest.mark.parametrize("shift", [1.0, -1.0, 0.001])
def test_rx_is_compared_with_received_ms(produced, good, tmp_path, shift):
    good["record"]["rx"] += shift  # one second either way, or one millisecond
    code, out = verify(produced, produced.registry, good, tmp=tmp_path)
    assert code == 1 and out.startswith(f"INVALID (rx_mismatch): rx {good['record']['rx']!r} does not round to "
                                        f"received_ms {good['record']['received_ms']}"), out


def test_a_deleted_gateway_needs_an_expected_one_or_any_gateway(produced, good, tmp_path):
    del good["gateway"]
    code, out = verify(produced, produced.registry, good, tmp=tmp_path)
    assert code == 1 and out.startswith("INVALID (no_gateway): the file names no gateway and none is expected")
    assert produced.gateway.lower() in out  # says who did anchor it
    code, out = verify(produced, produced.registry, good, "--any-gateway", tmp=tmp_path)
    assert code == 0 and out.startswith("valid: "), out
    code, out = verify(produced, produced.registry, good, "--gateway", "did:io:" + produced.gateway.lower(),
                       tmp=tmp_path)
    assert code == 0, out
    code, out = verify(produced, produced.registry, good, "--gateway", Account.create().address, tmp=tmp_path)
    assert code == 1 and out.startswith("INVALID (wrong_gateway): anchored by " + produced.gateway.lower()), out


def test_a_changed_gateway_did_chain_or_registry_is_invalid(produced, good, tmp_path):
    for change, reason in [(lambda p: p.update(gateway_did="did:io:0x" + "34" * 20), "gateway_did_mismatch"),
                           (lambda p: p.update(chain_id=4690), "chain_mismatch"),
                           (lambda p: p.update(registry=Account.create().address), "registry_mismatch"),
                           (lambda p: p["record"].update(seq=p["record"]["seq"] + 1), "seq_mismatch"),
                           (lambda p: p["record"].update(kind="config"), "kind_mismatch")]:
        tampered = copy.deepcopy(good)
        change(tampered)
        code, out = verify(produced, produced.registry, tampered, tmp=tmp_path)
        assert code == 1 and out.startswith(f"INVALID ({reason}): "), (reason, out)


def test_a_registry_address_without_a_contract_is_invalid_not_unknown(produced, good, tmp_path):
    empty = Account.create().address
    code, out = verify(produced, empty, good, tmp=tmp_path)
    assert code == 1 and out.startswith(f"INVALID (no_registry): no ProofRegistry at {empty}"), out
    code, out = verify(f"http://127.0.0.1:{free_port()}", produced.registry, good, tmp=tmp_path)
    assert code == 3 and "cannot tell (chain_unreachable)" in out, out  # only when the chain does not answer


def test_the_record_id_is_printed_not_its_position(produced, good, tmp_path):
    seq, index = good["record"]["seq"], good["index"]
    assert seq != index
    file = tmp_path / "proof.json"
    file.write_text(json.dumps(good))
    done = subprocess.run([*w3gate_exe(), "proof", "verify", str(file), "--rpc", produced.anvil.url,
                           "--registry", produced.registry], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith(f"valid: record {seq} = leaf {index} of {good['batch']['count']} in batch "
                                  f"{good['batch']['sequence']}, anchored by {produced.gateway.lower()} "
                                  f"in block {good['anchor']['block']}"), done.stdout
    assert f"record {index} " not in done.stdout.splitlines()[0]


# -- a gateway anchoring by hand, on a registry of its own ---------------------------------------

class HandGateway:
    """The node key anchoring batches itself (what a gateway that lies, or whose registry state
    and events disagree, could put on chain), with proof files in w3gate-proof/1."""

    def __init__(self, anvil) -> None:
        self.anvil = anvil
        self.w3 = Web3(Web3.HTTPProvider(anvil.url))
        self.owner, self.key = Account.from_key(anvil.keys[0]), Account.from_key(anvil.keys[1])
        self.address = deploy_registry(anvil.url, anvil.keys[0], [self.key.address])
        self.registry = self.w3.eth.contract(address=self.address, abi=artifact()["abi"])
        self.seq = 0

    def send(self, account, call):
        tx = call.build_transaction({"from": account.address, "chainId": 31337,
                                     "nonce": self.w3.eth.get_transaction_count(account.address)})
        receipt = self.w3.eth.wait_for_transaction_receipt(
            self.w3.eth.send_raw_transaction(account.sign_transaction(tx).raw_transaction), timeout=10)
        assert receipt.status == 1
        return receipt

    def anchor(self, n: int, *, foreign_signature_at: int | None = None) -> list[dict]:
        """Anchor a batch of ``n`` readings; the leaf of ``foreign_signature_at`` commits to a
        signature that is not the one in its payload. Returns the proof of each record."""
        records = []
        for i in range(n):
            self.seq += 1
            signature = Web3.keccak(text=f"r{self.seq}") + Web3.keccak(text=f"s{self.seq}")
            payload = pebble.encode_binpackage(pebble.BinPackage(pebble.PackageType.DATA, b"reading %d" % self.seq,
                                                                 int(T0) + self.seq, signature))
            if i == foreign_signature_at:
                signature = Web3.keccak(text="forged r") + Web3.keccak(text="forged s")
            rx = T0 + self.seq * 0.0137
            device = Web3.to_checksum_address(Web3.keccak(text=f"device {i}")[:20])
            records.append({"seq": self.seq, "device": f"35{i:013d}", "device_did": "did:io:" + device.lower(),
                            "kind": "data", "wire": "protobuf", "rx": rx,
                            "payload": base64.b64encode(payload).decode(), "address": device,
                            "signature": signature.hex(), "payload_sha256": hashlib.sha256(payload).hexdigest(),
                            "received_ms": received_ms(rx)})
        leaves = [merkle.leaf(r["address"], bytes.fromhex(r["signature"]), bytes.fromhex(r["payload_sha256"]),
                              r["received_ms"]) for r in records]
        root = merkle.root(leaves)
        times = [r["received_ms"] for r in records]
        sequence = self.registry.functions.nextSequence(self.key.address).call()
        receipt = self.send(self.key, self.registry.functions.anchor(root, sequence, n, min(times), max(times)))
        batch = {"sequence": sequence, "count": n, "first_seq": records[0]["seq"], "last_seq": records[-1]["seq"],
                 "first_ms": min(times), "last_ms": max(times)}
        return [{"format": "w3gate-proof/1", "chain_id": 31337, "registry": self.address,
                 "gateway": self.key.address, "gateway_did": "did:io:" + self.key.address.lower(), "record": r,
                 "leaf": "0x" + leaves[i].hex(), "index": i, "path": ["0x" + h.hex() for h in merkle.proof(leaves, i)],
                 "root": "0x" + root.hex(), "batch": batch,
                 "anchor": {"tx": "0x" + bytes(receipt.transactionHash).hex(), "block": receipt.blockNumber}}
                for i, r in enumerate(records)]

    def remove(self) -> int:
        return self.send(self.owner, self.registry.functions.removeGateway(self.key.address)).blockNumber

    def reactivate_without_event(self) -> None:
        """Set the gateway's ``active`` flag in storage with no GatewayAdded event: a registry
        whose state and history disagree (the genuine contract never gets there by itself)."""
        slot = Web3.keccak(bytes(12) + bytes.fromhex(self.key.address[2:]) + (1).to_bytes(32, "big"))  # gateways
        value = int(self.anvil.rpc("eth_getStorageAt", self.address, "0x" + slot.hex().removeprefix("0x"), "latest"), 16)
        assert value & 0xFFFFFFFF == 1 and (value >> 32) & 0xFF == 0  # id 1, inactive
        self.anvil.rpc("anvil_setStorageAt", self.address, "0x" + slot.hex().removeprefix("0x"),
                       "0x" + (value | 1 << 32).to_bytes(32, "big").hex())
        assert self.registry.functions.isGateway(self.key.address).call()


@pytest.fixture(scope="module")
def by_hand(produced):
    return HandGateway(produced.anvil)


def test_a_signature_that_is_not_the_payloads_is_invalid(by_hand, tmp_path):
    proofs = by_hand.anchor(3, foreign_signature_at=1)
    assert verify(by_hand.anvil.url, by_hand.address, proofs[0], tmp=tmp_path)[0] == 0
    code, out = verify(by_hand.anvil.url, by_hand.address, proofs[1], tmp=tmp_path)
    assert code == 1 and out.startswith("INVALID (signature_mismatch): the payload carries signature "), out
    assert proofs[1]["record"]["signature"] in out


def test_a_gateway_removed_after_the_anchor_is_valid_and_says_so_removed_before_is_invalid(by_hand, tmp_path):
    before_removal = by_hand.anchor(2)[1]
    removed_in = by_hand.remove()
    code, out = verify(by_hand.anvil.url, by_hand.address, before_removal, tmp=tmp_path)
    assert code == 0, out
    anchored_in = before_removal["anchor"]["block"]
    assert out.splitlines()[1] == (f"note: gateway {by_hand.key.address.lower()} was removed from the registry in "
                                   f"block {removed_in}, after this anchor (block {anchored_in}): the anchor stays "
                                   "valid; it may not anchor since"), out
    assert "added in block " in out and f"removed in block {removed_in}" in out
    code, out = verify(by_hand.anvil.url, by_hand.address, before_removal, "--json", tmp=tmp_path)
    registration = json.loads(out)["proven"]["gateway.registration"]
    assert registration["removed_in_block"] == removed_in and registration["anchor_block"] == anchored_in

    by_hand.reactivate_without_event()
    after_removal = by_hand.anchor(2)[0]  # accepted by the contract: its storage says active
    code, out = verify(by_hand.anvil.url, by_hand.address, after_removal, tmp=tmp_path)
    assert code == 1 and out.startswith(f"INVALID (not_registered): gateway {by_hand.key.address.lower()} was "
                                        f"removed from the registry in block {removed_in}, before the anchor in "
                                        f"block {after_removal['anchor']['block']}"), out
