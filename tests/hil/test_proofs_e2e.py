"""Proofs end to end on real parts: emulated Pebbles → mosquitto → `w3gate run` with [chain]
enabled against a real anvil → every reading anchored, and `w3gate proof verify` proves one
against the chain alone, also after the gateway restarted."""
from __future__ import annotations

import json
import stat
import subprocess
from pathlib import Path

import pytest
from eth_account import Account
from web3 import Web3

from gateway.chain.keystore import keystore_path
from tests.hil.test_gateway_e2e import sim
from tests.support.gateway import GatewayProcess, cli, cli_json, w3gate_exe

ARTIFACT = json.loads((Path(__file__).resolve().parents[2] / "contracts" / "ProofRegistry.json").read_text())


def deploy_registry(anvil, gateway_address: str) -> str:
    w3 = Web3(Web3.HTTPProvider(anvil.url))
    owner = Account.from_key(anvil.keys[0])

    def send(call):
        tx = call.build_transaction({"from": owner.address, "chainId": 31337,
                                     "nonce": w3.eth.get_transaction_count(owner.address)})
        return w3.eth.wait_for_transaction_receipt(
            w3.eth.send_raw_transaction(owner.sign_transaction(tx).raw_transaction), timeout=10)

    address = send(w3.eth.contract(abi=ARTIFACT["abi"], bytecode=ARTIFACT["bytecode"]).constructor()).contractAddress
    send(w3.eth.contract(address=address, abi=ARTIFACT["abi"]).functions.addGateway(gateway_address))
    return address


@pytest.fixture
def fleet(tmp_path, mosquitto):
    fleet_dir = tmp_path / "fleet"
    sim(mosquitto, fleet_dir, "--count", "4", "--profile", "mixed", "--duration", "0.2")
    return fleet_dir


def test_readings_are_anchored_and_a_proof_verifies_against_the_chain(tmp_path, mosquitto, anvil, fleet):
    passphrase = tmp_path / "passphrase"
    passphrase.write_text("correct horse battery staple\n")
    key_file = tmp_path / "gateway.key"
    key_file.write_text(anvil.keys[1])
    registry = deploy_registry(anvil, Account.from_key(anvil.keys[1]).address)
    gw = GatewayProcess(tmp_path, mosquitto.port, chain__enabled=True, chain__network=anvil.url,
                        chain__registry=registry, chain__key_passphrase_file=str(passphrase),
                        chain__confirmations=1, chain__batch_records=10, chain__batch_age_s=1.0,
                        chain__poll_s=0.2)
    identity = cli_json("key", "import", str(key_file), "--passphrase-file", str(passphrase), data_dir=gw.data_dir)
    assert identity["address"] == Account.from_key(anvil.keys[1]).address
    assert stat.S_IMODE(keystore_path(gw.data_dir).stat().st_mode) == 0o600
    cli("device", "import", str(fleet / "devices.json"), data_dir=gw.data_dir)
    gw.start()
    try:
        sent = sim(mosquitto, fleet, "--messages", "3", "--time-scale", "300", "--qos", "1")["published"]["data"]
        gw.wait_for(lambda s: s["accepted"].get("data", 0) == sent, what="readings accepted")
        gw.stop()  # a restart in the middle: anchoring picks up where it was
        gw.start()
        sent += sim(mosquitto, fleet, "--messages", "2", "--time-scale", "300", "--qos", "1")["published"]["data"]
        status = gw.wait_for(lambda s: s["buffer"]["anchored_upto"] >= s["buffer"]["last_seq"] > 0
                             and s["accepted"].get("data", 0) == sent, timeout=60, what="everything anchored")
    finally:
        gw.stop()
    assert status["chain"]["stopped"] is None and status["chain"]["unanchored_batches"] == 0
    records = cli_json("records", "--limit", "0", data_dir=gw.data_dir)
    assert {r["state"] for r in records} == {"anchored"}
    reading = next(r for r in records if r["kind"] == "data")
    proof_file = tmp_path / "proof.json"
    proof_file.write_text(json.dumps(cli_json("proof", str(reading["seq"]), data_dir=gw.data_dir)))
    verified = subprocess.run([*w3gate_exe(), "proof", "verify", str(proof_file), "--rpc", anvil.url,
                               "--registry", registry, "--gateway", identity["did"]], capture_output=True, text=True)
    assert verified.returncode == 0 and verified.stdout.startswith("valid"), verified.stdout + verified.stderr
