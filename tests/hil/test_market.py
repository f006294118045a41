"""Device streams sold by contract, end to end on anvil (one block a second): the gateway's
operator deploys the market and vouches for a Pebble's owner, the owner lists it, buyers pay
with `w3gate market buy` and receive with `w3gate market receive` from their own mosquitto,
while emulated Pebbles publish a reading a second and the gateway is killed mid-window."""
from __future__ import annotations

import json
import subprocess
import threading
import time

import paho.mqtt.client as mqtt
import pytest
from eth_account import Account
from web3 import Web3
from web3.exceptions import ContractCustomError

from gateway.market import contract
from gateway.market.delivery import delivery_root
from gateway.market.seal import SealError, open_message, read_key_file
from rig.broker import start_broker
from rig.chain import start_anvil
from tests.support.gateway import chain_gateway, cli, cli_json, sim, w3gate_exe

PRICE = 1_000  # wei per block
BLOCKS = 8


@pytest.fixture
def chain(tmp_path):
    """anvil making a block every second, as a real chain does (the window is counted in blocks)."""
    node = start_anvil(tmp_path / "anvil", "--block-time", "1")
    yield node
    node.stop()


@pytest.fixture
def buyer_broker(tmp_path):
    broker = start_broker(tmp_path / "buyer-broker")
    yield broker
    broker.stop()


