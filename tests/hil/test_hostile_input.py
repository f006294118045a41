"""Hostile input on real parts: a private mosquitto, `w3gate run` as a process, emulated Pebbles.

Whatever an anonymous client publishes, the gateway refuses it by name, keeps ingesting, and
keeps doing so after a restart (when the broker hands it the same messages again); a broken file
under its data directory makes it say ``degraded`` until the file is fixed, never go quiet.
"""
from __future__ import annotations

import json
import subprocess
import time

import pytest

from gateway.codec import pebble
from tests.support.gateway import cli, cli_json, publish, sim, w3gate_exe


def _g1_with_bad_key(now: int) -> bytes:
    """A well-formed G1 message whose eccPubkey is 64 bytes that are not a point on secp256k1."""
    message = pebble.encode_g1_message({"snr": 10, "timestamp": str(now), "random": "A1B2C3D4E5F60718",
                                        "eccPubkey": pebble.swap_nibbles("07" * 64)})
    return pebble.encode_g1(message, bytes(range(1, 65)))


def _hostile(imei: str, g1_imei: str) -> list[tuple[str, bytes]]:
    now = int(time.time())
    sig = b',"signature":{"r":"00","s":"00"}}'
    return [
        (f"device/{imei}/data", b'{"message":{"timestamp":Infinity}' + sig),
        (f"device/nrf-{imei}/data", b'{"message":{"timestamp":-Infinity}' + sig),
        (f"device/{imei}/data", b'{"message":{"timestamp":1e999}' + sig),
        (f"device/{imei}/data", b'{"message":{"timestamp":NaN}' + sig),
        (f"device/{imei}/data", b'{"message":{"timestamp":"' + str(now).encode() + b'","snr":1e999}' + sig),
        (f"device/{imei}/data", b'{"message":{"timestamp":' + b"9" * 400 + b"}" + sig),
        (f"device/{imei}/data", b'{"message":' + b"[" * 500 + b"]" * 500 + b"}"),
        (f"device/{imei}/confirm", b"\xff" * 40),
        (f"device/nrf-{g1_imei}/data", _g1_with_bad_key(now)),
    ]


def _devices(fleet) -> tuple[str, str]:
    devices = json.loads((fleet / "devices.json").read_text())
    riverrock = next(d["imei"] for d in devices if d["profile"].startswith("riverrock"))
    g1 = next(d["imei"] for d in devices if d["profile"] == "g1")
    return riverrock, g1


def test_hostile_messages_are_refused_by_name_and_ingest_goes_on_also_after_a_restart(gateway, mosquitto, fleet):
    imei, g1 = _devices(fleet)
    hostile = _hostile(imei, g1)
    publish(mosquitto, hostile)
    publish(mosquitto, hostile[:1], retain=True)  # handed to the gateway again at every subscribe
    status = gateway.wait_for(lambda s: s.get("rejected_total", 0) >= len(hostile) + 1, what="every hostile message judged")
    assert status["rejected"] == {"malformed": len(hostile) + 1}
    first = sim(mosquitto, fleet, "--messages", "2", "--time-scale", "600", "--qos", "1")["published"]["data"]
    gateway.wait_for(lambda s: s.get("accepted", {}).get("data", 0) == first, what="readings after the hostile input")

    assert gateway.stop() == 0
    publish(mosquitto, hostile)  # queued in the gateway's session while it is down
    gateway.start()
    status = gateway.wait_for(lambda s: s.get("rejected_total", 0) >= 2 * len(hostile) + 2,
                              what="the queued and retained hostile messages judged after the restart")
    assert set(status["rejected"]) == {"malformed"}
    second = sim(mosquitto, fleet, "--messages", "2", "--time-scale", "600", "--qos", "1")["published"]["data"]
    status = gateway.wait_for(lambda s: s.get("accepted", {}).get("data", 0) == first + second,
                              what="readings after the restart")
    assert status["degraded"] == {} and status["ingest"]["handler_errors"] == 0
    assert len(cli_json("records", "--limit", "0", data_dir=gateway.data_dir)) == first + second  # none lost
    log = gateway.log_text()
    assert "Traceback" not in log and "rejected malformed from" in log


