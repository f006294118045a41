"""The Pebble emulator behaves as the firmware does: its messages verify through the gateway's
verifier, are byte-exact nanopb, carry realistic values; identities persist; every injected
fault is refused for its own reason; downlinks and registration follow docs/pebble-wire.md
("Device lifecycle")."""
from __future__ import annotations

import json
import os
import stat
import threading
import time

import paho.mqtt.client as mqtt
import pytest
from click.testing import CliRunner

from gateway.codec import pebble
from gateway.codec.pebble import (ALL_CHANNELS, CH_GPS, CH_TEMP, NO_FIX, PROFILES, PackageType,
                                  zigzag_decode)
from gateway.errors import Rejection
from gateway.verify.registry import Registry, make_device
from gateway.verify.secp256k1 import is_low_s
from gateway.verify.verifier import Verifier
from hardware.pebble.device import (MQTT_BUFFER, RECONFIRM_EVERY, DeviceError, PebbleDevice,
                                    Registration)
from hardware.pebble.encoding import encode_sensor_data
from hardware.pebble.faults import FaultInjector, FaultPlan, FaultSpecError
from hardware.pebble.fleet import Fleet
from hardware.pebble.keystore import Keystore, luhn_valid
from hardware.pebble.sensors import Sample, sensor_data

NOW = 1_760_000_000.0
OWNER = "0x4F3794b74F9d59C5773a7272295A6A3F0cCc972a"


# -- helpers ------------------------------------------------------------------------------------

def fleet_of(tmp_path, count=1, profile="riverrock-1.0.14"):
    return Keystore(tmp_path / "fleet").ensure(count, profile=profile, owner=OWNER)


def registry_for(tmp_path, identities):
    """The gateway's registry, filled from the devices.json the keystore wrote."""
    registry = Registry(tmp_path / "registry.json")
    entries = json.loads((tmp_path / "fleet" / "devices.json").read_text())
    registry.add_many([make_device(e["imei"], address=e["address"], owner=e["owner"], profile=e["profile"])
                       for e in entries])
    return registry


def topic_imei(topic: str) -> str:
    return topic.split("/")[1].removeprefix("nrf-")


def verify(verifier: Verifier, message):
    if message.topic.endswith("/confirm"):
        return verifier.confirm(topic_imei(message.topic), message.payload)
    return verifier.data(topic_imei(message.topic), message.payload)


