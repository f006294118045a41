"""The buffered record: what is kept of a verified message, and how each wire's payload is read.

A record keeps the payload exactly as the device sent it (base64) with the facts established on
arrival: device, kind, wire, device time, digest, receive time, trust level (and for a legacy
sensor the gateway's attestation). Decoded values are not stored: they are derived from the
payload when asked for, so the record stays the evidence. This module is the one place that
knows that format; the buffer, the applets' device events, proofs, the CLI and the demo all read
records through ``Record``, and each wire has one adapter saying how its payload is read:

    wire        kinds                    signature                   event types
    protobuf    data, config, confirm    the Pebble's, in the payload  PEBBLE_DATA|CONFIG|CONFIRM
    json (G1)   data                     the Pebble's, in the payload  PEBBLE_DATA
    legacy      data, hello, config_ack, the gateway's attestation    LEGACY_DATA|HELLO|CONFIG|
                command_ack                                            COMMAND

It lives with the codecs, below everything that stores or reads records, so the sources that
make records and the layers that read them import it without importing each other.
"""
from __future__ import annotations

import base64
import hashlib
import json
import math
from typing import Any, ClassVar

from device_fw import frame as legacy_frame
from gateway.codec import pebble
from gateway.errors import CodecError

TRUST_SECURE_ELEMENT = "secure-element"  # signed in the device's secure element (Pebble)
TRUST_GATEWAY_ATTESTED = "gateway-attested"  # HMAC checked by this gateway, signed with its key


def received_ms(rx: float) -> int:
    """A record's receive time as proofs and attestations carry it: ``rx`` (float seconds) in
    whole milliseconds, rounded half up: floor(rx * 1000 + 0.5) in IEEE-754 doubles (the same in
    any language; docs/proofs.md)."""
    return math.floor(rx * 1000 + 0.5)


class Wire:
    """How one wire's payload is read. ``decode`` returns the codec's message for a kind; the
    other methods read that message."""

    name: str
    family: str  # "pebble" or "legacy": which source made it, which events it becomes
    events: ClassVar[dict[str, str]]  # kind -> applet event type

    def decode(self, payload: bytes, kind: str) -> Any:
        raise NotImplementedError

    def signature(self, message: Any, doc: dict) -> bytes:
        """The 64-byte r||s the record's leaf commits to."""
        return message.signature

    def values(self, message: Any, kind: str, profile: str | None) -> dict:
        raise NotImplementedError

    def nonce(self, message: Any, kind: str) -> str | None:
        """The device's random nonce of a reading (replay protection), if the wire has one."""
        return None


class ProtobufWire(Wire):
    """Pebble firmware 1.x/2.x: a protobuf ``BinPackage`` (data, config) or ``ConfirmPackage``."""

    name, family = "protobuf", "pebble"
    events = {"data": "PEBBLE_DATA", "config": "PEBBLE_CONFIG", "confirm": "PEBBLE_CONFIRM"}

    def decode(self, payload: bytes, kind: str) -> pebble.BinPackage | pebble.ConfirmPackage:
        return pebble.decode_confirm(payload) if kind == "confirm" else pebble.decode_binpackage(payload)

    def values(self, message: Any, kind: str, profile: str | None) -> dict:
        if kind == "confirm":
            return {"owner": message.owner_address, "channel": message.channel}
        if kind == "config":
            return pebble.decode_sensor_config(message.data).reading()
        hint = pebble.PROFILES[profile].temperature if profile in pebble.PROFILES else None
        return pebble.decode_sensor_data(message.data, temperature_hint=hint).reading()

    def nonce(self, message: Any, kind: str) -> str | None:
        return pebble.decode_sensor_data(message.data).random if kind == "data" else None


class G1JsonWire(Wire):
    """Pebble G1 firmware: signed JSON, values already in units."""

    name, family = "json", "pebble"
    events = {"data": "PEBBLE_DATA"}

    def decode(self, payload: bytes, kind: str) -> pebble.G1Message:
        return pebble.decode_g1(payload)

    def values(self, message: Any, kind: str, profile: str | None) -> dict:
        return message.reading()

    def nonce(self, message: Any, kind: str) -> str | None:
        return message.random


class LegacyWire(Wire):
    """A serial or BLE sensor's frame (device_fw/frame.py), checked by its HMAC and attested by
    the gateway: the signature is the attestation's r||s, kept beside the frame."""

    name, family = "legacy", "legacy"
    events = {"data": "LEGACY_DATA", "hello": "LEGACY_HELLO", "config_ack": "LEGACY_CONFIG",
              "command_ack": "LEGACY_COMMAND"}

    def decode(self, payload: bytes, kind: str) -> bytes:
        if len(payload) < legacy_frame.HEADER:
            raise CodecError(f"a legacy frame of {len(payload)} bytes is shorter than its header")
        return legacy_frame.parse(payload)[3]

    def signature(self, message: Any, doc: dict) -> bytes:
        return bytes.fromhex(doc["attestation"])[:64]

    def values(self, message: Any, kind: str, profile: str | None) -> dict:
        values = json.loads(message)
        return values if isinstance(values, dict) else {"value": values}


