"""The data key of encryption at rest, sealed to the node key (``<data dir>/datakey.json``).

Why: buffered payloads are encrypted with a random data key (``gateway.buffer.cipher``); that key
may never sit on disk in the clear, and it must outlive restarts. It is sealed to the node key's
secp256k1 public key with ECIES (an ephemeral secp256k1 key, ECDH, HKDF-SHA256 salted with both
public keys, ChaCha20-Poly1305), so opening it takes the node key and hence its passphrase file,
as anchoring does. The file names the node address it is sealed to: a node key that was lost or
replaced is then said plainly, and means the history encrypted with this data key is unreadable.

It lives in the chain layer because it needs the node key (the buffer never imports the chain);
``cipher_from_config`` is the one way the node and the CLI commands get the store's cipher.

File (JSON, 0600)::

    {"format": "w3gate-datakey/1", "node_address": "0x…", "key_id": "<8 hex>",
     "epk": "<hex, 33-byte compressed ephemeral public key>", "sealed": "<base64 ciphertext>",
     "created": <unix time>}
"""
from __future__ import annotations

import base64
import json
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from gateway.buffer.cipher import KEY_BYTES, RecordCipher, key_id
from gateway.errors import W3gateError
from gateway.storage import atomic_write, private_dir

if TYPE_CHECKING:
    from gateway.config import Config

log = logging.getLogger("w3gate.buffer")

FORMAT = "w3gate-datakey/1"
_INFO = b"w3gate datakey v1"
_POINT = serialization.PublicFormat.CompressedPoint
_X962 = serialization.Encoding.X962


class DataKeyError(W3gateError):
    """The data key cannot be made, read or opened; ``reason`` says which."""

    reason = "data_key"


def _node_private(node_key: bytes) -> ec.EllipticCurvePrivateKey:
    return ec.derive_private_key(int.from_bytes(node_key, "big"), ec.SECP256K1())


def _aead(shared: bytes, epk: bytes, node_pub: bytes) -> ChaCha20Poly1305:
    return ChaCha20Poly1305(HKDF(hashes.SHA256(), 32, salt=epk + node_pub, info=_INFO).derive(shared))


def _aad(address: str) -> bytes:
    return _INFO + bytes.fromhex(address.lower().removeprefix("0x"))


def seal_data_key(data_key: bytes, node_public: ec.EllipticCurvePublicKey, address: str) -> dict:
    """ECIES: the file's content holding ``data_key`` for the holder of the node key only. The
    AEAD key is used once (a fresh ephemeral key each time), so its nonce may be zero."""
    eph = ec.generate_private_key(ec.SECP256K1())
    epk = eph.public_key().public_bytes(_X962, _POINT)
    node_pub = node_public.public_bytes(_X962, _POINT)
    sealed = _aead(eph.exchange(ec.ECDH(), node_public), epk, node_pub).encrypt(bytes(12), data_key, _aad(address))
    return {"format": FORMAT, "node_address": address, "key_id": key_id(data_key), "epk": epk.hex(),
            "sealed": base64.b64encode(sealed).decode(), "created": int(time.time())}


def unseal_data_key(blob: dict, node_key: bytes, address: str, path: Path) -> bytes:
    """The data key in ``blob`` opened with the node key; DataKeyError saying why not."""
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise DataKeyError(f"{path} is not a w3gate data key file ({FORMAT})", reason="corrupt")
    sealed_to = str(blob.get("node_address", ""))
    if sealed_to.lower() != address.lower():
        raise DataKeyError(
            f"{path} is sealed to node key {sealed_to}, but the node key is {address}: the payloads "
            f"encrypted at rest can only be read with node key {sealed_to} (put its keystore back with "
            "`w3gate key import`); without it that history is lost", reason="wrong_node_key")
    node = _node_private(node_key)
    try:
        epk = bytes.fromhex(blob["epk"])
        sealed = base64.b64decode(blob["sealed"], validate=True)
        eph_pub = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256K1(), epk)
        node_pub = node.public_key().public_bytes(_X962, _POINT)
        data_key = _aead(node.exchange(ec.ECDH(), eph_pub), epk, node_pub).decrypt(bytes(12), sealed, _aad(address))
    except (KeyError, TypeError, ValueError, InvalidTag) as e:
        raise DataKeyError(f"{path} does not open with node key {address} ({type(e).__name__}): the file was "
                           "altered or damaged; restore it from a backup, or the payloads encrypted with it "
                           "are lost", reason="corrupt") from None
    if len(data_key) != KEY_BYTES:
        raise DataKeyError(f"{path} holds a key of {len(data_key)} bytes, not {KEY_BYTES}", reason="corrupt")
    return data_key