def wire_fields(buf: bytes) -> list[tuple[int, int, bytes | int]]:
    """(field number, wire type, value) in wire order: a minimal protobuf reader."""

    def varint(i):
        shift = value = 0
        while True:
            b = buf[i]
            value |= (b & 0x7F) << shift
            i += 1
            if not b & 0x80:
                return value, i
            shift += 7

    out, i = [], 0
    while i < len(buf):
        key, i = varint(i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = varint(i)
        elif wire == 2:
            size, i = varint(i)
            value, i = buf[i:i + size], i + size
        else:
            raise AssertionError(f"unexpected wire type {wire}")
        out.append((number, wire, value))
    return out


# -- messages of every profile ------------------------------------------------------------------

@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_every_profile_verifies_and_reads_realistically(tmp_path, profile):
    identities = fleet_of(tmp_path, 2, profile)
    verifier = Verifier(registry_for(tmp_path, identities), clock=lambda: NOW)
    for identity in identities:
        device = PebbleDevice(identity, seed=7)
        for i in range(30):
            message = device.data_message(NOW)
            accepted = verify(verifier, message)
            assert accepted.device.imei == identity.imei and accepted.kind == "data"
            assert accepted.digest == message.digest and accepted.timestamp == int(NOW)
            r = accepted.body.reading()
            if r["gps_fix"]:
                assert -90 <= r["latitude"] <= 90 and -180 <= r["longitude"] <= 180
            assert -30 < r["temperature"] < 50
            assert 0 < r["humidity"] <= 100
            assert 850 < r["pressure"] < 1090
            assert r["light"] >= 0 and r["gas_resistance"] > 1000
            assert 7000 < abs(r["accelerometer"][1]) < 9500 and all(abs(g) < 400 for g in r["gyroscope"])
            if profile == "g1":
                assert message.topic == f"device/nrf-{identity.imei}/data"
                assert 0 <= r["snr"] <= 34 and 3300 <= r["vbat"] * 1000 <= 4250
            else:
                assert message.topic == f"device/{identity.imei}/data"
                assert 0 <= r["snr"] <= 34 and r["snr"] == int(r["snr"])
                assert 3.3 <= r["vbat"] <= 4.25
                assert accepted.body.temperature_encoding == PROFILES[profile].temperature
                assert len(r["random"]) == 16 and int(r["random"], 16) >= 0 and r["random"] == r["random"].lower()


@pytest.mark.parametrize("profile,high_s_possible", [("riverrock-1.0.9", False), ("riverrock-1.0.10", False),
                                                    ("riverrock-1.0.14", True)])
def test_low_s_profiles_normalise_and_1_0_14_does_not(tmp_path, profile, high_s_possible):
    device = PebbleDevice(fleet_of(tmp_path, 1, profile)[0])
    sigs = [pebble.decode_binpackage(device.data_message(NOW).payload).signature for _ in range(40)]
    high = sum(not is_low_s(s) for s in sigs)
    assert (high > 0) is high_s_possible
    if high_s_possible:
        assert 5 < high < 35  # about half


def test_data_payload_follows_nanopb_rules(tmp_path):
    device = PebbleDevice(fleet_of(tmp_path)[0], seed=1)
    payload = device.data_message(NOW).payload
    assert payload[:2] == b"\x08\x00"  # type DATA is always serialised
    assert [n for n, _, _ in wire_fields(payload)] == [1, 2, 3, 4]
    data = dict((n, v) for n, _, v in wire_fields(payload))[2]
    fields = wire_fields(data)
    numbers = [n for n, _, _ in fields]
    assert numbers == sorted(numbers) == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13]
    imu = {n: (wire, value) for n, wire, value in fields if n in (11, 12)}
    assert all(wire == 2 for wire, _ in imu.values())  # packed
    assert len(dict((n, v) for n, _, v in fields)[13]) == 16


def test_temperature_encodings_of_a_freezing_reading(tmp_path):
    cold = Sample(NOW, 15, 4.0, 60.0, 10.0, 50_000, -10.0, 1000.0, 50.0, 0.0, (0, 0, 0), (0, 8192, 0), -8.0)
    for encoding in ("uint32", "sint32"):
        data = encode_sensor_data(sensor_data(cold, channels=ALL_CHANNELS, precise_gps=False,
                                              temperature_encoding=encoding, nonce="00" * 8))
        raw = {n: v for n, _, v in wire_fields(data)}
        assert raw[10] == (-1250) & 0xFFFFFFFF  # -10 - 2.5 degC, two's complement
        assert (raw[6] == raw[10]) if encoding == "uint32" else (zigzag_decode(raw[6]) == -1250)
        assert pebble.decode_sensor_data(data).temperature == -1250


def test_channel_mask_and_gps_rules(tmp_path):
    device = PebbleDevice(fleet_of(tmp_path)[0], seed=3, data_channel=CH_GPS | CH_TEMP)
    data = pebble.decode_binpackage(device.data_message(NOW).payload).data
    numbers = [n for n, _, _ in wire_fields(data)]
    assert numbers == [3, 4, 6, 11, 12, 13]  # gyro/accel always there, random always there
    decoded = pebble.decode_sensor_data(data)
    assert decoded.gyroscope == (0, 0, 0) and decoded.accelerometer == (0, 0, 0)

    device = PebbleDevice(fleet_of(tmp_path)[0], seed=3)
    device.sensors.no_fix_rate = 0.0
    lat = pebble.decode_sensor_data(pebble.decode_binpackage(device.data_message(NOW).payload).data).latitude
    assert lat % 100_000 == 0  # 0.01 degree rounding
    device.precise_gps = True
    lats = [pebble.decode_sensor_data(pebble.decode_binpackage(device.data_message(NOW).payload).data).latitude
            for _ in range(5)]
    assert any(x % 100_000 for x in lats)
    device.sensors.no_fix_rate = 1.0
    data = pebble.decode_sensor_data(pebble.decode_binpackage(device.data_message(NOW).payload).data)
    assert data.latitude == data.longitude == NO_FIX and not data.gps_fix


