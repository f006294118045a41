"""secp256k1 ECDSA as the Pebble uses it: SHA-256 digests, raw 64-byte r||s, either half of s.

coincurve (libsecp256k1) does the curve work: ~20k verifications/s per core, against ~3.7k for
pyca/cryptography on this curve, and it has public-key recovery, which pyca lacks. libsecp256k1
only accepts low-S signatures, so s is normalised first; Riverrock 1.0.14 signs high-S.
"""
from __future__ import annotations

import os

from coincurve import PrivateKey, PublicKey
from coincurve.context import GLOBAL_CONTEXT
from coincurve.ecdsa import ffi, lib
from Crypto.Hash import keccak

N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
HALF_N = N // 2
_CTX = GLOBAL_CONTEXT.ctx


class Key:
    """A parsed public key, kept per device so the steady state is a single verification."""

    __slots__ = ("public_key", "address", "_cdata")

    def __init__(self, public_key: bytes) -> None:
        pk = PublicKey(public_key)
        self.public_key = pk.format(compressed=False)
        self.address = address_of(self.public_key)
        self._cdata = pk.public_key

    def verify(self, digest: bytes, signature: bytes) -> bool:
        """True when ``signature`` (r||s, low or high S) signs the 32-byte ``digest``."""
        return verify_parsed(self._cdata, digest, signature)


def parse_public_key(public_key: bytes):
    """libsecp256k1's parsed form of a public key (raises ValueError when it is not on the curve)."""
    return PublicKey(public_key).public_key


def verify_parsed(parsed_key, digest: bytes, signature: bytes) -> bool:
    """The one verification: a raw r||s signature of a 32-byte digest under a parsed key."""
    sig = ffi.new("secp256k1_ecdsa_signature *")
    if len(signature) != 64 or not lib.secp256k1_ecdsa_signature_parse_compact(_CTX, sig, signature):
        return False
    lib.secp256k1_ecdsa_signature_normalize(_CTX, sig, sig)  # libsecp256k1 wants low S; 1.0.14 signs high S
    return bool(lib.secp256k1_ecdsa_verify(_CTX, sig, digest, parsed_key))


def keccak256(data: bytes) -> bytes:
    return keccak.new(digest_bits=256, data=data).digest()


def checksum_address(raw20: bytes) -> str:
    """EIP-55 mixed-case address."""
    hexaddr = raw20.hex()
    digest = keccak256(hexaddr.encode()).hex()
    return "0x" + "".join(c.upper() if int(digest[i], 16) >= 8 else c for i, c in enumerate(hexaddr))


def address_of(public_key: bytes) -> str:
    """Ethereum-style address of a public key: keccak256(X||Y)[12:]."""
    if len(public_key) != 65:
        public_key = PublicKey(public_key).format(compressed=False)
    return checksum_address(keccak256(public_key[1:])[12:])


def normalize_address(address: str) -> str:
    """Checksum form of a 0x address; raises ValueError when it is not 20 bytes of hex."""
    raw = bytes.fromhex(address[2:] if address.lower().startswith("0x") else address)
    if len(raw) != 20:
        raise ValueError(f"an address is 20 bytes, got {len(raw)}")
    return checksum_address(raw)


def recover(digest: bytes, signature: bytes) -> list[tuple[int, Key]]:
    """Every (v, public key) with v in {0, 1} that ``signature`` could have come from."""
    keys: list[tuple[int, Key]] = []
    if len(signature) != 64:
        return keys
    for v in (0, 1):
        try:
            pk = PublicKey.from_signature_and_message(signature + bytes([v]), digest, hasher=None)
        except Exception:  # noqa: BLE001 - libsecp256k1 reports "cannot recover" as a bare Exception
            continue
        keys.append((v, Key(pk.format(compressed=False))))
    return keys


def recovery_id(digest: bytes, signature: bytes, public_key: bytes) -> int | None:
    """The v that recovers ``public_key``, for 65-byte r||s||v forms (contracts, ecrecover)."""
    wanted = PublicKey(public_key).format(compressed=False)
    for v, key in recover(digest, signature):
        if key.public_key == wanted:
            return v
    return None


def flip_s(signature: bytes) -> bytes:
    """The other valid form of the same signature: (r, n - s)."""
    s = int.from_bytes(signature[32:], "big")
    return signature[:32] + (N - s).to_bytes(32, "big")


def is_low_s(signature: bytes) -> bool:
    return int.from_bytes(signature[32:], "big") <= HALF_N


def sign(private_key: PrivateKey, digest: bytes, *, low_s: bool = True) -> bytes:
    """Sign a digest as a device does: 64-byte r||s; high-S half the time when ``low_s`` is off,
    as a signer that does not normalise (Riverrock 1.0.14) produces."""
    sig = private_key.sign_recoverable(digest, hasher=None)[:64]  # libsecp256k1 output is low-S
    if not low_s and os.urandom(1)[0] & 1:
        sig = flip_s(sig)
    return sig
