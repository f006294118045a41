"""The record leaf: what a proof commits to about one buffered record (docs/proofs.md, "The
record leaf" and "From a buffered record to its leaf"). A third party holding the record derives
the same fields, so this is the specification in code."""
from __future__ import annotations

import base64
import hashlib
import math
from collections.abc import Callable

from web3 import Web3

from gateway.codec import pebble
from gateway.proofs import merkle
from gateway.proofs.errors import AnchorError


def received_ms(rx: float) -> int:
    """The leaf's receive time: the record's ``rx`` (float seconds) in whole milliseconds,
    rounded half up: floor(rx * 1000 + 0.5) in IEEE-754 doubles (the same in any language)."""
    return math.floor(rx * 1000 + 0.5)


def signature_of(doc: dict) -> bytes:
    """The record's 64-byte r||s: the device's, taken from the payload exactly as received, or
    for a legacy device the gateway's attestation."""
    if doc.get("attestation"):  # a legacy device's record: the gateway signed it (gateway/legacy/attest.py)
        return bytes.fromhex(doc["attestation"])[:64]
    payload = base64.b64decode(doc["payload"])
    if doc.get("kind") == "confirm":
        return pebble.decode_confirm(payload).signature
    if doc.get("wire") == "json":
        return pebble.decode_g1(payload).signature
    return pebble.decode_binpackage(payload).signature


def leaf_fields(doc: dict, address: str) -> dict:
    """What the leaf commits to, as a verifier receives it (docs/proofs.md, proof file)."""
    payload = base64.b64decode(doc["payload"])
    return {"address": Web3.to_checksum_address(address), "signature": signature_of(doc).hex(),
            "payload_sha256": hashlib.sha256(payload).hexdigest(), "received_ms": received_ms(doc["rx"])}


def record_leaf(doc: dict, address: str) -> bytes:
    """The record's leaf hash (keccak-256 of the 125 bytes of docs/proofs.md)."""
    f = leaf_fields(doc, address)
    return merkle.leaf(f["address"], bytes.fromhex(f["signature"]), bytes.fromhex(f["payload_sha256"]),
                       f["received_ms"])


def addresses_from(registry) -> Callable[[dict], str]:
    """Device address of a record: the record's own "address" when it has one, else the device
    registry's entry for its IMEI (gateway/verify/registry.py)."""
    def address_of(doc: dict) -> str:
        if doc.get("address"):
            return doc["address"]
        registry.reload()
        device = registry.get(doc["device"])
        if device is None:
            raise AnchorError(f"record {doc.get('seq')}: device {doc['device']} is not in the registry, "
                              "so its address (part of the leaf) is unknown", reason="unknown_device")
        return device.address
    return address_of
