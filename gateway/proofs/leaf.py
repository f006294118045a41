"""The record leaf: what a proof commits to about one buffered record (docs/proofs.md, "The
record leaf" and "From a buffered record to its leaf"). A third party holding the record derives
the same fields, so this is the specification in code."""
from __future__ import annotations

from collections.abc import Callable

from web3 import Web3

from gateway.codec.record import Record
from gateway.proofs import merkle
from gateway.proofs.errors import AnchorError


def leaf_fields(doc: dict, address: str) -> dict:
    """What the leaf commits to, as a verifier receives it (docs/proofs.md, proof file)."""
    return Record(doc).leaf_fields(Web3.to_checksum_address(address))


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
