"""The emulator and the gateway are written separately and share only the wire formats (the .proto
and the topics): here they must agree. For every firmware profile the emulator's bytes decode and
verify in the gateway and are byte for byte what the gateway's own encoder writes; both sides
reproduce the real device vectors on their own."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import random

import pytest
from coincurve import PrivateKey

from gateway.codec import downlink, pebble
from gateway.verify.secp256k1 import Key, address_of, is_low_s, normalize_address
from hardware.pebble import encoding, firmware, signing, topics
from hardware.pebble.device import PebbleDevice
from hardware.pebble.keystore import Identity, make_imei

NOW = 1_760_000_000.0
PROFILES = sorted(firmware.PROFILES)


def random_sensor_data(rng: random.Random, temperature_encoding: str) -> encoding.SensorData:
    """Any reading the firmware could hold: channels present or not, negative temperatures,
    the no-fix sentinel, IMU extremes."""

    def maybe(value):
        return value if rng.random() < 0.8 else None

    temperature = rng.randint(-4000, 8500)
    latitude = rng.choice([encoding.NO_FIX, rng.randint(-900_000_000, 900_000_000)])
    return encoding.SensorData(
        snr=maybe(rng.randint(0, 34) * 100), vbat=maybe(rng.randint(300, 430)),
        latitude=maybe(latitude), longitude=latitude if latitude == encoding.NO_FIX else rng.randint(-1_800_000_000, 1_800_000_000),
        gas_resistance=maybe(rng.randint(0, 2**32 - 1)), temperature=maybe(temperature),
        pressure=maybe(rng.randint(80_000, 110_000)), humidity=maybe(rng.randint(0, 10_000)),
        light=maybe(rng.randint(0, 5_000_000)), temperature2=maybe(temperature),
        gyroscope=tuple(rng.randint(-2**31, 2**31 - 1) for _ in range(3)),
        accelerometer=tuple(rng.randint(-32768, 32767) for _ in range(3)),
        random=f"{rng.getrandbits(64):016x}", temperature_encoding=temperature_encoding)


def as_gateway(s: encoding.SensorData) -> pebble.SensorData:
    return pebble.SensorData(**dataclasses.asdict(s))


# -- what each side knows of the firmware -------------------------------------------------------

def test_both_sides_name_the_same_firmware_generations_the_same_way():
    assert firmware.PROFILES.keys() == pebble.PROFILES.keys()
    for name, mine in firmware.PROFILES.items():
        assert dataclasses.asdict(mine) == dataclasses.asdict(pebble.PROFILES[name])
    assert firmware.DEFAULT_PROFILE == pebble.DEFAULT_PROFILE
    assert firmware.ALL_CHANNELS == pebble.ALL_CHANNELS and encoding.NO_FIX == pebble.NO_FIX
    for text in ("Riverrock 1.0.9", "Riverrock 1.0.12", "Riverrock v1.0.14", "Riverrock 1.1", "Gravel 1.0.3",
                 "pebbleGo", "Unknown 9", "Riverrock x"):
        mine, theirs = firmware.profile_for_firmware(text), pebble.profile_for_firmware(text)
        assert (mine and mine.name) == (theirs and theirs.name), text


def test_topics_are_the_ones_the_gateway_uses():
    imei = "350916067070535"
    assert downlink.STATUS_TOPIC.format(imei) == topics.STATUS_TOPIC.format(imei) == f"backend/{imei}/status"
    assert downlink.CONFIG_TOPIC is topics.CONFIG_TOPIC and downlink.FIRMWARE_TOPIC is topics.FIRMWARE_TOPIC
    assert topics.DEVICE_SUBSCRIPTIONS == ("device/+/data", "device/+/confirm", "device/+/query")


def test_addresses_agree():
    for _ in range(20):
        public_key = PrivateKey().public_key.format(compressed=False)
        assert signing.address_of(public_key) == address_of(public_key)
        lower = address_of(public_key).lower()
        assert signing.normalize_address(lower) == normalize_address(lower) == signing.normalize_address(lower[2:])
    for bad in ("0x1234", "zz", "0x" + "g" * 40, ""):
        with pytest.raises(ValueError):
            signing.normalize_address(bad)
        with pytest.raises(ValueError):
            normalize_address(bad)


# -- the codec, value by value ------------------------------------------------------------------

@pytest.mark.parametrize("temperature_encoding", ["uint32", "sint32"])
def test_sensor_data_is_what_the_gateway_writes_and_reads(temperature_encoding):
    rng = random.Random(temperature_encoding)
    for _ in range(500):
        mine = random_sensor_data(rng, temperature_encoding)
        data = encoding.encode_sensor_data(mine)
        assert data == pebble.encode_sensor_data(as_gateway(mine))
        decoded = pebble.decode_sensor_data(data, temperature_hint=temperature_encoding)
        expected = dataclasses.replace(as_gateway(mine), temperature_encoding=decoded.temperature_encoding)
        assert decoded == expected
        if mine.temperature is not None and mine.temperature2 is not None:
            assert decoded.temperature_encoding == temperature_encoding or mine.temperature == 0


def test_packages_and_config_are_what_the_gateway_writes_and_reads():
    rng = random.Random(1)
    for _ in range(100):
        data, ts, sig = rng.randbytes(rng.randint(0, 500)), rng.randint(0, 2**32 - 1), rng.randbytes(64)
        for type_ in (encoding.DATA, encoding.CONFIG):
            payload = encoding.encode_binpackage(type_, data, ts, sig)
            package = pebble.decode_binpackage(payload)
            assert package == pebble.BinPackage(type_, data, ts, sig)
            assert encoding.package_preimage(type_, data, ts) == package.preimage
            assert payload == pebble.encode_binpackage(package)
        owner, channel = rng.randbytes(20), rng.randint(0, 8183)
        payload = encoding.encode_confirm(owner, ts, sig, channel)
        assert pebble.decode_confirm(payload) == pebble.ConfirmPackage(owner, ts, sig, channel)
        assert encoding.confirm_preimage(owner, ts) == pebble.decode_confirm(payload).preimage
        period = rng.randint(10, 86400)
        config = encoding.encode_sensor_config(data_channel=channel, upload_period=period, firmware="Riverrock 1.0.14")
        expected = pebble.SensorConfig(data_channel=channel, upload_period=period, firmware="Riverrock 1.0.14")
        assert pebble.decode_sensor_config(config) == expected
        assert config == pebble.encode_sensor_config(expected)


def test_g1_text_is_what_the_gateway_writes_and_reads():
    rng = random.Random(2)
    for _ in range(200):
        fields = {"snr": rng.randint(0, 34), "vbat": rng.randint(3300, 4200),
                  "latitude": encoding.float32(rng.uniform(-90, 90)), "longitude": 20000,
                  "temperature": encoding.float32(rng.uniform(-40, 85)), "pressure": rng.randint(800, 1100),
                  "humidity": encoding.float32(rng.uniform(0, 100)), "gyroscope": [rng.randint(-500, 500)] * 3,
                  "timestamp": str(rng.randint(0, 2**32 - 1)), "random": f"{rng.getrandbits(64):016X}"}
        text = encoding.encode_g1_message(fields)
        assert text == pebble.encode_g1_message(fields)
        assert json.loads(text) == fields
        signature = rng.randbytes(64)
        envelope = encoding.encode_g1(text, signature)
        assert envelope == pebble.encode_g1(text, signature)
        decoded = pebble.decode_g1(envelope)
        assert (decoded.text, decoded.signature) == (text, signature)
        assert encoding.split_g1(envelope) == (text, signature)
        hex_text = signature.hex().upper()
        assert encoding.swap_nibbles(hex_text) == pebble.swap_nibbles(hex_text)


# -- whole messages, profile by profile ---------------------------------------------------------

@pytest.mark.parametrize("profile", PROFILES)
def test_every_profile_signs_what_the_gateway_verifies(profile):
    identity = Identity(make_imei(), PrivateKey().secret.hex(), profile)
    key, spec = Key(identity.public_key), firmware.PROFILES[profile]
    assert key.address == identity.address
    device = PebbleDevice(identity, seed=profile)
    signatures = []
    for i in range(60):
        message = device.data_message(NOW + i)
        assert message.topic == (topics.G1_DATA_TOPIC if spec.wire == "json" else topics.DATA_TOPIC).format(identity.imei)
        if spec.wire == "json":
            body = pebble.decode_g1(message.payload)
            assert body.text == pebble.encode_g1_message(json.loads(body.text))  # exactly cJSON's text
            assert (body.public_key == identity.public_key) if i < 2 else body.public_key is None
            assert body.random == message.nonce
        else:
            body = pebble.decode_binpackage(message.payload)
            reading = pebble.decode_sensor_data(body.data)  # no hint: told apart by field 10
            assert reading.temperature_encoding == spec.temperature and reading.random == message.nonce
            assert body.type == pebble.PackageType.DATA
        assert body.timestamp == message.timestamp == int(NOW + i)
        assert hashlib.sha256(body.preimage).digest() == message.digest
        assert key.verify(message.digest, body.signature)
        signatures.append(body.signature)
    high_s = sum(not is_low_s(s) for s in signatures)
    assert (high_s == 0) if spec.low_s else (10 < high_s < 50)
    if spec.wire == "protobuf":
        config = device.config_message(NOW)
        body = pebble.decode_binpackage(config.payload)
        assert body.type == pebble.PackageType.CONFIG and key.verify(config.digest, body.signature)
        assert pebble.decode_sensor_config(body.data).firmware == spec.firmware
        owner = signing.address_of(PrivateKey().public_key.format(compressed=False))
        confirm = device.confirm_message(owner, NOW)
        assert confirm.topic == topics.CONFIRM_TOPIC.format(identity.imei)
        body = pebble.decode_confirm(confirm.payload)
        assert body.owner_address == owner.lower() and body.channel == device.data_channel
        assert hashlib.sha256(body.preimage).digest() == confirm.digest and key.verify(confirm.digest, body.signature)


# -- the real devices' bytes, each side on its own ----------------------------------------------

def test_the_emulator_alone_reproduces_the_real_vectors(vectors):
    a = vectors["A"]
    payload = bytes.fromhex(a["payload_hex"])
    package = pebble.decode_binpackage(payload)
    mine = encoding.SensorData(**dataclasses.asdict(pebble.decode_sensor_data(package.data)))
    assert encoding.encode_sensor_data(mine) == package.data
    assert encoding.encode_binpackage(package.type, package.data, package.timestamp, package.signature) == payload
    assert encoding.package_preimage(package.type, package.data, package.timestamp).hex() == a["signed_preimage_hex"]
    assert signing.address_of(bytes.fromhex(a["public_key_uncompressed_hex"])) == a["address"]

    b = vectors["B"]
    confirm = pebble.decode_confirm(bytes.fromhex(b["payload_hex"]))
    assert encoding.encode_confirm(confirm.owner, confirm.timestamp, confirm.signature,
                                   confirm.channel).hex() == b["payload_hex"]
    assert encoding.confirm_preimage(confirm.owner, confirm.timestamp).hex() == b["signed_preimage_hex"]

    c = vectors["C"]
    assert encoding.encode_g1_message(json.loads(c["message_text"])) == c["message_text"].encode()
    public_key = bytes.fromhex("04" + encoding.swap_nibbles(json.loads(c["message_text"])["eccPubkey"]))
    assert signing.address_of(public_key) == c["address"]
