"""Contract → device, on real parts: a Lock contract on anvil emits Unlocked(device); a project's
chain monitor hands the log to its applet, which asks the gateway to command that device
(POST /system/device_command); the gateway sends an authenticated COMMAND frame down the serial
line to the real firmware on an emulated board (the MicroPython unix port behind a socat pty),
which drives its relay and acknowledges. A project not allowed to command the board is refused,
and a forged COMMAND written straight onto the board's line is ignored by the firmware."""
from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from eth_account import Account
from web3 import Web3

from device_fw import frame as wire
from gateway.legacy.pairing import BOARD_MAIN, firmware_files
from gateway.legacy.registry import LegacyRegistry, new_legacy_device
from hardware.board import EmulatedBoard
from tests.support.gateway import chain_gateway, cli, cli_json
from tests.support.wat import assemble

pytestmark = pytest.mark.skipif(shutil.which("socat") is None, reason="socat is installed by ./dev.sh setup")

ROOT = Path(__file__).resolve().parents[2]
LOCK_SOL = ROOT / "tests" / "data" / "contracts" / "Lock.sol"
UNLOCKED = "0x" + Web3.keccak(text="Unlocked(bytes32)").hex().removeprefix("0x")
LOCKED = "0x" + Web3.keccak(text="Locked(bytes32)").hex().removeprefix("0x")
COMPILE = """
const solc = require("solc"), fs = require("fs");
const input = {language: "Solidity", sources: {"Lock.sol": {content: fs.readFileSync(process.argv[1], "utf8")}},
               settings: {evmVersion: "cancun", outputSelection: {"*": {"*": ["abi", "evm.bytecode.object"]}}}};
const out = JSON.parse(solc.compile(JSON.stringify(input)));
if ((out.errors || []).some((e) => e.severity === "error")) { console.error(JSON.stringify(out.errors)); process.exit(1); }
const c = out.contracts["Lock.sol"].Lock;
process.stdout.write(JSON.stringify({abi: c.abi, bytecode: "0x" + c.evm.bytecode.object}));
"""


def deploy_lock(w3: Web3, sender: str):
    """tests/data/contracts/Lock.sol, compiled with solcjs now and deployed by ``sender``."""
    compiled = subprocess.run(["node", "-e", COMPILE, str(LOCK_SOL)], cwd=ROOT, capture_output=True, text=True,
                              timeout=60, check=True)
    artifact = json.loads(compiled.stdout)
    tx = w3.eth.contract(abi=artifact["abi"], bytecode=artifact["bytecode"]).constructor().transact({"from": sender})
    address = w3.eth.wait_for_transaction_receipt(tx, timeout=10).contractAddress
    return w3.eth.contract(address=address, abi=artifact["abi"])


def flash(board: EmulatedBoard, device) -> None:
    """What `w3gate device pair` leaves on a board: the firmware, /main.py, its identity."""
    for local, remote in firmware_files():
        target = board.directory / remote
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(local, target)
    (board.directory / "main.py").write_text(BOARD_MAIN)
    (board.directory / "device.json").write_text(json.dumps(
        {"id": device.device_id, "key": device.key, "name": device.name, "link": "stdio", "period_ms": 200,
         "sensors": ["sim"]}))


def project(tmp_path: Path, name: str, *, relay: int, topic: str, lock: str, command_devices: list[str]) -> Path:
    """A project whose applet commands {"relay": relay} to the device each ``topic`` log of ``lock`` names."""
    path = tmp_path / f"{name}.toml"
    path.write_text(f'name = "{name}"\ncommand_devices = {json.dumps(command_devices)}\n'
                    f'[env]\nRELAY = "{relay}"\n'
                    '[[applets]]\nname = "lock"\nwasm = "device_command.wasm"\n'
                    '[[strategies]]\nevent = "LOCK_LOG"\napplet = "lock"\nhandler = "start"\n'
                    f'[[monitors]]\nkind = "contract_log"\naddress = "{lock}"\ntopics = ["{topic}"]\n'
                    'block_start = 0\nevent = "LOCK_LOG"\n')
    return path


def answers(gw, name: str) -> list[dict]:
    """The system API's answers the project's applet logged, their bodies decoded."""
    logs = cli_json("applet", "logs", name, "--limit", "0", data_dir=gw.data_dir)
    replies = [json.loads(entry["msg"]) for entry in logs if entry["level"] == "info"]
    return [{"status": r["StatusCode"], **json.loads(base64.b64decode(r["Body"]))} for r in replies]


