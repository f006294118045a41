"""Readings sealed to a buyer: X25519, HKDF-SHA256 and ChaCha20-Poly1305 (pyca/cryptography),
in the manner of HPKE's base mode (docs/market.md, "Encryption").

Why this shape: the buyer named one X25519 public key when paying; the gateway makes one
ephemeral key per purchase (derived from its node key, so a restart seals the same way without
keeping a secret on disk), and each message names its counter, so any single message can be
opened on its own by the buyer and by nobody else. The associated data binds a ciphertext to its
chain, market, purchase, counter and record leaf: a message moved to another purchase, reordered
or given another leaf does not open.

A message on the wire is compact JSON::

    {"v": 1, "chain": 31337, "market": "0x…", "purchase": 7, "kind": "reading", "n": 0,
     "leaf": "<hex>", "epk": "<hex of the gateway's ephemeral X25519 public key>", "ct": "<base64>"}

``kind`` "reading": the plaintext is the reading (gateway/market/delivery.py ``reading``);
"proof": the Merkle proof of reading ``n``'s record once it is anchored (a ``w3gate proof``
file). Each kind has its own nonce space (the kind is the nonce's first byte), so a reading and
its proof never share a nonce, and the kind is in the associated data.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import (
    X25519PrivateKey,
    X25519PublicKey,
)
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from gateway.errors import W3gateError
from gateway.storage import atomic_write

VERSION = 1
LABEL = b"w3gate market v1"
MAX_MESSAGE = 64 * 1024  # a reading is far smaller; larger input is refused before parsing
RAW = serialization.Encoding.Raw


class SealError(W3gateError):
    reason = "sealed_message"


def public_bytes(key: X25519PrivateKey | X25519PublicKey) -> bytes:
    public = key.public_key() if isinstance(key, X25519PrivateKey) else key
    return public.public_bytes(RAW, serialization.PublicFormat.Raw)


def _context(chain_id: int, market: str, purchase: int) -> bytes:
    return (LABEL + chain_id.to_bytes(8, "big") + bytes.fromhex(market.removeprefix("0x"))
            + purchase.to_bytes(8, "big"))


def _aead(shared: bytes, epk: bytes, buyer: bytes, context: bytes) -> ChaCha20Poly1305:
    """The purchase's key: HKDF over the shared secret, salted with both public keys."""
    key = HKDF(hashes.SHA256(), 32, salt=epk + buyer, info=context).derive(shared)
    return ChaCha20Poly1305(key)


KINDS = {"reading": 0, "proof": 1}


def _nonce(kind: str, counter: int) -> bytes:
    return bytes([KINDS[kind]]) + bytes(3) + counter.to_bytes(8, "big")


def _aad(context: bytes, kind: str, counter: int, leaf: bytes) -> bytes:
    return context + bytes([KINDS[kind]]) + counter.to_bytes(8, "big") + leaf


def ephemeral_key(node_secret: bytes, chain_id: int, market: str, purchase: int) -> X25519PrivateKey:
    """The gateway's key for one purchase: a function of its node key and the purchase, so it
    survives restarts and differs for every purchase."""
    seed = hmac.new(node_secret, _context(chain_id, market, purchase), hashlib.sha256).digest()
    return X25519PrivateKey.from_private_bytes(seed)


class Sealer:
    """Seals one purchase's readings to its buyer."""

    def __init__(self, ephemeral: X25519PrivateKey, buyer_public: bytes, chain_id: int, market: str,
                 purchase: int) -> None:
        if len(buyer_public) != 32:
            raise SealError(f"an X25519 public key is 32 bytes, got {len(buyer_public)}", reason="bad_key")
        self.header = {"v": VERSION, "chain": chain_id, "market": market.lower(), "purchase": purchase}
        self._context = _context(chain_id, market, purchase)
        self._epk = public_bytes(ephemeral)
        try:
            shared = ephemeral.exchange(X25519PublicKey.from_public_bytes(buyer_public))
        except ValueError as e:  # an all-zero or low-order point: no secret to share
            raise SealError(f"the buyer's key is unusable: {e}", reason="bad_key") from None
        self._aead = _aead(shared, self._epk, buyer_public, self._context)

    def seal(self, counter: int, leaf: bytes, plaintext: bytes, kind: str = "reading") -> bytes:
        ct = self._aead.encrypt(_nonce(kind, counter), plaintext, _aad(self._context, kind, counter, leaf))
        return json.dumps({**self.header, "kind": kind, "n": counter, "leaf": leaf.hex(), "epk": self._epk.hex(),
                           "ct": base64.b64encode(ct).decode()}, separators=(",", ":")).encode()


def open_message(buyer: X25519PrivateKey, raw: bytes, *, chain_id: int, market: str, purchase: int) -> dict:
    """The buyer's side: the message's counter, leaf and plaintext, or SealError saying why not
    (not for this purchase, malformed, or not sealed to this key / tampered)."""
    if len(raw) > MAX_MESSAGE:
        raise SealError(f"{len(raw)} bytes is larger than any sealed reading", reason="too_large")
    try:
        m = json.loads(raw)
        header = (m["v"], m["chain"], str(m["market"]).lower(), m["purchase"])
        kind, counter, leaf, epk = m["kind"], m["n"], bytes.fromhex(m["leaf"]), bytes.fromhex(m["epk"])
        ct = base64.b64decode(m["ct"], validate=True)
    except (ValueError, KeyError, TypeError, binascii.Error) as e:
        raise SealError(f"not a sealed reading: {e}", reason="malformed") from None
    if header != (VERSION, chain_id, market.lower(), purchase):
        raise SealError(f"sealed for {header}, not for purchase {purchase} of {market} on chain {chain_id}",
                        reason="other_purchase")
    if not (isinstance(counter, int) and 0 <= counter < 1 << 64 and len(leaf) == 32 and len(epk) == 32
            and isinstance(kind, str) and kind in KINDS):
        raise SealError("kind, counter, leaf or key out of range", reason="malformed")
    context = _context(chain_id, market, purchase)
    try:
        shared = buyer.exchange(X25519PublicKey.from_public_bytes(epk))
        plaintext = _aead(shared, epk, public_bytes(buyer), context).decrypt(
            _nonce(kind, counter), ct, _aad(context, kind, counter, leaf))
    except (InvalidTag, ValueError):
        raise SealError("does not open with this key (sealed to someone else, or altered)",
                        reason="not_for_this_key") from None
    return {"kind": kind, "n": counter, "leaf": leaf, "plaintext": plaintext}


# -- the buyer's key file --------------------------------------------------------------------------

def new_key_file(path: str | os.PathLike) -> X25519PrivateKey:
    """A new X25519 key, written as hex to ``path`` (0600; an existing file is never replaced)."""
    path = Path(path)
    if path.exists():
        raise SealError(f"{path} exists: a key file is never overwritten", reason="exists")
    key = X25519PrivateKey.generate()
    raw = key.private_bytes(RAW, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    atomic_write(path, (raw.hex() + "\n").encode(), mode=0o600)
    return key


def read_key_file(path: str | os.PathLike) -> X25519PrivateKey:
    text = Path(path).read_text(errors="replace").strip()
    try:
        raw = bytes.fromhex(text.removeprefix("0x"))
        if len(raw) != 32:
            raise ValueError(f"{len(raw)} bytes")
    except ValueError as e:
        raise SealError(f"{path}: not an X25519 key file (64 hex digits): {e}", reason="bad_key") from None
    return X25519PrivateKey.from_private_bytes(raw)