def test_sensor_models_are_seedable_and_move(tmp_path):
    identity = fleet_of(tmp_path)[0]
    a, b = PebbleDevice(identity, seed=42), PebbleDevice(identity, seed=42)
    def signed_data(device):  # the signature's high/low-S form is a coin toss on 1.0.14
        return [pebble.decode_binpackage(device.data_message(NOW + i).payload).data for i in range(3)]

    assert signed_data(a) == signed_data(b)
    device = PebbleDevice(identity, seed=5)
    device.sensors.speed_mean, device.sensors.no_fix_rate = 14.0, 0.0
    first = device.read_sensors(NOW)
    later = [device.read_sensors(NOW) for _ in range(12)][-1]  # one hour at 300 s
    assert abs(later.latitude - first.latitude) + abs(later.longitude - first.longitude) > 0.05
    assert later.time == first.time + 12 * 300
    assert later.vbat_v < first.vbat_v + 0.05


def test_g1_envelope_is_exact_cjson_with_swapped_nibbles(tmp_path):
    identity = fleet_of(tmp_path, 1, "g1")[0]
    device = PebbleDevice(identity, seed=2)
    messages = [device.data_message(NOW) for _ in range(3)]
    decoded = [pebble.decode_g1(m.payload) for m in messages]
    assert [d.public_key is not None for d in decoded] == [True, True, False]  # first two after boot
    assert decoded[0].public_key == identity.public_key
    assert messages[0].payload.startswith(b'{"message":{"snr":')
    for m, d in zip(messages, decoded):
        assert pebble.encode_g1_message(json.loads(d.text)) == d.text  # no whitespace, key order kept
        assert d.fields["timestamp"] == str(int(NOW)) and m.nonce == d.random
        r_text = json.loads(m.payload)["signature"]["r"]
        assert r_text == pebble.swap_nibbles(d.signature[:32].hex().upper())
    device.reboot()
    assert pebble.decode_g1(device.data_message(NOW).payload).public_key is not None


def test_config_and_confirm_messages_verify(tmp_path):
    identity = fleet_of(tmp_path)[0]
    verifier = Verifier(registry_for(tmp_path, [identity]), clock=lambda: NOW)
    device = PebbleDevice(identity, upload_period=600)
    config = device.config_message(NOW)
    assert config.topic == f"device/{identity.imei}/data"
    accepted = verify(verifier, config)
    assert accepted.kind == "config"
    assert accepted.body.firmware == "Riverrock 1.0.14" and accepted.body.upload_period == 600
    assert accepted.body.data_channel == ALL_CHANNELS and accepted.body.beep == 1000

    confirm = device.confirm_message(OWNER, NOW)
    assert confirm.topic == f"device/{identity.imei}/confirm"
    package = pebble.decode_confirm(confirm.payload)
    assert package.owner_address.lower() == OWNER.lower() and package.channel == ALL_CHANNELS
    # the channel is not signed: another channel still verifies
    other = pebble.encode_confirm(pebble.ConfirmPackage(package.owner, package.timestamp, package.signature, 19))
    assert verifier.confirm(identity.imei, other).kind == "confirm"

    query = device.query_message()
    assert (query.topic, query.payload) == (f"device/{identity.imei}/query", b"")
    with pytest.raises(DeviceError):
        PebbleDevice(fleet_of(tmp_path / "g", 1, "g1")[0]).config_message(NOW)


# -- identities ---------------------------------------------------------------------------------

