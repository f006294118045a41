"""The BLE bridge on real parts: `w3gate run` with [ble] on the Bumble backend, emulated sensors
in their own processes on a virtual radio, and `w3gate device pair --ble` as the user runs it."""
from __future__ import annotations

import pytest

from hardware.ble_sensor.launch import Radio, Sensor
from tests.support.gateway import GatewayProcess, cli, cli_json


@pytest.fixture
def bench(tmp_path, mosquitto):
    radio = Radio(tmp_path / "radio")
    passphrase = tmp_path / "passphrase"
    passphrase.write_text("correct horse\n")
    gw = GatewayProcess(tmp_path, mosquitto.port, chain__key_passphrase_file=str(passphrase),
                        ble__enabled=True, ble__transport=radio.transport, ble__scan_s=1.0,
                        ble__reconnect_max_s=2.0)
    cli("key", "new", "--passphrase-file", str(passphrase), data_dir=gw.data_dir)
    sensors: list[Sensor] = []

    def sensor(name: str, **kwargs) -> Sensor:
        sensors.append(Sensor(radio, tmp_path / "sensors", name, **kwargs))
        return sensors[-1]
    gw.start()
    yield gw, sensor
    gw.stop()
    for s in sensors:
        s.stop()
    radio.stop()


def pair(gw, name: str, *extra: str) -> dict:
    return cli_json("device", "pair", "--ble", name, "--period-ms", "100", *extra, data_dir=gw.data_dir,
                    config=gw.config)


def legacy(status: dict, kind: str = "data") -> int:
    return status.get("accepted", {}).get(f"legacy_{kind}", 0)


def test_one_command_pairs_a_ble_sensor_and_its_readings_flow_with_their_trust_level(bench):
    gw, sensor = bench
    sensor("w3-beehive")
    paired = pair(gw, "w3-beehive")
    assert paired["transport"] == "ble" and paired["first_frame"] in ("hello", "data") and "key" not in paired
    status = gw.wait_for(lambda s: legacy(s) >= 5, what="readings over BLE")
    assert status["legacy"]["ble"]["connected"] == ["w3-beehive"]
    records = [r for r in cli_json("records", "--limit", "0", data_dir=gw.data_dir) if r["wire"] == "legacy"]
    assert {(r["device"], r["trust"]) for r in records} == {(paired["device_id"], "gateway-attested")}


def test_a_link_dropped_mid_stream_is_reconnected_and_resubscribed(bench):
    gw, sensor = bench
    beehive = sensor("w3-beehive")
    pair(gw, "w3-beehive")
    before = legacy(gw.wait_for(lambda s: legacy(s) >= 5, what="readings"))
    beehive.fault("drop")
    status = gw.wait_for(lambda s: s["legacy"]["ble"]["drops"] >= 1 and legacy(s) >= before + 10,
                         what="readings again after the drop")
    assert status["legacy"]["ble"]["reconnect_s"]  # measured: drop -> subscribed again
    assert "replay" not in status["rejected"]


def test_forged_and_replayed_frames_are_counted_and_the_stream_goes_on(bench):
    gw, sensor = bench
    beehive = sensor("w3-beehive")
    pair(gw, "w3-beehive")
    gw.wait_for(lambda s: legacy(s) >= 3, what="readings")
    beehive.fault("wrong-key 2")
    beehive.fault("replay")
    beehive.fault("garbage")
    status = gw.wait_for(lambda s: s["rejected"].get("bad_mac", 0) >= 2 and s["rejected"].get("replay", 0) >= 1,
                         what="forgeries and a replay counted")
    after = legacy(status)
    gw.wait_for(lambda s: legacy(s) >= after + 3, what="good readings after the faults")


def test_new_settings_go_down_over_ble_and_are_confirmed(bench):
    gw, sensor = bench
    sensor("w3-beehive")
    pair(gw, "w3-beehive")
    gw.wait_for(lambda s: legacy(s, "config_ack") >= 1, what="the first-contact config ack")
    cli("device", "set", "w3-beehive", "--period-ms", "250", data_dir=gw.data_dir)
    gw.wait_for(lambda s: legacy(s, "config_ack") >= 2, what="the new settings confirmed")
    acks = [r for r in cli_json("records", "--limit", "0", data_dir=gw.data_dir) if r["kind"] == "config_ack"]
    assert acks[0]["values"]["period_ms"] == 250


def test_several_sensors_at_once(bench):
    gw, sensor = bench
    names = [f"w3-hive{n}" for n in range(4)]
    for name in names:
        sensor(name)
    for name in names:
        pair(gw, name)
    status = gw.wait_for(lambda s: len(s["legacy"]["ble"]["connected"]) == 4 and legacy(s) >= 40,
                         what="four sensors streaming")
    assert sorted(status["legacy"]["ble"]["connected"]) == names


def test_after_a_gateway_restart_the_sensor_is_found_again_and_no_seq_is_accepted_twice(bench):
    gw, sensor = bench
    sensor("w3-beehive")
    pair(gw, "w3-beehive")
    before = legacy(gw.wait_for(lambda s: legacy(s) >= 5, what="readings"))
    assert gw.stop() == 0
    gw.start()
    status = gw.wait_for(lambda s: legacy(s) >= before + 5, what="readings after the restart")
    assert "replay" not in status["rejected"]
    seqs = [r["device_seq"] for r in cli_json("records", "--limit", "0", data_dir=gw.data_dir)
            if r["wire"] == "legacy"]
    assert len(seqs) == len(set(seqs))