def load_data_key(path: str | os.PathLike, node_key: bytes, address: str, *, create: bool) -> bytes:
    """The data key in ``path``, made (random) and sealed to the node key when there is none and
    ``create``. An existing file is never replaced: it may be the only way into the history."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        if not create:
            raise DataKeyError(f"no data key at {path} (`w3gate run` with [buffer] encrypt_at_rest makes it)",
                               reason="missing") from None
        data_key = os.urandom(KEY_BYTES)
        blob = seal_data_key(data_key, _node_private(node_key).public_key(), address)
        private_dir(path.parent)
        try:
            atomic_write(path, json.dumps(blob, indent=1).encode(), mode=0o600)
        except OSError as e:
            raise DataKeyError(f"cannot write {path}: {e}", reason="io") from None
        log.info("made the data key %s for encryption at rest, sealed to node key %s, in %s (back it up "
                 "with the node key: without both, the encrypted history is unreadable)", blob["key_id"],
                 address, path)
        return data_key
    except OSError as e:
        raise DataKeyError(f"cannot read {path}: {e.strerror or e}", reason="io") from None
    try:
        blob = json.loads(raw)
    except ValueError as e:
        raise DataKeyError(f"{path} is not JSON ({e}): restore it from a backup", reason="corrupt") from None
    return unseal_data_key(blob, node_key, address, path)


def cipher_from_config(config: Config, *, create: bool = False) -> RecordCipher | None:
    """The record store's cipher for this configuration, None when there is nothing to encrypt or open.

    ``[buffer] encrypt_at_rest`` on: new payloads are encrypted; the data key is made when missing
    if ``create`` (the gateway), else its absence is an error. Off, but a data key file exists
    (it was on before): the cipher only opens what was encrypted then, if the node key unlocks;
    otherwise a warning, and those payloads read as unreadable. Unlocking the node key takes
    about 0.1 s and 32 MiB (scrypt; gateway/chain/keystore.py)."""
    layout = config.layout
    on = config.buffer.encrypt_at_rest
    if not on and not layout.data_key.exists():
        return None
    # eth_account is imported only when used
    from gateway.chain.keystore import KeystoreError, load_key, read_passphrase_file

    try:
        if not config.chain.key_passphrase_file:
            raise DataKeyError("[chain] key_passphrase_file is not set: the data key is sealed to the node key, "
                               "which is unlocked with it", reason="no_passphrase")
        if on and not create and not layout.data_key.exists():
            return None  # nothing was encrypted yet: the gateway makes the key when it first runs
        account = load_key(layout.node_key, read_passphrase_file(config.chain.key_passphrase_file))
        data_key = load_data_key(layout.data_key, bytes(account.key), account.address, create=create and on)
    except (DataKeyError, KeystoreError) as e:
        if on:
            raise DataKeyError(f"encryption at rest: {e.detail}", reason=e.reason) from None
        log.warning("%s holds a data key from when [buffer] encrypt_at_rest was on, and it cannot be opened "
                    "(%s): the payloads encrypted then read as unreadable", layout.data_key, e.detail)
        return None
    return RecordCipher(data_key, encrypt_new=on)