def test_identities_persist_grow_and_stay_private(tmp_path):
    store = Keystore(tmp_path / "fleet")
    first = store.ensure(3, profile="mixed")
    again = Keystore(tmp_path / "fleet").ensure(3)
    assert [(i.imei, i.private_key, i.profile) for i in again] == [(i.imei, i.private_key, i.profile) for i in first]
    grown = store.ensure(6, profile="riverrock-1.0.9")
    assert grown[:3] == first and len({i.imei for i in grown}) == 6
    assert [i.profile for i in grown[3:]] == ["riverrock-1.0.9"] * 3
    assert store.ensure(2) == first[:2] and len(store.load()) == 6

    assert stat.S_IMODE(os.stat(store.keys_path).st_mode) == 0o600
    for identity in grown:
        assert len(identity.imei) == 15 and identity.imei.startswith("35") and luhn_valid(identity.imei)
        assert identity.private_key not in repr(identity)
    entries = json.loads(store.devices_path.read_text())
    assert [sorted(e) for e in entries] == [["address", "imei", "owner", "profile"]] * 6
    assert entries[0] == first[0].public() and entries[0]["address"] == first[0].address
    assert len({e["owner"] for e in entries}) == 1  # one fleet owner
    text = store.devices_path.read_text()
    assert not any(i.private_key in text for i in grown)
    # the file `w3gate device import` takes
    assert [make_device(e["imei"], address=e["address"], owner=e["owner"], profile=e["profile"]).address
            for e in entries] == [i.address for i in grown]


# -- faults -------------------------------------------------------------------------------------

EXPECTED_REASON = {"bad_signature": {"bad_signature"}, "replay": {"replay"}, "skew": {"stale", "future"},
                   "garbage": {"malformed"}, "oversized": {"oversized"}, "nonce_reuse": {"nonce_reuse"},
                   "unknown_device": {"unknown_device"}}


@pytest.mark.parametrize("profile", ["riverrock-1.0.14", "g1"])
@pytest.mark.parametrize("kind", sorted(EXPECTED_REASON))
def test_each_fault_is_refused_for_its_reason(tmp_path, kind, profile):
    identity = fleet_of(tmp_path, 1, profile)[0]
    verifier = Verifier(registry_for(tmp_path, [identity]), clock=lambda: NOW)
    device, injector = PebbleDevice(identity), FaultInjector(None, seed=1)
    for _ in range(3):
        verify(verifier, injector.next_data(device, NOW))  # clean traffic first: history to replay
    for _ in range(5):
        message = injector.make(kind, device, NOW)
        assert message.fault == kind
        with pytest.raises(Rejection) as e:
            verify(verifier, message)
        assert e.value.reason in EXPECTED_REASON[kind], e.value
        if kind == "skew":
            expected = "future" if message.timestamp > NOW else "stale"
            assert e.value.reason == expected and abs(message.timestamp - NOW) == 3600
    if kind == "oversized":
        assert 2048 <= len(message.payload) <= 4096
    if kind == "unknown_device":
        assert topic_imei(message.topic) != identity.imei and luhn_valid(topic_imei(message.topic))
    assert verify(verifier, injector.next_data(device, NOW)).kind == "data"  # the device is still fine


@pytest.mark.parametrize("profile,affected", [("riverrock-1.0.10", True), ("riverrock-1.0.14", False)])
def test_leading_zero_defect_garbles_about_one_low_s_signature_in_85(tmp_path, profile, affected):
    identity = fleet_of(tmp_path, 1, profile)[0]
    verifier = Verifier(registry_for(tmp_path, [identity]), clock=lambda: NOW)
    device, injector = PebbleDevice(identity), FaultInjector("leading_zero", seed=1)
    injector.prepare(device)
    garbled, count = [], 3000 if affected else 1000
    for _ in range(count):
        message = injector.next_data(device, NOW)
        if message.fault == "leading_zero":
            garbled.append(message)
            with pytest.raises(Rejection) as e:
                verify(verifier, message)
            assert e.value.reason == "bad_signature"
        else:
            verify(verifier, message)
    assert bool(garbled) is affected
    if affected:
        # r has a zero first byte 1 time in 256, low-S s (< n/2) 1 time in 128: 3000 * 3/256 ~ 35 +- 6
        assert 10 <= len(garbled) <= 70
        assert injector.counts["leading_zero"] == len(garbled)
        assert injector.counts["clean"] == count - len(garbled)


