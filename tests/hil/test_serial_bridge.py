"""The serial bridge on real parts: `w3gate run` reads a pty pair made by socat (what a USB
serial adapter looks like to it), and the test writes frames on the device's end as a sensor
would, byte for byte, with the shared frame codec."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import serial

from device_fw import frame as wire
from gateway.legacy.registry import LegacyRegistry, new_legacy_device
from tests.support.gateway import GatewayProcess, cli, cli_json

pytestmark = pytest.mark.skipif(shutil.which("socat") is None, reason="socat is installed by ./dev.sh setup")


class Cable:
    """A serial cable: socat joins two ptys, the gateway's end named like /dev/serial/by-id."""

    def __init__(self, directory: Path, name: str) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.gateway_end = directory / f"usb-w3gate_{name}-if00"
        self.device_end = directory.parent / f"{name}-device"
        self.proc: subprocess.Popen | None = None

    def plug(self) -> "Cable":
        self.proc = subprocess.Popen(["socat", f"PTY,raw,echo=0,link={self.gateway_end}",
                                      f"PTY,raw,echo=0,link={self.device_end}"])
        deadline = time.monotonic() + 5
        while not (self.gateway_end.exists() and self.device_end.exists()):
            assert time.monotonic() < deadline, "socat made no ptys"
            time.sleep(0.02)
        return self

    def unplug(self) -> None:
        self.proc.terminate()
        self.proc.wait(5)

    def device(self) -> serial.Serial:
        return serial.Serial(str(self.device_end), timeout=0.2)


@pytest.fixture
def bench(tmp_path, mosquitto):
    by_id = tmp_path / "serial" / "by-id"
    passphrase = tmp_path / "passphrase"
    passphrase.write_text("correct horse\n")
    gw = GatewayProcess(tmp_path, mosquitto.port, chain__key_passphrase_file=str(passphrase),
                        serial__ports=[str(by_id / "usb-*")], serial__rescan_s=0.2,
                        legacy__rate=1000.0, legacy__burst=1000)
    cli("key", "new", "--passphrase-file", str(passphrase), data_dir=gw.data_dir)
    registry = LegacyRegistry(gw.data_dir / "legacy_devices.json")
    sensor = new_legacy_device("greenhouse", transport="serial", config={"period_ms": 500, "sensors": ["sim"]})
    registry.add(sensor)
    cable = Cable(by_id, "greenhouse").plug()
    gw.start()
    gw.wait_for(lambda s: s.get("legacy", {}).get("serial", {}).get("ports"), what="the port opened")
    yield gw, sensor, cable
    gw.stop()
    if cable.proc.poll() is None:
        cable.unplug()


def send(port: serial.Serial, sensor, seq: int, values: dict, frame_type: int = wire.READING, key=None) -> None:
    port.write(wire.encode(frame_type, bytes.fromhex(sensor.device_id), seq, json.dumps(values).encode(),
                           key or sensor.key_bytes))


def legacy_records(gw) -> list[dict]:
    records = cli_json("records", "--limit", "0", data_dir=gw.data_dir)  # newest first
    return sorted((r for r in records if r["wire"] == "legacy"), key=lambda r: r["seq"])


def test_readings_are_verified_attested_and_buffered_with_their_trust_level(bench):
    gw, sensor, cable = bench
    port = cable.device()
    for seq in range(1, 21):
        send(port, sensor, seq, {"temperature": 20 + seq / 10, "humidity": 40.0})
    gw.wait_for(lambda s: s["accepted"].get("legacy_data") == 20, what="20 readings")
    records = legacy_records(gw)
    assert [r["values"]["temperature"] for r in records] == [20 + seq / 10 for seq in range(1, 21)]
    identity = cli_json("key", "show", data_dir=gw.data_dir)
    assert {(r["trust"], r["device"]) for r in records} == {("gateway-attested", sensor.device_id)}
    assert {r["address"] for r in records} == {identity["address"]}  # the attester is the node key


