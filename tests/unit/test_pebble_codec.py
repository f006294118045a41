"""The Pebble codec is byte-exact with the firmware and reads every real payload we have."""
from __future__ import annotations

import ast
import base64
import json
from pathlib import Path

import pytest

from gateway.codec import pebble
from gateway.codec.generate import TARGETS, generate
from gateway.errors import CodecError

SAMPLES = json.loads((Path(__file__).parents[1] / "data" / "pebble_samples.json").read_text())["samples"]


def test_vector_a_decodes_to_the_published_values(vectors):
    a = vectors["A"]
    package = pebble.decode_binpackage(bytes.fromhex(a["payload_hex"]))
    assert package.type == pebble.PackageType.DATA
    assert package.timestamp == 1718757942
    assert package.preimage.hex() == a["signed_preimage_hex"]
    data = pebble.decode_sensor_data(package.data)
    reading = data.reading()
    for name, expected in a["decoded"]["fields"].items():
        key = {"gasResistance": "gas_resistance"}.get(name, name)
        value = expected.get("scaled", expected["raw"])
        assert reading[key] == value, name
    assert data.temperature_encoding == "sint32"
    assert data.gps_fix


def test_vector_a_reencodes_byte_for_byte(vectors):
    a = vectors["A"]
    payload = bytes.fromhex(a["payload_hex"])
    package = pebble.decode_binpackage(payload)
    data = pebble.decode_sensor_data(package.data)
    assert pebble.encode_sensor_data(data) == package.data
    assert pebble.encode_binpackage(package) == payload


def test_vector_b_confirm_decodes_and_reencodes(vectors):
    b = vectors["B"]
    payload = bytes.fromhex(b["payload_hex"])
    confirm = pebble.decode_confirm(payload)
    assert confirm.owner_address.lower() == b["confirmpackage"]["owner"].lower()
    assert confirm.timestamp == 1718656562 and confirm.channel == 8183
    assert confirm.preimage.hex() == b["signed_preimage_hex"]
    assert pebble.encode_confirm(confirm) == payload


@pytest.mark.parametrize("name", ["D1", "D2"])
def test_both_temperature_encodings_are_told_apart(name):
    sample = SAMPLES[name]
    package = pebble.decode_binpackage(base64.b64decode(sample["payload_base64"]))
    data = pebble.decode_sensor_data(package.data)
    reading = data.reading()
    assert data.temperature_encoding == sample["temperature_encoding"]
    assert reading["temperature"] == sample["temperature"]
    assert reading["gps_fix"] is sample["gps_fix"]
    if sample["gps_fix"]:
        assert reading["latitude"] == sample["latitude"] and reading["longitude"] == sample["longitude"]
    else:
        assert reading["latitude"] is None and reading["longitude"] is None
    assert pebble.encode_sensor_data(data) == package.data


@pytest.mark.parametrize("encoding", ["uint32", "sint32"])
@pytest.mark.parametrize("centi", [2077, -1234, 0, -1])
def test_temperature_round_trips_in_both_encodings_including_negative(encoding, centi):
    data = pebble.SensorData(temperature=centi, temperature2=centi, random="00" * 8,
                             temperature_encoding=encoding)
    decoded = pebble.decode_sensor_data(pebble.encode_sensor_data(data))
    assert decoded.temperature == centi
    if centi not in (0,):  # 0 encodes identically both ways
        assert decoded.temperature_encoding == encoding


def test_imu_arrays_are_packed_on_encode_and_accepted_unpacked_on_decode():
    data = pebble.SensorData(gyroscope=(22, -8, 3), accelerometer=(-27, 8179, 177), random="ab" * 8)
    encoded = pebble.encode_sensor_data(data)
    # field 11, wire type 2 (packed): tag 0x5A, 3 bytes, zigzag 22 -8 3; then field 12 packed (0x62)
    assert encoded.startswith(bytes([0x5A, 3, 44, 15, 6, 0x62]))
    unpacked = bytes([0x58, 44, 0x58, 15, 0x58, 6])  # field 11 as three varints (zigzag)
    decoded = pebble.decode_sensor_data(unpacked)
    assert decoded.gyroscope == (22, -8, 3)


def test_no_gps_fix_sentinel_is_recognised():
    data = pebble.SensorData(latitude=pebble.NO_FIX, longitude=pebble.NO_FIX, random="cd" * 8)
    reading = pebble.decode_sensor_data(pebble.encode_sensor_data(data)).reading()
    assert reading["gps_fix"] is False and reading["latitude"] is None


def test_sensor_config_round_trips():
    config = pebble.SensorConfig(data_channel=0x1FF7, upload_period=60, firmware="Riverrock 1.0.14")
    assert pebble.decode_sensor_config(pebble.encode_sensor_config(config)) == config


@pytest.mark.parametrize("payload", [b"", b"\x08", b"\xff" * 40, b"garbage that is not protobuf"])
def test_garbage_is_a_codec_error_not_a_crash(payload):
    with pytest.raises(CodecError):
        pebble.decode_binpackage(payload)


def test_short_signature_is_malformed(vectors):
    package = pebble.decode_binpackage(bytes.fromhex(vectors["A"]["payload_hex"]))
    bad = pebble.encode_binpackage(pebble.BinPackage(0, package.data, package.timestamp, b"\x01" * 63))
    with pytest.raises(CodecError, match="signature is 63 bytes"):
        pebble.decode_binpackage(bad)


def test_g1_envelope_keeps_the_exact_signed_text(vectors):
    c = vectors["C"]
    message = pebble.decode_g1(c["payload_text"].encode())
    assert message.text == c["message_text"].encode()
    assert message.timestamp == 1621943329
    assert message.signature.hex().upper() == (c["signature"]["r_hex"] + c["signature"]["s_hex"]).upper()
    assert message.public_key.hex().upper() == c["public_key_uncompressed_hex"].upper()
    assert message.reading()["gps_fix"] is False


def test_g1_encoder_reproduces_cjson_number_text(vectors):
    c = vectors["C"]
    fields = json.loads(c["message_text"])  # float32 sensor values as doubles; ints stay ints
    assert pebble.float32(fields["humidity"]) == fields["humidity"]
    assert pebble.encode_g1_message(fields) == c["message_text"].encode()


def test_firmware_strings_map_to_profiles():
    assert pebble.profile_for_firmware("Riverrock 1.0.14").name == "riverrock-1.0.14"
    assert pebble.profile_for_firmware("Riverrock 1.0.12").temperature == "sint32"
    assert pebble.profile_for_firmware("Riverrock 1.0.9").temperature == "uint32"
    assert pebble.profile_for_firmware("Unknown 9") is None


def _serialized_descriptor(source: str) -> bytes:
    """The FileDescriptorProto a generated module registers, read from its text (both modules
    register the same file name, so their imported DESCRIPTORs cannot tell them apart)."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "AddSerializedFile":
            return ast.literal_eval(node.args[0])
    raise AssertionError("no AddSerializedFile call in the generated module")


@pytest.mark.parametrize("target", TARGETS, ids=lambda p: str(p.relative_to(p.parents[2])))
def test_generated_modules_match_the_proto(target):
    """The gateway's and the emulator's modules are both protoc's output for the one .proto."""
    assert _serialized_descriptor(target.read_text()) == _serialized_descriptor(generate())
