"""End to end on real parts: a private mosquitto, `w3gate run` as a process, emulated Pebbles
publishing over MQTT (`w3gate sim pebble` as a process), and the CLI as the user runs it."""
from __future__ import annotations

import hashlib
import json
import subprocess
import time

import paho.mqtt.client as mqtt

from gateway.codec import pebble
from tests.support.gateway import GatewayProcess, cli, cli_json, publish, sim, w3gate_exe


class Observer:
    """A plain MQTT subscriber that records everything devices publish: the test's ground truth."""

    def __init__(self, broker) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="observer")
        self.client.on_message = lambda c, u, m: self.messages.append((m.topic, m.payload))
        self.client.connect("127.0.0.1", broker.port)
        self.client.subscribe("device/#", qos=1)
        self.client.loop_start()
        time.sleep(0.2)

    def data_digests(self) -> set[str]:
        digests = set()
        for topic, payload in self.messages:
            if topic.endswith("/data") and payload[:1] != b"{":
                p = pebble.decode_binpackage(payload)
                digests.add(hashlib.sha256(p.preimage).hexdigest())
        return digests

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def test_verified_readings_from_every_firmware_profile_are_buffered_and_listed(gateway, mosquitto, fleet):
    summary = sim(mosquitto, fleet, "--messages", "3", "--time-scale", "300", "--qos", "1")
    sent = summary["published"]["data"]
    assert sent == 18
    gateway.wait_for(lambda s: s.get("accepted", {}).get("data", 0) == sent, what="all data accepted")
    records = cli_json("records", "--limit", "0", data_dir=gateway.data_dir)
    assert len(records) == sent
    assert {r["state"] for r in records} <= {"accepted", "processed"}  # processed once applets saw them
    assert all(r["trust"] == "secure-element" for r in records)
    assert {r["wire"] for r in records} == {"protobuf", "json"}  # G1 devices too
    for r in records:
        assert -40 < r["values"]["temperature"] < 60, r
        assert r["values"]["random"]
    one = records[0]["device"]
    assert {r["device"] for r in cli_json("records", "--device", one, data_dir=gateway.data_dir)} == {one}
    status = cli_json("status", data_dir=gateway.data_dir)
    assert status["running"] and status["rejected_total"] == 0
    assert status["buffer"]["records"] == sent


FAULTS = "bad_signature=0.15,replay=0.1,skew=0.1,garbage=0.1,oversized=0.1,nonce_reuse=0.1,unknown_device=0.1"
EXPECTED_REASON = {"bad_signature": {"bad_signature"}, "replay": {"replay"}, "skew": {"stale", "future"},
                   "garbage": {"malformed"}, "oversized": {"oversized"}, "nonce_reuse": {"nonce_reuse"},
                   "unknown_device": {"unknown_device"}}


def test_every_injected_fault_is_refused_with_its_reason_and_the_clean_data_gets_through(gateway, mosquitto, fleet):
    summary = sim(mosquitto, fleet, "--messages", "15", "--time-scale", "600", "--qos", "1", "--faults", FAULTS,
                  "--seed", "7")
    faults = {k: v for k, v in summary["faults"].items() if k != "clean"}
    assert set(faults) == set(EXPECTED_REASON), faults  # the seed makes every kind occur
    clean = summary["faults"]["clean"]
    total_rejected = sum(faults.values())
    status = gateway.wait_for(lambda s: s.get("accepted", {}).get("data", 0) == clean
                              and s.get("rejected_total", 0) == total_rejected, what="every message judged")
    rejected = status["rejected"]
    for fault, reasons in EXPECTED_REASON.items():
        assert sum(rejected.get(r, 0) for r in reasons) == faults[fault], (fault, rejected, faults)
    log = gateway.log_text()
    assert "rejected bad_signature from" in log and "Traceback" not in log


def test_crafted_bad_input_is_refused_by_name_and_never_crashes_the_gateway(gateway, mosquitto, fleet):
    devices = json.loads((fleet / "devices.json").read_text())
    riverrock = next(d for d in devices if d["profile"].startswith("riverrock"))
    imei = riverrock["imei"]
    state = pebble.encode_binpackage(pebble.BinPackage(2, b"\x08\x01", int(time.time()), b"\x00" * 64))
    confirm_wrong_owner = pebble.encode_confirm(pebble.ConfirmPackage(b"\x11" * 20, int(time.time()), b"\x01" * 64, 8183))
    publish(mosquitto, [
        (f"device/{imei}/data", state),
        (f"device/{imei}/data", b""),
        (f"device/{imei}/data", bytes(range(256)) * 8),
        (f"device/{imei}/confirm", confirm_wrong_owner),
        (f"device/{imei}/data", b"\x08\x00\x12\x05abc"),
        (f"device/{imei}/data", b'{"message": 5}'),
    ])
    status = gateway.wait_for(lambda s: s.get("rejected_total", 0) >= 6, what="six rejections")
    assert status["rejected"] == {"unsupported": 1, "malformed": 3, "oversized": 1, "bad_signature": 1}
    summary = sim(mosquitto, fleet, "--messages", "1", "--time-scale", "600", "--qos", "1")
    gateway.wait_for(lambda s: s.get("accepted", {}).get("data", 0) == summary["published"]["data"],
                     what="clean data after the bad input")


