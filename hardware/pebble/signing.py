"""How a Pebble signs, written for the emulator alone: secp256k1 ECDSA over a SHA-256 digest,
raw 64-byte r||s, s in the lower half of the curve order or not, as the profile says.

coincurve (libsecp256k1) signs; eth-utils makes the Ethereum-style address the gateway registers.
Nothing here comes from the gateway's verifier, so a mistake there cannot pass on both sides.
See docs/pebble-wire.md ("Signatures").
"""
from __future__ import annotations

import secrets

from coincurve import PrivateKey
from eth_utils import keccak, to_checksum_address

N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141  # secp256k1 group order


def sign(private_key: PrivateKey, digest: bytes, *, low_s: bool) -> bytes:
    """r||s of a 32-byte digest. libsecp256k1 always gives low S; a signer that does not
    normalise (Riverrock 1.0.14, G1) has a high S half the time, so s becomes n - s on a coin toss."""
    signature = private_key.sign_recoverable(digest, hasher=None)[:64]
    if not low_s and secrets.randbits(1):
        s = N - int.from_bytes(signature[32:], "big")
        signature = signature[:32] + s.to_bytes(32, "big")
    return signature


def address_of(public_key: bytes) -> str:
    """EIP-55 address of an uncompressed public key 04||X||Y: keccak256(X||Y)[12:]."""
    return to_checksum_address(keccak(public_key[1:])[12:])


def normalize_address(address: str) -> str:
    """EIP-55 form of a 20-byte hex address (0x optional); ValueError when it is not one."""
    if not isinstance(address, str):
        raise ValueError(f"an address is hex text, got {type(address).__name__}")
    return to_checksum_address(address if address[:2].lower() == "0x" else "0x" + address)