def test_fault_spec_parsing_and_counts(tmp_path):
    plan = FaultPlan.parse("bad_signature=0.05, replay=0.02,skew=0.01,garbage=0.01,oversized=0.01,"
                           "nonce_reuse=0.01,unknown_device=0.01,leading_zero")
    assert plan.rates["bad_signature"] == 0.05 and plan.leading_zero
    assert FaultPlan.parse("") == FaultPlan.parse("none") == FaultPlan()
    for bad in ("typo=0.1", "replay=2", "replay=x", "replay=0.6,skew=0.6"):
        with pytest.raises(FaultSpecError):
            FaultPlan.parse(bad)
    fleet = Fleet(fleet_of(tmp_path, 3), faults="bad_signature=0.2,replay=0.1,garbage=0.1", seed=9)
    messages = fleet.pregenerate(300, NOW)
    counts = fleet.faults.counts
    assert sum(counts.values()) == 300 == len(messages)
    assert set(counts) <= {"clean", "bad_signature", "replay", "garbage"}
    assert counts["clean"] > 150 and counts["bad_signature"] > 30
    assert [m.fault or "clean" for m in messages].count("replay") == counts["replay"]


def test_pregenerate_gives_distinct_signed_messages(tmp_path):
    identities = fleet_of(tmp_path, 4, "mixed")
    verifier = Verifier(registry_for(tmp_path, identities), clock=lambda: NOW)
    messages = Fleet(identities).pregenerate(40, NOW)
    assert len({m.digest for m in messages}) == 40
    assert {topic_imei(m.topic) for m in messages} == {i.imei for i in identities}
    for m in messages:
        verify(verifier, m)


# -- downlinks ----------------------------------------------------------------------------------

def config_downlink(device, **doc):
    return device.handle_downlink(f"backend/{device.imei}/config", json.dumps(doc).encode(), NOW)


def test_config_downlink_follows_the_riverrock_parser(tmp_path):
    device = PebbleDevice(fleet_of(tmp_path)[0])
    r = config_downlink(device, appName="Riverrock", upload_period="600", data_channel=19, preciseGPS=True)
    assert r.accepted and (device.upload_period, device.data_channel, device.precise_gps) == (600, 19, True)
    assert config_downlink(device, appName="Riverrock", upload_period="5").accepted and device.upload_period == 10
    assert config_downlink(device, appName="Riverrock", upload_period="100000").accepted
    assert device.upload_period == 86400
    assert config_downlink(device, appName="Riverrock", data_channel=9000).accepted
    assert device.data_channel == 8183

    before = (device.upload_period, device.data_channel, device.precise_gps)
    for doc in ({"upload_period": "60"},  # no appName
                {"appName": "Gravel", "upload_period": "60"},
                {"appName": "Riverrock", "upload_period": 60},  # must be a string
                {"appName": "Riverrock", "data_channel": "19"},  # must be a number
                {"appName": "Riverrock", "preciseGPS": "true"},
                {"appName": "Riverrock", "appVersion": "1.0.13", "upload_period": "60"},
                {"appName": "Riverrock", "appVersion": "v1.0.15+", "upload_period": "60"}):
        r = config_downlink(device, **doc)
        assert not r.accepted and not r.disconnect, doc
    assert (device.upload_period, device.data_channel, device.precise_gps) == before  # all or nothing

    r = config_downlink(device, appName="Riverrock", uploadPeriod="60", dataChannel=3)  # camelCase ignored
    assert r.accepted and r.changes == {} and device.upload_period == before[0]
    assert config_downlink(device, appName="Riverrock", appVersion="v1.0.10+", upload_period="60").accepted
    assert device.upload_period == 60
    r = config_downlink(device, appName="Riverrock", trusttreamTopic="trust/$imei/data")
    assert r.accepted and device.data_message(NOW).topic == f"trust/{device.imei}/data"

    big = json.dumps({"appName": "Riverrock", "configName": "x" * 300}).encode()
    assert len(big) > MQTT_BUFFER
    r = device.handle_downlink(f"backend/{device.imei}/config", big, NOW)
    assert r.disconnect and not r.accepted
    r = device.handle_downlink(f"backend/{device.imei}/config", b"{not json", NOW)
    assert not r.accepted and not r.disconnect
    assert not device.handle_downlink("backend/999/config", b"{}", NOW).accepted