class Topic:
    """Everything published on a topic of the buyer's broker, as an eavesdropper there sees it."""

    def __init__(self, broker, topic: str) -> None:
        self.messages: list[bytes] = []
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        self.client.on_message = lambda c, u, m: self.messages.append(m.payload)
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.connect("127.0.0.1", broker.port)
        self.client.subscribe(topic, qos=1)
        self.client.loop_start()
        assert subscribed.wait(5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def market_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    result = subprocess.run([*w3gate_exe(), "market", *args], capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def test_a_buyer_receives_exactly_the_paid_window_sealed_to_them_and_a_proof_of_it_verifies(
        tmp_path, mosquitto, buyer_broker, chain, request):
    fleet = tmp_path / "fleet"
    sim(mosquitto, fleet, "--count", "2", "--duration", "0.2")
    devices = [d["imei"] for d in json.loads((fleet / "devices.json").read_text())]
    sold, other = devices
    gw, _, _, _ = chain_gateway(tmp_path, mosquitto, chain, chain__batch_records=5,
                                              chain__batch_age_s=1.0)
    cli("device", "import", str(fleet / "devices.json"), data_dir=gw.data_dir)
    owner, buyer, spy = (Account.from_key(k) for k in chain.keys[2:5])
    wallets = {}
    for name, account in (("owner", owner), ("buyer", buyer), ("spy", spy)):
        wallets[name] = tmp_path / f"{name}.key"
        wallets[name].write_text(account.key.hex())
    on = ["--rpc", chain.url]

    # the operator: a market trusting the registry's gateways, and this gateway's word on the owner
    deployed = cli_json("market", "deploy", "--challenge-blocks", "3", "--grace-blocks", "60", data_dir=gw.data_dir,
                        config=gw.config)
    market = deployed["market"]
    with gw.config.open("a") as f:
        f.write(f'[market]\ncontract = "{market}"\nallow_private_endpoints = true\n')
    cli("market", "vouch", sold, "--owner", owner.address, data_dir=gw.data_dir, config=gw.config)
    on += ["--market", market]
    market_cli("sell", sold, "--price", str(PRICE), "--wallet", str(wallets["owner"]), *on)
    gw.start()
    request.addfinalizer(lambda: gw.proc.poll() is None and gw.stop())  # also when an assertion fails
    pebbles = subprocess.Popen([*w3gate_exe(), "sim", "pebble", "--broker", mosquitto.url, "--fleet-dir", str(fleet),
                                "--period", "10", "--time-scale", "10", "--qos", "1", "--quiet", "--duration", "90"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    w3 = Web3(Web3.HTTPProvider(chain.url))
    chain_id = w3.eth.chain_id
    mine = Topic(buyer_broker, "buyer/#")
    try:
        gw.wait_for(lambda s: s["accepted"].get("data", 0) >= 4, what="readings before the purchase")

        # no payment, nothing: an unlisted stream cannot be bought, nor a listed one for less
        unlisted = subprocess.run([*w3gate_exe(), "market", "keygen", str(tmp_path / "buyer.x25519")],
                                  capture_output=True, text=True)
        assert unlisted.returncode == 0 and len(unlisted.stdout.strip()) == 66
        market_cli("keygen", str(tmp_path / "spy.x25519"))
        refused = subprocess.run([*w3gate_exe(), "market", "buy", other, "--blocks", "3", "--endpoint",
                                  f"mqtt://127.0.0.1:{buyer_broker.port}/buyer/x", "--key-file",
                                  str(tmp_path / "buyer.x25519"), "--wallet", str(wallets["buyer"]), *on],
                                 capture_output=True, text=True)
        assert refused.returncode == 1 and "not for sale" in refused.stderr
        underpaid = w3.eth.contract(address=market, abi=contract.abi()).functions.buy(sold, 3, bytes(32), "")
        with pytest.raises(ContractCustomError, match=Web3.keccak(text="WrongPayment(uint256,uint256)")[:4].hex()):
            underpaid.call({"from": buyer.address, "value": PRICE * 3 - 1})

        # two buyers, each with their own key and topic
        endpoint = f"mqtt://127.0.0.1:{buyer_broker.port}/buyer/one"
        bought = json.loads(market_cli("buy", sold, "--blocks", str(BLOCKS), "--endpoint", endpoint, "--key-file",
                                       str(tmp_path / "buyer.x25519"), "--wallet", str(wallets["buyer"]), "--json",
                                       *on).stdout)
        spy_bought = json.loads(market_cli("buy", sold, "--blocks", "2", "--endpoint",
                                           f"mqtt://127.0.0.1:{buyer_broker.port}/buyer/two", "--key-file",
                                           str(tmp_path / "spy.x25519"), "--wallet", str(wallets["spy"]), "--json",
                                           *on).stdout)
        assert bought["paid_wei"] == PRICE * BLOCKS
        receive = subprocess.Popen([*w3gate_exe(), "market", "receive", str(bought["purchase"]), "--key-file",
                                    str(tmp_path / "buyer.x25519"), "--endpoint", endpoint, "--json", *on],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # the gateway is killed mid-window: delivery resumes where its delivery log says
        deadline = time.monotonic() + 20
        while len(mine.messages) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        gw.kill()
        gw.start()
        gw.wait_for(lambda s: str(bought["purchase"]) in (s.get("market") or {}).get("purchases", {}),
                    what="the purchase in the gateway's status")
        shown = cli("status", data_dir=gw.data_dir, config=gw.config).stdout
        assert f"purchase {bought['purchase']}: {sold}" in shown and "market" in shown
        out, err = receive.communicate(timeout=90)
        assert receive.returncode == 0, err
        # once settled, the stream has stopped although the Pebbles go on publishing
        published, accepted = len(mine.messages), gw.status()["accepted"]["data"]
        gw.wait_for(lambda s: s["accepted"]["data"] >= accepted + 4, what="readings after the settlement")
        assert len(mine.messages) == published
    finally:
        mine.close()
        pebbles.terminate()
        pebbles.wait(10)

    lines = [json.loads(line) for line in out.splitlines()]
    summary, proofs = lines[-1], [line for line in lines[:-1] if "proof" in line]
    readings = [line for line in lines[:-1] if "leaf" in line]
    assert summary["state"] == "settled" and summary["refused"] == {}
    # the buyer checked every reading's Merkle proof against the market's registry themselves
    assert sorted(p["n"] for p in proofs) == [r["n"] for r in readings]
    assert {p["proof"] for p in proofs} == {"valid"} and summary["proven"] == len(readings)
    assert summary["received"] == summary["settled_delivered"] == len(readings) >= 3
    assert summary["delivery_root"] == "0x" + delivery_root([bytes.fromhex(r["leaf"][2:]) for r in readings]).hex()
    assert [r["n"] for r in readings] == list(range(len(readings)))
    assert {r["device"] for r in readings} == {sold}  # not the other Pebble

    # exactly the window: every reading of the sold Pebble received from the first second of the
    # purchase's block through the last second of its last block, and no other
    start, end = bought["blocks"]
    first_ms = w3.eth.get_block(start)["timestamp"] * 1000
    last_ms = w3.eth.get_block(end - 1)["timestamp"] * 1000 + 999
    gw.stop()
    records = cli_json("records", "--device", sold, "--limit", "0", data_dir=gw.data_dir)
    in_window = sorted(r["seq"] for r in records if first_ms <= round(r["rx"] * 1000) <= last_ms)
    assert sorted(r["seq"] for r in readings) == in_window
    assert any(round(r["rx"] * 1000) < first_ms for r in records)
    assert any(round(r["rx"] * 1000) > last_ms for r in records)

    # a second buyer opens nothing of the first's (all of it is on the first one's topic); their
    # own purchase was delivered to them and settled
    spy_key = read_key_file(tmp_path / "spy.x25519")
    first_topic = [m for m in mine.messages if json.loads(m)["purchase"] == bought["purchase"]]
    assert len({json.loads(m)["n"] for m in first_topic}) == len(readings)  # a resend keeps its counter
    for message in first_topic:
        with pytest.raises(SealError, match="not_for_this_key"):
            open_message(spy_key, message, chain_id=chain_id, market=market, purchase=bought["purchase"])
    assert contract.purchase(w3, market, spy_bought["purchase"])["state"] == "settled"

    # the operator's own proof of a reading, by its seq, is the one the buyer was sent
    reading = readings[len(readings) // 2]
    proof = cli_json("proof", str(reading["seq"]), data_dir=gw.data_dir)
    assert proof["leaf"] == reading["leaf"]
    assert proof["root"] == next(p["root"] for p in proofs if p["n"] == reading["n"])

    # after the challenge period the owner is paid
    market_cli("release", str(bought["purchase"]), "--wallet", str(wallets["owner"]), *on)
    paid = json.loads(market_cli("withdraw", "--wallet", str(wallets["owner"]), "--json", *on).stdout)
    assert paid["wei"] == PRICE * BLOCKS
