"""Pairing and running a serial sensor as a user does, on real parts: an emulated board (the
MicroPython unix port's REPL behind a socat pty, hardware/board.py), `w3gate device pair` with
mpremote while `w3gate run` watches the port pattern, and the real firmware from device_fw/
sending readings to the gateway afterwards."""
from __future__ import annotations

import shutil

import pytest

from hardware.board import EmulatedBoard
from tests.support.gateway import GatewayProcess, cli, cli_json

pytestmark = pytest.mark.skipif(shutil.which("socat") is None, reason="socat is installed by ./dev.sh setup")


@pytest.fixture
def bench(tmp_path, mosquitto):
    board = EmulatedBoard(tmp_path / "board", "greenhouse", port_dir=tmp_path / "serial" / "by-id").plug()
    passphrase = tmp_path / "passphrase"
    passphrase.write_text("correct horse\n")
    gw = GatewayProcess(tmp_path, mosquitto.port, chain__key_passphrase_file=str(passphrase),
                        serial__ports=[str(board.port_dir / "usb-*")], serial__rescan_s=0.2)
    cli("key", "new", "--passphrase-file", str(passphrase), data_dir=gw.data_dir)
    gw.start()
    yield gw, board
    gw.stop()
    board.unplug()


def legacy_kinds(status: dict) -> dict:
    return {k: v for k, v in status.get("accepted", {}).items() if k.startswith("legacy_")}


def test_one_command_pairs_a_board_and_its_readings_flow_with_their_trust_level(bench):
    gw, board = bench
    paired = cli_json("device", "pair", "--serial", str(board.port), "--name", "greenhouse", "--period-ms", "200",
                      data_dir=gw.data_dir)
    assert paired["name"] == "greenhouse" and paired["first_frame"] in ("hello", "data")
    assert "key" not in paired
    assert "temperature" in paired["first_payload"] or "fw" in paired["first_payload"]
    # the gateway let go of the port while pairing, and takes it back afterwards
    gw.wait_for(lambda s: legacy_kinds(s).get("legacy_data", 0) >= 3, what="readings from the paired board")
    records = [r for r in cli_json("records", "--limit", "0", data_dir=gw.data_dir) if r["wire"] == "legacy"]
    assert {r["device"] for r in records} == {paired["device_id"]}
    assert all(r["trust"] == "gateway-attested" for r in records)
    assert all("temperature" in r["values"] for r in records if r["kind"] == "data")
    sensors = cli_json("device", "sensors", data_dir=gw.data_dir)
    assert [s["name"] for s in sensors] == ["greenhouse"] and "key" not in sensors[0]
    assert paired["device_id"] in (gw.data_dir / "legacy_devices.json").read_text()
    for text in (gw.log_text(), (gw.data_dir / "status.json").read_text()):
        assert (gw.data_dir / "legacy_devices.json").read_text().split('"key":"')[1][:64] not in text


def test_new_settings_reach_the_board_and_it_confirms_them(bench):
    gw, board = bench
    cli("device", "pair", "--serial", str(board.port), "--name", "greenhouse", "--period-ms", "500",
        data_dir=gw.data_dir)
    gw.wait_for(lambda s: legacy_kinds(s).get("legacy_data", 0) >= 1, what="a first reading")
    # on first contact the gateway confirmed the paired settings; now the user changes them
    gw.wait_for(lambda s: legacy_kinds(s).get("legacy_config_ack", 0) >= 1, what="the first config ack")
    cli("device", "set", "greenhouse", "--period-ms", "100", data_dir=gw.data_dir)
    gw.wait_for(lambda s: legacy_kinds(s).get("legacy_config_ack", 0) >= 2, what="the board's config ack")
    acks = [r for r in cli_json("records", "--limit", "0", data_dir=gw.data_dir) if r["kind"] == "config_ack"]
    assert [a["values"]["period_ms"] for a in acks] == [100, 500]  # newest first


def test_a_board_unplugged_and_booted_again_goes_on_with_higher_seqs(bench):
    gw, board = bench
    cli("device", "pair", "--serial", str(board.port), "--name", "greenhouse", "--period-ms", "200",
        data_dir=gw.data_dir)
    first = gw.wait_for(lambda s: legacy_kinds(s).get("legacy_data", 0) >= 3, what="readings")
    board.unplug()
    gw.wait_for(lambda s: not s["legacy"]["serial"]["ports"], what="the port gone")
    board.boot()  # power back: main.py runs the paired firmware
    # the gateway gives the board its settings again on first contact (its HELLO went out before
    # the port was open), and the board confirms them
    status = gw.wait_for(lambda s: legacy_kinds(s).get("legacy_data", 0) >= first["accepted"]["legacy_data"] + 3
                         and legacy_kinds(s).get("legacy_config_ack", 0) >= 2,
                         what="readings and a config ack after the replug")
    assert "replay" not in status["rejected"]
    seqs = [r["device_seq"] for r in sorted(cli_json("records", "--limit", "0", data_dir=gw.data_dir),
                                             key=lambda r: r["seq"]) if r["wire"] == "legacy"]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


def test_pairing_again_replaces_the_old_identity(bench):
    gw, board = bench
    old = cli_json("device", "pair", "--serial", str(board.port), "--name", "greenhouse", data_dir=gw.data_dir)
    refused = cli("device", "pair", "--serial", str(board.port), "--name", "greenhouse", data_dir=gw.data_dir,
                  check=False)
    assert refused.returncode != 0 and "--replace" in refused.stderr
    new = cli_json("device", "pair", "--serial", str(board.port), "--name", "greenhouse", "--replace",
                   data_dir=gw.data_dir)
    assert new["device_id"] != old["device_id"]
    assert [s["device_id"] for s in cli_json("device", "sensors", data_dir=gw.data_dir)] == [new["device_id"]]
    gw.wait_for(lambda s: s["accepted"].get("legacy_data", 0) >= 1, what="readings under the new identity")


def test_pairing_a_port_without_micropython_fails_clearly(tmp_path):
    empty = tmp_path / "nothing-here"
    result = cli("device", "pair", "--serial", str(empty), "--name", "x", "--timeout", "2",
                 data_dir=tmp_path / "data", check=False)
    assert result.returncode != 0 and "MicroPython" in result.stderr
    assert cli_json("device", "sensors", data_dir=tmp_path / "data") == []


def test_a_ble_board_is_flashed_over_usb_and_registered_for_ble(bench):
    """`--serial PORT --ble NAME`: firmware and identity over USB, the board told to serve BLE.
    The unix port has no bluetooth module, so here the firmware says so and keeps to the serial
    link, which still carries the first signed frame the pairing checks."""
    import json

    gw, board = bench
    paired = cli_json("device", "pair", "--serial", str(board.port), "--ble", "w3-garden", data_dir=gw.data_dir)
    assert paired["name"] == "w3-garden" and paired["transport"] == "ble"
    on_board = json.loads((board.directory / "device.json").read_text())
    assert on_board["ble"] is True and on_board["name"] == "w3-garden" and on_board["id"] == paired["device_id"]