def test_a_corrupt_device_registry_is_reported_while_ingest_goes_on_and_recovers_when_fixed(gateway, mosquitto, fleet):
    registry = gateway.data_dir / "devices.json"
    good = registry.read_bytes()
    registry.write_text('{"devices": {"1": ')  # a half-written file, as an editor crash leaves it
    status = gateway.wait_for(lambda s: "device registry" in s.get("degraded", {}), what="the registry reported")
    assert "devices.json" in status["degraded"]["device registry"]
    shown = cli("status", data_dir=gateway.data_dir).stdout
    assert "running" in shown and "degraded" in shown and "devices.json" in shown

    sent = sim(mosquitto, fleet, "--messages", "1", "--time-scale", "600", "--qos", "1")["published"]["data"]
    gateway.wait_for(lambda s: s.get("accepted", {}).get("data", 0) == sent, what="ingest with the last good registry")

    registry.write_bytes(good)
    gateway.wait_for(lambda s: "device registry" not in s.get("degraded", {}), what="recovery once the file is fixed")
    imei, _ = _devices(fleet)
    cli("device", "remove", imei, data_dir=gateway.data_dir)
    gateway.wait_for(lambda s: s.get("devices") == 5, what="the removal taking effect")  # housekeeping still runs
    assert "Traceback" not in gateway.log_text()


def test_a_segment_emptied_by_a_power_cut_is_set_aside_and_seqs_are_never_reused(gateway, mosquitto, fleet):
    first = sim(mosquitto, fleet, "--messages", "2", "--time-scale", "600", "--qos", "1")["published"]["data"]
    gateway.wait_for(lambda s: s.get("accepted", {}).get("data", 0) == first, what="the first readings")
    issued = max(r["seq"] for r in cli_json("records", "--limit", "0", data_dir=gateway.data_dir))
    assert gateway.stop() == 0
    (active,) = sorted((gateway.data_dir / "records" / "segments").glob("seg-*.json"))[-1:]
    active.write_bytes(b"")  # what a power cut can leave of a file on an SD card

    gateway.start()
    status = gateway.wait_for(lambda s: "buffer" in s.get("degraded", {}), what="the damage reported")
    assert active.name in status["degraded"]["buffer"]
    shown = cli("status", data_dir=gateway.data_dir).stdout
    assert "damaged" in shown and active.name in shown
    assert list(active.parent.glob(active.name + ".damaged-*"))  # set aside, never deleted

    second = sim(mosquitto, fleet, "--messages", "2", "--time-scale", "600", "--qos", "1")["published"]["data"]
    gateway.wait_for(lambda s: s.get("accepted", {}).get("data", 0) == first + second, what="readings after it")
    records = cli("records", "--limit", "0", "--json", data_dir=gateway.data_dir)
    new = [r for r in json.loads(records.stdout) if r["seq"] > issued]
    assert len(new) == second  # every new reading has a seq never issued before
    assert "Traceback" not in gateway.log_text() + records.stderr


@pytest.mark.parametrize("setting,value", [("port", "-1"), ("keepalive", "-3"), ("port", "28831.7")])
def test_a_bad_setting_stops_w3gate_run_at_once_with_one_line_naming_it(tmp_path, setting, value):
    config = tmp_path / "w3gate.toml"
    config.write_text(f"[mqtt]\n{setting} = {value}\n")
    result = subprocess.run([*w3gate_exe(), "run", "--config", str(config), "--data-dir", str(tmp_path / "data")],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and f"mqtt.{setting}" in result.stderr and str(config) in result.stderr
    assert "Traceback" not in result.stdout + result.stderr