def test_firmware_downlink_records_the_update(tmp_path):
    device = PebbleDevice(fleet_of(tmp_path, 1, "riverrock-1.0.10")[0])
    topic = f"backend/{device.imei}/firmware"

    def offer(version, app="Riverrock", uri="https://ota.example/app_update.bin"):
        return device.handle_downlink(topic, json.dumps({"firmware": app, "uri": uri, "version": version}).encode())

    assert not offer("1.0.9").accepted  # not newer
    assert not offer("1.0.15", app="Gravel").accepted
    assert not offer("1.0.15", uri="http://ota.example/x.bin").accepted
    r = offer("1.0.14")
    assert r.accepted and device.firmware == "Riverrock 1.0.14" and device.ota[-1]["from"] == "Riverrock 1.0.10"
    assert device.profile.name == "riverrock-1.0.14"  # and signs as 1.0.14 does from now on
    assert pebble.decode_sensor_config(pebble.decode_binpackage(device.config_message(NOW).payload).data
                                       ).firmware == "Riverrock 1.0.14"
    registering = PebbleDevice(fleet_of(tmp_path)[0], registering=True)
    r = registering.handle_downlink(f"backend/{registering.imei}/firmware",
                                    b'{"firmware":"Riverrock","uri":"https://a/b","version":"9.0.0"}')
    assert not r.accepted  # ignored while registering


def test_registration_state_machine(tmp_path):
    identity = fleet_of(tmp_path)[0]
    registry = registry_for(tmp_path, [identity])
    verifier = Verifier(registry, clock=lambda: NOW)
    device = PebbleDevice(identity, registering=True)
    status = f"backend/{device.imei}/status"

    def send(doc):
        return device.handle_downlink(status, json.dumps(doc).encode(), NOW)

    assert device.registering and device.registration is Registration.WAITING
    r = send({"status": 0})
    assert r.accepted and not r.replies and device.registration is Registration.WAITING
    assert not send({"status": 1, "proposer": "0x1234"}).accepted  # not an address

    r = send({"status": 1, "proposer": OWNER})
    assert device.registration is Registration.CONFIRMING and device.proposer == OWNER
    [confirm] = r.replies
    assert confirm.kind == "confirm" and verify(verifier, confirm).kind == "confirm"  # names the proposer

    resent = [send({"status": 1, "proposer": OWNER}).replies for _ in range(RECONFIRM_EVERY)]
    assert [len(x) for x in resent] == [0] * (RECONFIRM_EVERY - 1) + [1]  # an occasional resend

    r = send({"status": 2, "proposer": OWNER})
    [config] = r.replies
    assert config.kind == "config" and config.topic == f"device/{device.imei}/data"
    assert pebble.decode_binpackage(config.payload).type == PackageType.CONFIG
    assert verify(verifier, config).kind == "config"
    assert not device.registering and device.owner == OWNER
    assert not send({"status": 1, "proposer": OWNER}).accepted  # out of registration mode: ignored

    manual = PebbleDevice(identity, registering=True, auto_confirm=False)
    with pytest.raises(DeviceError):
        manual.press_button(NOW)
    r = manual.handle_downlink(status, json.dumps({"status": 1, "proposer": OWNER}).encode(), NOW)
    assert not r.replies and manual.registration is Registration.PROPOSED
    assert manual.press_button(NOW).kind == "confirm"
    assert not PebbleDevice(fleet_of(tmp_path / "g", 1, "g1")[0], registering=True).registering  # no G1 flow


