"""Proofs end to end on real parts: emulated Pebbles → mosquitto → `w3gate run` with [chain]
enabled against a real anvil → every reading anchored, and `w3gate proof verify` proves one
against the chain alone, also after the gateway restarted."""
from __future__ import annotations

import json
import stat
import subprocess
import time

import pytest
from eth_account import Account
from web3 import Web3

from gateway.layout import DataDir
from tests.support.gateway import sim
from tests.support.gateway import chain_gateway, cli, cli_json, post_event, w3gate_exe



@pytest.fixture
def fleet(tmp_path, mosquitto):
    fleet_dir = tmp_path / "fleet"
    sim(mosquitto, fleet_dir, "--count", "4", "--profile", "mixed", "--duration", "0.2")
    return fleet_dir


def test_readings_are_anchored_and_a_proof_verifies_against_the_chain(tmp_path, mosquitto, anvil, fleet):
    gw, registry, identity, _ = chain_gateway(tmp_path, mosquitto, anvil, chain__batch_records=10,
                                              chain__batch_age_s=1.0)
    assert identity["address"] == Account.from_key(anvil.keys[1]).address
    assert stat.S_IMODE(DataDir(gw.data_dir).node_key.stat().st_mode) == 0o600
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
    chain = status["chain"]
    assert chain["stopped"] is None and chain["paused"] is None and chain["unanchored_batches"] == 0
    assert chain["balance_wei"] > 0 and chain["last_anchor_age_s"] is not None and chain["unanchored_records"] == 0
    records = cli_json("records", "--limit", "0", data_dir=gw.data_dir)
    assert {r["state"] for r in records} == {"anchored"}
    reading = next(r for r in records if r["kind"] == "data")
    proof_file = tmp_path / "proof.json"
    proof_file.write_text(json.dumps(cli_json("proof", str(reading["seq"]), data_dir=gw.data_dir)))
    verified = subprocess.run([*w3gate_exe(), "proof", "verify", str(proof_file), "--rpc", anvil.url,
                               "--registry", registry, "--gateway", identity["did"]], capture_output=True, text=True)
    assert verified.returncode == 0 and verified.stdout.startswith("valid"), verified.stdout + verified.stderr


def test_a_gateway_removed_from_the_registry_is_shown_paused_and_resumes_when_added_back(tmp_path, mosquitto,
                                                                                          anvil, fleet):
    from web3 import Web3

    from gateway.proofs.contract import artifact

    gw, registry, identity, _ = chain_gateway(tmp_path, mosquitto, anvil, chain__batch_records=5,
                                              chain__batch_age_s=0.5)
    w3 = Web3(Web3.HTTPProvider(anvil.url))
    contract = w3.eth.contract(address=registry, abi=artifact()["abi"])
    owner = Account.from_key(anvil.keys[0])

    def as_owner(call) -> None:
        tx = call.build_transaction({"from": owner.address, "nonce": w3.eth.get_transaction_count(owner.address)})
        w3.eth.wait_for_transaction_receipt(w3.eth.send_raw_transaction(owner.sign_transaction(tx).raw_transaction))
    as_owner(contract.functions.removeGateway(identity["address"]))
    cli("device", "import", str(fleet / "devices.json"), data_dir=gw.data_dir)
    gw.start()
    try:
        sim(mosquitto, fleet, "--messages", "2", "--time-scale", "300", "--qos", "1")
        status = gw.wait_for(lambda s: (s["degraded"].get("anchoring") or "").startswith("paused: not_gateway"),
                             what="anchoring paused")
        nonce = w3.eth.get_transaction_count(identity["address"])
        text = cli("status", data_dir=gw.data_dir).stdout
        assert f"chain      PAUSED: not_gateway: {identity['address']} is not a registered gateway" in text, text
        time.sleep(2)
        assert w3.eth.get_transaction_count(identity["address"]) == nonce  # paused: nothing sent, no gas burnt
        as_owner(contract.functions.addGateway(identity["address"]))
        status = gw.wait_for(lambda s: s["buffer"]["anchored_upto"] >= s["buffer"]["last_seq"] > 0, timeout=60,
                             what="everything anchored once added back")
        assert "anchoring" not in status["degraded"] and status["chain"]["paused"] is None
    finally:
        gw.stop()