def test_registration_confirms_the_proposed_owner(gateway, mosquitto, fleet):
    summary = sim(mosquitto, fleet, "--messages", "1", "--time-scale", "300", "--qos", "1", "--register",
                  "--duration", "30")
    devices = {d["imei"]: d for d in cli_json("device", "list", data_dir=gateway.data_dir)}
    riverrock = [d for d in devices.values() if d["profile"].startswith("riverrock")]
    assert summary["registered"] == len(riverrock)
    assert all(d["status"] == "confirmed" for d in riverrock)
    kinds = {r["kind"] for r in cli_json("records", "--limit", "0", data_dir=gateway.data_dir)}
    assert {"confirm", "config", "data"} <= kinds


def test_a_restart_in_the_middle_loses_nothing_and_duplicates_nothing(tmp_path, mosquitto, fleet, gateway):
    observer = Observer(mosquitto)
    feed = subprocess.Popen([*w3gate_exe(), "sim", "pebble", "--broker", mosquitto.url, "--fleet-dir", str(fleet),
                             "--time-scale", "3000", "--qos", "1", "--quiet", "--duration", "8"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(2.0)
    gateway.kill()  # SIGKILL: no chance to flush or acknowledge anything
    time.sleep(1.0)  # devices keep publishing; the broker holds it for our session
    gateway.start()
    time.sleep(2.0)
    assert gateway.stop() == 0  # SIGTERM: clean stop
    time.sleep(0.5)
    gateway.start()
    assert feed.wait(30) == 0
    published = None
    deadline = time.time() + 30
    while time.time() < deadline:
        published = observer.data_digests()
        stored = [r["digest"] for r in cli_json("records", "--limit", "0", data_dir=gateway.data_dir)
                  if r["kind"] == "data" and r["wire"] == "protobuf"]
        if set(stored) >= published:
            break
        time.sleep(0.5)
    observer.stop()
    assert published and set(stored) == published
    assert len(stored) == len(set(stored)), "a record was stored twice"
    status = gateway.status()
    assert status["rejected"].get("replay", 0) == 0  # redeliveries are recognised, not called replays


def test_config_and_firmware_downlinks_reach_the_device(gateway, mosquitto, fleet):
    devices = json.loads((fleet / "devices.json").read_text())
    imei = next(d["imei"] for d in devices if d["profile"] == "riverrock-1.0.10")
    out = cli("device", "config", imei, "--period", "60", "--channels", "8183", data_dir=gateway.data_dir,
              config=gateway.config).stdout
    assert f"backend/{imei}/config" in out
    cli("device", "firmware", imei, "--version", "1.0.15", "--uri", "https://example.com/app_update.bin",
        data_dir=gateway.data_dir, config=gateway.config)
    too_big = cli("device", "firmware", imei, "--version", "1.0.16", "--uri", "https://example.com/" + "x" * 300,
                  data_dir=gateway.data_dir, config=gateway.config, check=False)
    assert too_big.returncode != 0 and "256" in too_big.stderr
    summary = sim(mosquitto, fleet, "--messages", "1", "--time-scale", "300", "--qos", "1")
    assert summary["downlinks"].get("config", 0) >= 1, summary
    assert summary["ota"] >= 1, summary


def test_the_gateway_reconnects_after_the_broker_restarts(tmp_path, mosquitto, fleet, gateway):
    from rig.broker import start_broker

    port = mosquitto.port
    mosquitto.stop()
    gateway.wait_for(lambda s: not s["mqtt"]["connected"], what="the gateway to notice the broker is gone")
    restarted = start_broker(tmp_path / "again", port=port)
    try:
        gateway.wait_for(lambda s: s["mqtt"]["connected"] and s["mqtt"]["connects"] >= 2, timeout=40,
                         what="reconnect")
        summary = sim(restarted, fleet, "--messages", "1", "--time-scale", "300", "--qos", "1")
        gateway.wait_for(lambda s: s.get("accepted", {}).get("data", 0) == summary["published"]["data"],
                         what="data after the reconnect")
    finally:
        restarted.stop()


def test_a_full_buffer_refuses_by_policy_and_says_so(tmp_path, mosquitto, fleet):
    gw = GatewayProcess(tmp_path, mosquitto.port, buffer__max_records=5, buffer__segment_records=5)
    cli("device", "import", str(fleet / "devices.json"), data_dir=gw.data_dir)
    gw.start()
    try:
        summary = sim(mosquitto, fleet, "--messages", "2", "--time-scale", "300", "--qos", "1")
        sent = summary["published"]["data"]
        status = gw.wait_for(lambda s: s.get("accepted_total", 0) + s.get("rejected_total", 0) == sent,
                             what="every message judged")
        assert status["accepted"]["data"] == 5
        assert status["rejected"] == {"buffer_full": sent - 5}
        assert status["buffer"]["refused_total"] == sent - 5
        assert gw.log_text().count("buffer full") == 1  # one line per episode, not per record
    finally:
        gw.stop()


def test_replay_protection_survives_a_restart(gateway, mosquitto, fleet):
    observer = Observer(mosquitto)
    sim(mosquitto, fleet, "--messages", "1", "--time-scale", "300", "--qos", "1")
    gateway.wait_for(lambda s: s.get("accepted", {}).get("data", 0) == 6, what="the first readings")
    captured = [(t, p) for t, p in observer.messages if t.endswith("/data")]
    observer.stop()
    assert gateway.stop() == 0
    gateway.start()
    publish(mosquitto, captured)  # an attacker replays what it sniffed, after the restart
    status = gateway.wait_for(lambda s: s.get("rejected", {}).get("replay", 0) == len(captured),
                              what="every replay refused")
    assert status["accepted"]["data"] == 6