def test_garbage_replays_forgeries_and_a_torn_frame_are_counted_and_the_stream_goes_on(bench):
    gw, sensor, cable = bench
    port = cable.device()
    send(port, sensor, 1, {"temperature": 1.0})
    port.write(os.urandom(300).replace(b"\x00", b"\x01"))  # line noise, no delimiter: resync at the next one
    half = wire.encode(wire.READING, bytes.fromhex(sensor.device_id), 2, b'{"temperature":2.0}', sensor.key_bytes)
    port.write(half[: len(half) // 2])  # a frame cut off mid-way (the sensor rebooted)
    send(port, sensor, 3, {"temperature": 3.0})
    send(port, sensor, 3, {"temperature": 3.0})  # replayed seq
    send(port, sensor, 4, {"temperature": 4.0}, key=os.urandom(32))  # forged
    send(port, sensor, 5, {"temperature": 5.0})
    status = gw.wait_for(lambda s: s["accepted"].get("legacy_data") == 3 and s["rejected"].get("bad_mac"),
                         what="three good readings and the forgery counted")
    assert status["rejected"]["replay"] == 1
    assert status["rejected"]["corrupt"] >= 1
    assert [r["values"]["temperature"] for r in legacy_records(gw)] == [1.0, 3.0, 5.0]


def test_a_flood_of_one_sniffed_frame_costs_the_real_sensor_nothing(bench):
    gw, sensor, cable = bench  # the gateway allows 1,000 frames/s, bursts of 1,000
    port = cable.device()
    sniffed = wire.encode(wire.READING, bytes.fromhex(sensor.device_id), 1, b'{"temperature":1.0}', sensor.key_bytes)
    port.write(sniffed * 1500)  # the original, then 1,499 replays of it, faster than the rate allows
    gw.wait_for(lambda s: s["rejected"].get("replay") == 1499, what="every replay refused")
    for seq in range(2, 12):
        send(port, sensor, seq, {"temperature": float(seq)})
    status = gw.wait_for(lambda s: s["accepted"].get("legacy_data") == 11, what="the real sensor's next frames")
    assert "rate_limited" not in status["rejected"]


def test_hostile_readings_are_refused_by_name_and_seqs_wrap_past_2_to_the_32(bench):
    gw, sensor, cable = bench
    port = cable.device()
    for seq, text in ((1, b'{"temperature":NaN}'), (2, b'{"temperature":1e999}'), (3, b"[1,2]"), (4, b"\xff\xfe")):
        port.write(wire.encode(wire.READING, bytes.fromhex(sensor.device_id), seq, text, sensor.key_bytes))
    gw.wait_for(lambda s: s["rejected"].get("malformed") == 4, what="four readings refused as malformed")
    for seq in (0xFFFFFFFE, 0xFFFFFFFF, 0, 1):  # a sensor crossing 2^32 - 1 keeps going
        send(port, sensor, seq, {"temperature": 20.0})
    gw.wait_for(lambda s: s["accepted"].get("legacy_data") == 4, what="four readings across the wrap")
    send(port, sensor, 0xFFFFFFFF, {"temperature": 20.0})  # a frame from before the wrap, played back
    send(port, sensor, 2, {"temperature": 21.0})
    status = gw.wait_for(lambda s: s["accepted"].get("legacy_data") == 5, what="the next reading")
    assert status["rejected"].get("replay") == 1 and "Traceback" not in gw.log_text()


def test_a_hello_gets_the_registry_settings_as_an_authenticated_config_frame(bench):
    gw, sensor, cable = bench
    port = cable.device()
    send(port, sensor, 1, {"fw": "w3gate-fw 0.1", "sensors": ["sim"], "period_ms": 1000}, frame_type=wire.HELLO)
    deframer, frames = wire.Deframer(), []
    deadline = time.monotonic() + 10
    while not frames and time.monotonic() < deadline:
        frames = deframer.feed(port.read(256))
    assert frames, "no CONFIG frame came down the line"
    frame_type, device_id, seq, payload = wire.decode(frames[0], lambda i: sensor.key_bytes)
    assert frame_type == wire.CONFIG and device_id.hex() == sensor.device_id
    assert json.loads(payload) == {"period_ms": 500, "sensors": ["sim"]}
    # a settings change in the registry goes down on its own
    registry = LegacyRegistry(gw.data_dir / "legacy_devices.json")
    registry.update(sensor.device_id, config={"period_ms": 2000, "sensors": ["sim"]})
    frames = []
    deadline = time.monotonic() + 10
    while not frames and time.monotonic() < deadline:
        frames = deframer.feed(port.read(256))
    _, _, seq2, payload = wire.decode(frames[0], lambda i: sensor.key_bytes)
    assert json.loads(payload)["period_ms"] == 2000 and seq2 > seq


def test_an_unplugged_sensor_is_picked_up_again_when_it_comes_back(bench):
    gw, sensor, cable = bench
    send(cable.device(), sensor, 1, {"temperature": 1.0})
    gw.wait_for(lambda s: s["accepted"].get("legacy_data") == 1, what="the first reading")
    cable.unplug()
    gw.wait_for(lambda s: not s["legacy"]["serial"]["ports"], what="the port closed")
    cable.plug()
    gw.wait_for(lambda s: s["legacy"]["serial"]["ports"], what="the port reopened")
    send(cable.device(), sensor, 2, {"temperature": 2.0})
    status = gw.wait_for(lambda s: s["accepted"].get("legacy_data") == 2, what="the reading after replug")
    assert status["legacy"]["serial"]["losses"] == 1 and status["legacy"]["serial"]["opens"] == 2


def test_seqs_stay_spent_across_a_gateway_restart(bench):
    gw, sensor, cable = bench
    port = cable.device()
    for seq in (1, 2, 3):
        send(port, sensor, seq, {"temperature": float(seq)})
    gw.wait_for(lambda s: s["accepted"].get("legacy_data") == 3, what="three readings")
    assert gw.stop() == 0
    gw.start()
    gw.wait_for(lambda s: s.get("legacy", {}).get("serial", {}).get("ports"), what="the port opened")
    port = cable.device()
    send(port, sensor, 2, {"temperature": 2.0})  # a recording of an old frame, played back
    send(port, sensor, 4, {"temperature": 4.0})
    status = gw.wait_for(lambda s: s["accepted"].get("legacy_data") == 4, what="the new reading")
    assert status["rejected"].get("replay") == 1


def test_attested_readings_reach_applets_as_legacy_events_with_their_trust_level(bench, tmp_path):
    from tests.support.wat import assemble

    gw, sensor, cable = bench
    assemble("probe", tmp_path)
    project = tmp_path / "sensors.toml"
    project.write_text('name = "sensors"\n[events]\nlegacy = true\n[[applets]]\nname = "probe"\nwasm = "probe.wasm"\n'
                       '[[strategies]]\nevent = "LEGACY_DATA"\napplet = "probe"\nhandler = "start"\n')
    cli("project", "deploy", str(project), data_dir=gw.data_dir)
    gw.wait_for(lambda s: "sensors" in s.get("applets", {}).get("projects", []), what="live deploy")
    port = cable.device()
    for seq in (1, 2, 3):
        send(port, sensor, seq, {"temperature": 20.0 + seq})
    gw.wait_for(lambda s: s["buffer"].get("processed_upto", 0) >= 3, what="the readings processed")
    logs = cli_json("applet", "logs", "sensors", "--limit", "0", data_dir=gw.data_dir)
    events = [json.loads(line["msg"]) for line in logs if line["level"] == "info"]
    identity = cli_json("key", "show", data_dir=gw.data_dir)
    assert [e["reading"]["temperature"] for e in events] == [21.0, 22.0, 23.0]
    assert all(e["trust"] == "gateway-attested" and e["attested_by"] == identity["did"] and
               e["device"] == sensor.device_id and e["name"] == "greenhouse" for e in events)
    assert [e["device_seq"] for e in events] == [1, 2, 3]