def wait(predicate, what: str, timeout: float = 15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def legacy(status: dict) -> dict:
    return status.get("legacy") or {}


@pytest.fixture
def bench(tmp_path, mosquitto, anvil):
    w3 = Web3(Web3.HTTPProvider(anvil.url))
    lock = deploy_lock(w3, Account.from_key(anvil.keys[2]).address)
    board = EmulatedBoard(tmp_path / "board", "door", port_dir=tmp_path / "serial" / "by-id")
    gw, _, _, _ = chain_gateway(tmp_path, mosquitto, anvil, anchoring=False,
                                serial__ports=[str(board.port_dir / "usb-*")], serial__rescan_s=0.2)
    door = new_legacy_device("door", transport="serial", address=str(board.port))
    LegacyRegistry(gw.data_dir / "legacy_devices.json").add(door)
    flash(board, door)
    assemble("device_command", tmp_path)
    cli("project", "deploy", str(project(tmp_path, "opener", relay=1, topic=UNLOCKED, lock=lock.address,
                                         command_devices=["door"])), data_dir=gw.data_dir)
    cli("project", "deploy", str(project(tmp_path, "intruder", relay=0, topic=LOCKED, lock=lock.address,
                                         command_devices=[])), data_dir=gw.data_dir)
    gw.start()
    board.boot()
    try:
        gw.wait_for(lambda s: s["accepted"].get("legacy_data", 0) >= 1, what="the board's readings")
        yield gw, board, door, lock
    finally:
        gw.stop()
        board.unplug()


def relay(board: EmulatedBoard) -> str | None:
    """The relay's level as the firmware drove it (the unix port's stand-in for the pin)."""
    path = board.directory / "relay.out"
    return path.read_text() if path.exists() else None


def test_a_contract_log_commands_the_board_only_through_a_project_allowed_to(bench):
    gw, board, door, lock = bench
    device = bytes.fromhex(door.device_id) + bytes(24)  # the contract names it as bytes32
    assert relay(board) is None

    lock.functions.unlock(device).transact({"from": lock.w3.eth.accounts[2]})
    wait(lambda: relay(board) == "1", "the firmware to drive its relay")
    status = gw.wait_for(lambda s: legacy(s).get("command_acks", 0) >= 1, what="the command's ack recorded")
    assert (legacy(status)["commands"], legacy(status)["command_errors"]) == (1, 0)
    (answer,) = answers(gw, "opener")
    assert answer["status"] == 200 and answer["state"] == "pending" and answer["device"] == door.device_id
    (sensor,) = cli_json("device", "sensors", data_dir=gw.data_dir)  # the device's own record of it
    assert sensor["command"]["seq"] == answer["seq"] == sensor["command_ack"]["seq"]
    assert sensor["command"]["project"] == "opener"
    assert sensor["command_ack"]["result"] == {"relay": 1, "command_seq": answer["seq"]}
    records = cli_json("records", "--limit", "0", data_dir=gw.data_dir)
    acks = [r for r in records if r["kind"] == "command_ack"]
    assert len(acks) == 1 and acks[0]["trust"] == "gateway-attested" and acks[0]["values"]["relay"] == 1

    # a project whose file lists no device asks to lock the door: refused, and the board untouched
    lock.functions.lock(device).transact({"from": lock.w3.eth.accounts[2]})
    (refused,) = wait(lambda: answers(gw, "intruder"), "the intruder's answer")
    assert refused["status"] == 403 and refused["reason"] == "not_allowed"
    assert relay(board) == "1"
    assert cli_json("device", "sensors", data_dir=gw.data_dir)[0]["command_seq"] == answer["seq"]

    # a COMMAND forged without the device key, straight onto the board's line: ignored
    readings = gw.status()["accepted"]["legacy_data"]
    line = os.open(board.port, os.O_RDWR | os.O_NOCTTY)
    try:
        os.write(line, wire.encode(wire.COMMAND, bytes.fromhex(door.device_id), 0xFFFFFFF0, b'{"relay":0}',
                                   os.urandom(32)))
    finally:
        os.close(line)
    gw.wait_for(lambda s: s["accepted"]["legacy_data"] >= readings + 3, what="readings after the forgery")
    assert relay(board) == "1"
    status = gw.status()
    assert (legacy(status)["command_acks"], legacy(status)["commands"]) == (1, 1)
    latest = max((r for r in cli_json("records", "--limit", "5", data_dir=gw.data_dir) if r["kind"] == "data"),
                 key=lambda r: r["seq"])
    assert latest["values"]["relay"] == 1  # the board's readings report the relay it keeps