def test_applets_send_transactions_and_call_contracts_through_the_nodes_sender(tmp_path, mosquitto, anvil,
                                                                               built_applets):
    import urllib.request

    gw, registry, identity, passphrase = chain_gateway(tmp_path, mosquitto, anvil)
    gateway_address = identity["address"]
    minter_file = tmp_path / "minter.key"
    minter_file.write_text(anvil.keys[2])
    minter = cli_json("key", "import", str(minter_file), "--operator", "minter", "--passphrase-file", str(passphrase),
                      data_dir=gw.data_dir)["address"]
    project = tmp_path / "chain.toml"
    project.write_text(f'name = "chain"\noperators = ["minter"]\n[[applets]]\nname = "probe"\nwasm = "{built_applets / "abi-probe.wasm"}"\n'
                       '[[strategies]]\nevent = "TX"\napplet = "probe"\nhandler = "send_tx"\n'
                       '[[strategies]]\nevent = "CALL"\napplet = "probe"\nhandler = "call_contract"\n'
                       '[[strategies]]\nevent = "API"\napplet = "probe"\nhandler = "api_call"\n'
                       '[[strategies]]\nevent = "OPERATOR"\napplet = "probe"\nhandler = "send_tx_with_operator"\n')
    cli("project", "deploy", str(project), data_dir=gw.data_dir)
    token = cli_json("publisher", "add", "chain", "tester", data_dir=gw.data_dir)["token"]
    gw.start()
    try:
        url = gw.wait_for(lambda s: (s.get("api") or {}).get("url"), what="event API")["api"]["url"]

        def event(event_type: str, body: dict) -> dict:
            return post_event(url, token, "chain", event_type, body)

        receiver = Account.create().address
        sent = event("TX", {"to": receiver, "value": "12345", "data": ""})
        assert sent["code"] == 0, sent
        w3 = Web3(Web3.HTTPProvider(anvil.url))
        receipt = w3.eth.wait_for_transaction_receipt(sent["returnValue"], timeout=10)
        assert receipt["from"] == minter and w3.eth.get_balance(receiver) == 12345  # the project's operator
        node = event("OPERATOR", {"to": receiver, "value": "0", "data": "", "operatorName": "minter"})
        assert w3.eth.wait_for_transaction_receipt(node["returnValue"], timeout=10)["from"] == minter
        assert event("OPERATOR", {"to": receiver, "value": "0", "data": "", "operatorName": "treasury"})["code"] == -1
        # nextSequence(gateway) of the registry: 0, read by the applet with eth_call
        call = event("CALL", {"to": registry, "data": "0x" + Web3.keccak(text="nextSequence(address)")[:4].hex()
                              .removeprefix("0x") + "00" * 12 + gateway_address[2:].lower()})
        assert call["code"] == 0 and int(call["returnValue"], 16) == 0
        with urllib.request.urlopen(f"{url}/.well-known/did.json", timeout=10) as response:
            document = json.loads(response.read())
        did = "did:io:" + gateway_address.lower()
        assert document["id"] == did and document["verificationMethod"][0]["blockchainAccountId"] == \
            f"eip155:31337:{gateway_address}"
        wrong = event("TX", {"to": receiver, "value": "1", "data": "", "chainId": 4690})
        assert wrong["code"] == -1  # this node is on anvil's chain, not IoTeX testnet
        import base64
        body = base64.b64encode(json.dumps({"to": receiver, "value": "7", "data": ""}).encode()).decode()
        api = event("API", {"Method": "POST", "Url": "w3bstream://w3bstream.com/system/send_tx",
                            "Header": {}, "Body": body})
        assert api["code"] == 0 and api["returnValue"]["StatusCode"] == 200
        tx = json.loads(base64.b64decode(api["returnValue"]["Body"]))["transactionID"]
        w3.eth.wait_for_transaction_receipt(tx, timeout=10)
        assert w3.eth.get_balance(receiver) == 12345 + 7
    finally:
        gw.stop()


