"""The buffered record: what is kept of a verified message, and how to read it back.

A record keeps the payload exactly as the device sent it (base64) with the facts established
on arrival (device, kind, device time, digest, receive time, trust level). Decoded values are not
stored: they are derived from the payload when someone asks, so the record stays the evidence.
"""
from __future__ import annotations

import base64
from datetime import datetime, timezone

from gateway.codec import pebble
from gateway.errors import CodecError
from gateway.verify.verifier import Accepted

TRUST_SECURE_ELEMENT = "secure-element"


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


def payload_of(doc: dict) -> bytes:
    return base64.b64decode(doc["payload"])


def decode_record(doc: dict, profile: str | None = None) -> dict:
    """The record's values in units (a reading, a config report or an owner binding)."""
    raw = payload_of(doc)
    hint = pebble.PROFILES[profile].temperature if profile in pebble.PROFILES else None
    try:
        if doc.get("wire") == "json":
            return pebble.decode_g1(raw).reading()
        if doc["kind"] == "confirm":
            c = pebble.decode_confirm(raw)
            return {"owner": c.owner_address, "channel": c.channel}
        package = pebble.decode_binpackage(raw)
        if doc["kind"] == "config":
            return pebble.decode_sensor_config(package.data).reading()
        return pebble.decode_sensor_data(package.data, temperature_hint=hint).reading()
    except CodecError as e:  # stored records were verified; this only happens if the file was edited
        return {"error": str(e)}


def nonce_of(doc: dict) -> str | None:
    if doc["kind"] != "data":
        return None
    return decode_record(doc).get("random")


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
