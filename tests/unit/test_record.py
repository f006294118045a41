"""One record type reads every buffered record (gateway/codec/record.py): each wire's adapter
gives the signature, the values for a profile, the nonce, the event type and the leaf fields,
and a record that no longer decodes says so instead of crashing its reader."""
from __future__ import annotations

import base64
import hashlib

import pytest

from device_fw import frame as wire
from gateway.codec.record import (
    FAMILY_EVENTS,
    Record,
    legacy_doc,
    pebble_doc,
    received_ms,
)
from gateway.errors import CodecError


def stored(vector, **extra) -> Record:
    kind = {"data": "data", "confirm": "confirm", "json": "data"}[vector["kind"]]
    doc = pebble_doc(device=vector["imei"] or "350000000000001", address=vector["address"], kind=kind,
                     wire="json" if vector["kind"] == "json" else "protobuf", timestamp=1718757942,
                     digest=bytes.fromhex(vector["sha256_hex"]), payload=base64.b64decode(vector["payload_base64"]),
                     received=1718757942.25)
    return Record({**doc, "seq": 1, **extra})


@pytest.mark.parametrize("name, wire_name, event", [("A", "protobuf", "PEBBLE_DATA"),
                                                    ("B", "protobuf", "PEBBLE_CONFIRM"),
                                                    ("C", "json", "PEBBLE_DATA")])
def test_each_pebble_wire_gives_the_devices_signature_and_its_event(vectors, name, wire_name, event):
    v = vectors[name]
    record = stored(v)
    assert record.wire.name == wire_name and record.family == "pebble"
    assert record.signature == bytes.fromhex(v["signature"]["r_hex"] + v["signature"]["s_hex"])
    assert record.event_type == event
    assert record.leaf_fields(v["address"]) == {
        "address": v["address"], "signature": record.signature.hex(),
        "payload_sha256": hashlib.sha256(base64.b64decode(v["payload_base64"])).hexdigest(),
        "received_ms": received_ms(1718757942.25)}


def test_values_and_nonce_come_from_the_payload_in_units(vectors):
    reading = stored(vectors["A"]).values("riverrock")
    assert set(reading) >= {"temperature", "humidity", "pressure", "gps_fix", "random"}
    assert stored(vectors["A"]).nonce() == reading["random"]
    confirm = vectors["B"]["confirmpackage"]
    assert stored(vectors["B"]).values() == {"owner": "0x" + confirm["owner_hex"], "channel": confirm["channel"]}
    assert stored(vectors["B"]).nonce() is None  # a confirm has no nonce
    g1 = stored(vectors["C"])
    assert g1.nonce() == g1.values()["random"] and g1.values()["vbat"] == 4.167


def attested(kind_type: int, payload: bytes) -> Record:
    frame = wire.cobs_decode(wire.encode(kind_type, bytes(8), 7, payload, bytes(32))[1:-1])
    kind = {wire.READING: "data", wire.HELLO: "hello", wire.CONFIG_ACK: "config_ack",
            wire.COMMAND_ACK: "command_ack"}[kind_type]
    doc = legacy_doc(device=bytes(8).hex(), attester="0x" + "ab" * 20, kind=kind, device_seq=7, frame=frame,
                     digest=hashlib.sha256(frame).digest(), received_ms=1767225600123, attestation=bytes(range(65)))
    return Record({**doc, "seq": 9})


def test_a_legacy_record_is_signed_by_the_gateways_attestation_and_reads_its_frame():
    record = attested(wire.READING, b'{"temperature":21.5,"up":60}')
    assert record.family == "legacy" and record.event_type == "LEGACY_DATA"
    assert record.signature == bytes(range(64))  # r||s of the attestation; v is not in the leaf
    assert record.values() == {"temperature": 21.5, "up": 60} and record.nonce() is None
    assert record.doc["rx"] == 1767225600.123 and record.doc["ts"] == 1767225600
    assert attested(wire.HELLO, b'{"fw":"w3gate-fw 0.1"}').event_type == "LEGACY_HELLO"
    assert attested(wire.CONFIG_ACK, b'[1]').values() == {"value": [1]}
    assert attested(wire.COMMAND_ACK, b'{"relay":1,"command_seq":3}').event_type == "LEGACY_COMMAND"


def test_a_record_says_which_family_made_it_even_when_edited(vectors):
    assert stored(vectors["A"]).of("pebble") and not stored(vectors["A"]).of("legacy")
    assert attested(wire.READING, b"{}").of("legacy")
    assert not stored(vectors["A"], wire="carrier-pigeon").of("pebble")  # no family: nobody's to remember


def test_every_event_type_belongs_to_one_family():
    assert FAMILY_EVENTS == {"pebble": ["PEBBLE_CONFIG", "PEBBLE_CONFIRM", "PEBBLE_DATA"],
                             "legacy": ["LEGACY_COMMAND", "LEGACY_CONFIG", "LEGACY_DATA", "LEGACY_HELLO"]}


@pytest.mark.parametrize("edit", [
    {"payload": base64.b64encode(b"\xff\x00garbage").decode()},
    {"payload": "not base64!"},
    {"wire": "legacy", "payload": base64.b64encode(b"short").decode()},
])
def test_a_record_edited_on_disk_reads_as_an_error_not_a_crash(vectors, edit):
    record = stored(vectors["A"], **edit)
    assert "error" in record.values() and record.nonce() is None
    with pytest.raises(CodecError):
        record.signature


def test_an_unknown_wire_or_kind_is_a_codec_error(vectors):
    with pytest.raises(CodecError, match="unknown wire"):
        stored(vectors["A"], wire="carrier-pigeon").family
    with pytest.raises(CodecError, match="no event"):
        stored(vectors["A"], kind="state").event_type


def test_a_capture_reads_like_a_record(vectors):
    v = vectors["C"]
    capture = Record.capture(base64.b64decode(v["payload_base64"]), "json", "data")
    assert capture.signature == stored(v).signature and capture.values() == stored(v).values()
