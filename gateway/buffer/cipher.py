"""Encryption at rest of buffered payloads (``[buffer] encrypt_at_rest``; docs/proofs.md,
"Encryption and the leaf").

Why this shape:

- Only a record's ``payload`` is encrypted. The fields the store filters on (seq, rx, device) and
  the facts established on arrival stay in the clear, so a read still picks records without
  opening any, and damage checks and recovery (``integrity``) never need the key.
- One random 256-bit data key (sealed to the node key: ``gateway.chain.datakey``) and
  ChaCha20-Poly1305 with a random 96-bit nonce per record. The associated data is the record's
  seq and device, so a ciphertext copied into another record does not open there.
- What is encrypted is the payload's bytes (the stored text is their base64), behind one byte that
  says so; a payload text that is not canonical base64 is encrypted as text instead, so a read
  gives back exactly the text that was written.
- Stored as ``"payload_enc": "<key id>:<base64 of nonce || ciphertext>"`` in place of ``payload``.
  The key id (8 hex digits of a hash of the data key) tells "written under another data key"
  from "altered" when a record does not open.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import os

from gateway.errors import W3gateError

__all__ = ["ENCRYPTED", "KEY_BYTES", "RecordCipher", "RecordCipherError", "key_id"]

ENCRYPTED = "payload_enc"  # the stored field that replaces "payload"
KEY_BYTES = 32
NONCE_BYTES = 12
_AAD = b"w3gate record payload v1"
_RAW, _TEXT = b"\x00", b"\x01"  # first plaintext byte: base64-decoded bytes, or the text as written


class RecordCipherError(W3gateError):
    """An encrypted payload that does not open; ``reason`` says why (``wrong_data_key``,
    ``tampered``, ``malformed``, ``no_data_key``)."""

    reason = "unreadable_payload"


def key_id(data_key: bytes) -> str:
    """A short public name of a data key (8 hex digits): which key a record was written with."""
    return hashlib.sha256(b"w3gate data key id" + data_key).hexdigest()[:8]


def _aad(seq: int, device: object) -> bytes:
    return _AAD + seq.to_bytes(8, "big") + str(device if device is not None else "").encode()


class RecordCipher:
    """Encrypts payloads on append and opens them on read, with one data key.

    ``encrypt_new`` False: only opens what was encrypted earlier (``encrypt_at_rest`` turned off
    after it was on: new records are written in the clear, old ones stay readable)."""

    def __init__(self, data_key: bytes, *, encrypt_new: bool = True) -> None:
        if len(data_key) != KEY_BYTES:
            raise ValueError(f"a data key is {KEY_BYTES} bytes, not {len(data_key)}")
        from cryptography.exceptions import InvalidTag  # imported only when encryption is on
        from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

        self._aead = ChaCha20Poly1305(data_key)
        self._invalid_tag = InvalidTag
        self.key_id = key_id(data_key)
        self.encrypt_new = encrypt_new

    def seal(self, seq: int, device: object, payload: str) -> str:
        """The stored ``payload_enc`` of a record's ``payload`` text."""
        try:
            raw = base64.b64decode(payload, validate=True)
            plain = _RAW + raw if base64.b64encode(raw).decode() == payload else _TEXT + payload.encode()
        except (binascii.Error, ValueError):
            plain = _TEXT + payload.encode()
        nonce = os.urandom(NONCE_BYTES)
        sealed = nonce + self._aead.encrypt(nonce, plain, _aad(seq, device))
        return f"{self.key_id}:{base64.b64encode(sealed).decode()}"

    def open(self, seq: int, device: object, stored: object) -> str:
        """The ``payload`` text back from ``payload_enc``; RecordCipherError naming why not."""
        if not isinstance(stored, str) or stored.count(":") != 1:
            raise RecordCipherError(f"record {seq}: {ENCRYPTED} is not '<key id>:<base64>'", reason="malformed")
        kid, text = stored.split(":")
        if kid != self.key_id:
            raise RecordCipherError(f"record {seq} was encrypted with data key {kid}, this node's data key is "
                                    f"{self.key_id} (datakey.json replaced?)", reason="wrong_data_key")
        try:
            sealed = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise RecordCipherError(f"record {seq}: {ENCRYPTED} is not base64", reason="malformed") from None
        if len(sealed) < NONCE_BYTES + 16 + 1:
            raise RecordCipherError(f"record {seq}: {ENCRYPTED} is too short", reason="malformed")
        try:
            plain = self._aead.decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], _aad(seq, device))
        except self._invalid_tag:
            raise RecordCipherError(f"record {seq}: its encrypted payload does not open with data key "
                                    f"{self.key_id} (altered, or moved from another record)",
                                    reason="tampered") from None
        head, body = plain[:1], plain[1:]
        if head == _RAW:
            return base64.b64encode(body).decode()
        if head == _TEXT:
            return body.decode()
        raise RecordCipherError(f"record {seq}: unknown payload encoding {head!r}", reason="malformed")
