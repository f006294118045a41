"""The buffered record: what is kept of a verified message, and how to read it back.

A record keeps the payload exactly as the device sent it (base64) with the facts established
on arrival (device, kind, device time, digest, receive time, trust level). Decoded values are not
stored: they are derived from the payload when someone asks, so the record stays the evidence.
"""
from __future__ import annotations

import base64
import hashlib
import json
from datetime import datetime, timezone

from device_fw import frame as legacy_wire
from gateway.codec import pebble
from gateway.errors import CodecError
from gateway.legacy.attest import Attester
from gateway.legacy.verifier import LegacyFrame
from gateway.verify.verifier import Accepted

TRUST_SECURE_ELEMENT = "secure-element"  # signed in the device's secure element (Pebble)
TRUST_GATEWAY_ATTESTED = "gateway-attested"  # HMAC checked by this gateway, signed with its key
LEGACY_WIRE = "legacy"


def record_doc(accepted: Accepted, received: float) -> dict:
    return {
        "rx": received,
        "device": accepted.device.imei,
        "address": accepted.device.address,  # the signer, kept with the record: proofs need it
        "kind": accepted.kind,
        "wire": accepted.wire,
        "ts": accepted.timestamp,
        "digest": accepted.digest.hex(),
        "trust": TRUST_SECURE_ELEMENT,
        "payload": base64.b64encode(accepted.payload).decode(),
    }


def legacy_record_doc(checked: LegacyFrame, received: float, attester: Attester) -> dict:
    """A legacy device's frame, as received, with the gateway's attestation of it: ``address``
    is the attester's (the signer of the record, as a Pebble's own address is for its records)."""
    digest = hashlib.sha256(checked.frame).digest()
    received_ms = int(received * 1000)
    return {
        "rx": received_ms / 1000,  # the attestation covers the time in ms: keep exactly that
        "device": checked.device.device_id,
        "address": attester.address,
        "kind": checked.kind,
        "wire": LEGACY_WIRE,
        "ts": int(received),  # the device has no clock: gateway time
        "device_seq": checked.seq,
        "digest": digest.hex(),
        "trust": TRUST_GATEWAY_ATTESTED,
        "attestation": attester.attest(digest, received_ms).hex(),
        "payload": base64.b64encode(checked.frame).decode(),
    }


def payload_of(doc: dict) -> bytes:
    return base64.b64decode(doc["payload"])


def decode_record(doc: dict, profile: str | None = None) -> dict:
    """The record's values in units (a reading, a config report or an owner binding)."""
    raw = payload_of(doc)
    hint = pebble.PROFILES[profile].temperature if profile in pebble.PROFILES else None
    try:
        if doc.get("wire") == LEGACY_WIRE:
            values = json.loads(legacy_wire.parse(raw)[3])
            return values if isinstance(values, dict) else {"value": values}
        if doc.get("wire") == "json":
            return pebble.decode_g1(raw).reading()
        if doc["kind"] == "confirm":
            c = pebble.decode_confirm(raw)
            return {"owner": c.owner_address, "channel": c.channel}
        package = pebble.decode_binpackage(raw)
        if doc["kind"] == "config":
            return pebble.decode_sensor_config(package.data).reading()
        return pebble.decode_sensor_data(package.data, temperature_hint=hint).reading()
    except (CodecError, ValueError) as e:  # stored records were verified; only if the file was edited
        return {"error": str(e)}


def nonce_of(doc: dict) -> str | None:
    if doc["kind"] != "data" or doc.get("wire") == LEGACY_WIRE:
        return None
    return decode_record(doc).get("random")


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