def test_cli_refuses_an_unreachable_broker_and_a_bad_fault_spec(tmp_path):
    from gateway.cli.sim import sim

    runner = CliRunner()
    args = ["pebble", "--count", "2", "--data-dir", str(tmp_path), "--broker", "127.0.0.1:1"]
    result = runner.invoke(sim, args)
    assert result.exit_code == 1 and "unreachable" in result.output
    assert len(json.loads((tmp_path / "fleet" / "devices.json").read_text())) == 2
    result = runner.invoke(sim, args + ["--faults", "replay=oops"])
    assert result.exit_code == 1 and "replay" in result.output


# -- over a real broker -------------------------------------------------------------------------

def test_fleet_publishes_registers_and_reaches_a_subscriber(tmp_path, mosquitto):
    """Four devices (one per profile) boot in registration mode against a minimal backend on a
    real mosquitto, then publish two DATA messages each at time-scale 100."""
    identities = fleet_of(tmp_path, 4, "mixed")
    registry = registry_for(tmp_path, identities)
    verifier = Verifier(registry)  # one gateway judges them all (confirms of one owner included)
    received: list[tuple[str, bytes]] = []
    confirmed: set[str] = set()
    lock = threading.Lock()

    def on_message(client, userdata, msg):
        imei = topic_imei(msg.topic)
        with lock:
            received.append((msg.topic, msg.payload))
        if msg.topic.endswith("/query"):
            code = 2 if imei in confirmed else 1
            client.publish(f"backend/{imei}/status", json.dumps({"status": code, "proposer": OWNER}), qos=1)
        elif msg.topic.endswith("/confirm"):
            confirmed.add(imei)
            client.publish(f"backend/{imei}/status", json.dumps({"status": 2, "proposer": OWNER}), qos=1)

    subscribed = threading.Event()
    backend = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="test-backend")
    backend.on_message = on_message
    backend.on_subscribe = lambda *args: subscribed.set()
    backend.connect("127.0.0.1", mosquitto.port)
    backend.subscribe([("device/+/data", 1), ("device/+/query", 1), ("device/+/confirm", 1)])
    backend.loop_start()
    try:
        assert subscribed.wait(10), "the test backend never got its SUBACK"
        fleet = Fleet(identities, port=mosquitto.port, qos=1, time_scale=100, upload_period=10, register=True)
        summary = fleet.run_sync(messages=2, duration=20)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            with lock:
                if sum(t.endswith("/data") for t, _ in received) >= 4 * 2 + 3:
                    break
            time.sleep(0.05)
    finally:
        backend.loop_stop()
        backend.disconnect()

    protobuf = [i for i in identities if i.profile != "g1"]
    assert summary.published["data"] == 8 and summary.published["config"] == 3
    assert summary.registered == 3 and summary.faults["clean"] == 8
    by_topic: dict[str, list[str]] = {}
    for topic, payload in received:
        if topic.endswith("/data") or topic.endswith("/confirm"):
            accepted = verifier.confirm(topic_imei(topic), payload) if topic.endswith("/confirm") \
                else verifier.data(topic_imei(topic), payload)
            by_topic.setdefault(topic, []).append(accepted.kind)
    for identity in identities:
        if identity.profile == "g1":
            assert by_topic[f"device/nrf-{identity.imei}/data"] == ["data", "data"]
        else:
            assert by_topic[f"device/{identity.imei}/data"] == ["config", "data", "data"]
            assert "confirm" in by_topic[f"device/{identity.imei}/confirm"]
    assert len(by_topic) == len(identities) + len(protobuf)