def test_applets_reach_the_chain_without_a_proof_registry(tmp_path, mosquitto, anvil, built_applets):
    gw, _, _, _ = chain_gateway(tmp_path, mosquitto, anvil, anchoring=False)
    project = tmp_path / "chain.toml"
    project.write_text(f'name = "chain"\n[[applets]]\nname = "probe"\nwasm = "{built_applets / "abi-probe.wasm"}"\n'
                       '[[strategies]]\nevent = "TX"\napplet = "probe"\nhandler = "send_tx"\n')
    cli("project", "deploy", str(project), data_dir=gw.data_dir)
    token = cli_json("publisher", "add", "chain", "tester", data_dir=gw.data_dir)["token"]
    gw.start()
    try:
        url = gw.wait_for(lambda s: (s.get("api") or {}).get("url"), what="event API")["api"]["url"]
        receiver = Account.create().address
        sent = post_event(url, token, "chain", "TX", {"to": receiver, "value": "5", "data": ""})
        assert sent["code"] == 0, sent
        w3 = Web3(Web3.HTTPProvider(anvil.url))
        w3.eth.wait_for_transaction_receipt(sent["returnValue"], timeout=10)
        assert w3.eth.get_balance(receiver) == 5
        status = gw.status()
        assert status["chain"] is None and status["degraded"] == {}  # nothing to anchor, nothing wrong
        assert "no proof registry: records are not anchored" in gw.log_text()
    finally:
        gw.stop()


def test_chain_monitors_deliver_heights_and_contract_logs_to_applets(tmp_path, mosquitto, anvil):
    from tests.support.wat import assemble

    w3 = Web3(Web3.HTTPProvider(anvil.url))
    gw, registry, identity, _ = chain_gateway(tmp_path, mosquitto, anvil)
    start = w3.eth.block_number
    assemble("probe", tmp_path)
    gateway_added = "0x" + Web3.keccak(text="GatewayAdded(address,uint32)").hex().removeprefix("0x")
    project = tmp_path / "watch.toml"
    project.write_text(f'name = "watch"\n[[applets]]\nname = "probe"\nwasm = "probe.wasm"\n'
                       '[[strategies]]\nevent = "DEFAULT"\napplet = "probe"\nhandler = "start"\n'
                       f'[[monitors]]\nkind = "chain_height"\nheight = {start + 3}\nevent = "HEIGHT"\n'
                       f'[[monitors]]\nkind = "contract_log"\naddress = "{registry}"\nblock_start = 0\n'
                       f'event = "REGISTRY_LOG"\n')
    cli("project", "deploy", str(project), data_dir=gw.data_dir)
    gw.start()
    try:
        gw.wait_for(lambda s: s["applets"]["monitor_events"] >= 2, what="the deploy-time logs")  # ownership, gateway
        for _ in range(3):
            anvil.rpc("evm_mine")
        gw.wait_for(lambda s: s["applets"]["monitor_events"] >= 3, what="the height")
    finally:
        gw.stop()
    logs = [json.loads(e["msg"]) for e in cli_json("applet", "logs", "watch", "--limit", "0", data_dir=gw.data_dir)
            if e["level"] == "info"]
    assert {"HeaderNumber": start + 3} in logs
    gateway_logs = [entry for entry in logs if entry.get("topics", [None])[0] == gateway_added]
    assert len(gateway_logs) == 1 and gateway_logs[0]["address"] == registry
    assert gateway_logs[0]["blockNumber"].startswith("0x") and gateway_logs[0]["removed"] is False
