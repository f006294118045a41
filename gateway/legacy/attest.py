"""The gateway vouches for what it verified: legacy records are signed with the node key.

A legacy device authenticates its frames with a shared HMAC key, which proves nothing to a third
party (the gateway holds the key too). So the gateway signs each verified frame with its own
secp256k1 key, the one behind its ``did:io`` and its anchors: the record's evidence is then
"this gateway saw these exact bytes from a device it had paired, at this time", and its trust
level says so (``gateway-attested``). The signed digest (docs/proofs.md):

    sha256("w3gate/attestation/v1" 0x00 || sha256(frame) || receive time, ms, uint64 big-endian)
"""
from __future__ import annotations

import hashlib

from coincurve import PrivateKey

from gateway.codec.record import legacy_doc
from gateway.legacy.verifier import LegacyFrame
from gateway.verify.secp256k1 import address_of, sign

DOMAIN = b"w3gate/attestation/v1\x00"


def attestation_digest(payload_sha256: bytes, received_ms: int) -> bytes:
    return hashlib.sha256(DOMAIN + payload_sha256 + received_ms.to_bytes(8, "big")).digest()


class Attester:
    """Signs with the node key (unlocked once at start; the key never leaves this object)."""

    def __init__(self, private_key: bytes) -> None:
        self._key = PrivateKey(private_key)
        self.address = address_of(self._key.public_key.format(compressed=False))

    def attest(self, payload_sha256: bytes, received_ms: int) -> bytes:
        """64 bytes r||s (low-S) over ``attestation_digest``; the signer is ``address``."""
        return sign(self._key, attestation_digest(payload_sha256, received_ms))

    def record(self, checked: LegacyFrame, received: float) -> dict:
        """The frame as a record (gateway/codec/record.py), attested at ``received`` (in ms)."""
        digest, ms = hashlib.sha256(checked.frame).digest(), int(received * 1000)
        return legacy_doc(device=checked.device.device_id, attester=self.address, kind=checked.kind,
                          device_seq=checked.seq, frame=checked.frame, digest=digest, received_ms=ms,
                          attestation=self.attest(digest, ms))

    def __repr__(self) -> str:
        return f"Attester({self.address})"