WIRES: dict[str, Wire] = {w.name: w for w in (ProtobufWire(), G1JsonWire(), LegacyWire())}
FAMILY_EVENTS = {family: sorted({e for w in WIRES.values() if w.family == family for e in w.events.values()})
                 for family in ("pebble", "legacy")}


class Record:
    """One buffered record (its stored document), read through its wire's adapter. The payload
    is decoded at most once per ``Record``; a payload that no longer decodes (a file edited by
    hand: stored records were verified) raises ``CodecError``, except in ``values``."""

    __slots__ = ("doc", "_message")

    def __init__(self, doc: dict) -> None:
        self.doc = doc
        self._message: Any = None

    @classmethod
    def capture(cls, payload: bytes, wire: str, kind: str) -> Record:
        """A payload captured off the air, read as a record would be (``w3gate pebble decode``)."""
        return cls({"wire": wire, "kind": kind, "payload": base64.b64encode(payload).decode()})

    @property
    def wire(self) -> Wire:
        name = self.doc.get("wire", "protobuf")  # the oldest records predate the field
        try:
            return WIRES[name]
        except (KeyError, TypeError):
            raise CodecError(f"record {self.doc.get('seq')}: unknown wire {name!r}") from None

    @property
    def family(self) -> str:
        return self.wire.family

    def of(self, family: str) -> bool:
        """Whether the record came from that device family (False for a wire edited by hand)."""
        return self.doc.get("wire", "protobuf") in WIRES and self.wire.family == family

    @property
    def kind(self) -> str:
        return self.doc["kind"]

    @property
    def payload(self) -> bytes:
        return base64.b64decode(self.doc["payload"])

    @property
    def message(self) -> Any:
        """The payload decoded by the wire's codec (BinPackage, ConfirmPackage, G1Message or the
        legacy frame's JSON bytes)."""
        if self._message is None:
            try:
                self._message = self.wire.decode(self.payload, self.kind)
            except (ValueError, legacy_frame.FrameError) as e:  # binascii.Error is a ValueError
                raise CodecError(f"record {self.doc.get('seq')}: {e}") from None
        return self._message

    @property
    def signature(self) -> bytes:
        return self.wire.signature(self.message, self.doc)

    @property
    def event_type(self) -> str:
        try:
            return self.wire.events[self.kind]
        except KeyError:
            raise CodecError(f"record {self.doc.get('seq')}: no event for a {self.wire.name} {self.kind!r}") from None

    def nonce(self) -> str | None:
        """The reading's random nonce; None when it has none or no longer decodes."""
        try:
            return self.wire.nonce(self.message, self.kind)
        except CodecError:
            return None

    def values(self, profile: str | None = None) -> dict:
        """The record's values in units (a reading, a config report or an owner binding);
        ``{"error": reason}`` for a record that no longer decodes."""
        try:
            return self.wire.values(self.message, self.kind, profile)
        except (CodecError, ValueError) as e:
            return {"error": str(e)}

    def leaf_fields(self, address: str) -> dict:
        """What a proof's leaf commits to (docs/proofs.md): the signer's address as given, the
        signature, the payload's sha256 and the receive time in ms."""
        return {"address": address, "signature": self.signature.hex(),
                "payload_sha256": hashlib.sha256(self.payload).hexdigest(),
                "received_ms": received_ms(self.doc["rx"])}


def pebble_doc(*, device: str, address: str, kind: str, wire: str, timestamp: int, digest: bytes,
               payload: bytes, received: float) -> dict:
    """A verified Pebble message as a record: ``address`` is the device's, the signer."""
    return {"rx": received, "device": device, "address": address, "kind": kind, "wire": wire, "ts": timestamp,
            "digest": digest.hex(), "trust": TRUST_SECURE_ELEMENT, "payload": base64.b64encode(payload).decode()}


def legacy_doc(*, device: str, attester: str, kind: str, device_seq: int, frame: bytes, digest: bytes,
               received_ms: int, attestation: bytes) -> dict:
    """A legacy sensor's frame as received, with the gateway's attestation of its sha256
    (``digest``) and ``received_ms``: ``address`` is the attester's (the record's signer)."""
    return {"rx": received_ms / 1000,  # the attestation covers the time in ms: keep exactly that
            "device": device, "address": attester, "kind": kind, "wire": LegacyWire.name,
            "ts": received_ms // 1000,  # the device has no clock: gateway time
            "device_seq": device_seq, "digest": digest.hex(), "trust": TRUST_GATEWAY_ATTESTED,
            "attestation": attestation.hex(), "payload": base64.b64encode(frame).decode()}
