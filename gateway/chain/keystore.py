"""The node key: one secp256k1 key in an encrypted Web3 Secret Storage (V3) keystore file.

The key signs the gateway's anchor transactions and is its identity (``did:io:<address>``), so
it never sits on disk in the clear: eth_account's ``Account.encrypt`` (scrypt + AES-128-CTR,
the format geth, MetaMask and ioPay import) protects it with a passphrase. The file is created
with mode 0600 and replaced atomically, so a crash never leaves half a key, and it keeps the
address in the clear so the address and DID can be shown without the passphrase.

Why scrypt with n = 2^15 (32 MiB): eth_account's default, 2^18, takes 256 MiB to unlock, which
put the gateway's start at 311 MB resident, too much beside everything else on a 512 MB
Raspberry Pi Zero 2 W. 2^15 (r = 8, p = 1) unlocks in about 0.1 s here with 32 MiB, and is still
a standard V3 keystore (geth's "light" setting is 2^12). A key saved with a costlier n is
re-encrypted with these parameters the first time it is unlocked.

DID form: IoTeX's DID method (``did:io``, iotex-DID spec and ioctl) names an account by its
0x address after the lowercase prefix; ioID, and w3gate's device registry, write the address
in lowercase: ``did:io:0x<40 lowercase hex digits>``.
"""
from __future__ import annotations

import json
import logging
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from eth_account import Account
from eth_account.signers.local import LocalAccount

from gateway.errors import W3gateError
from gateway.layout import DataDir
from gateway.storage import atomic_write, private_dir

log = logging.getLogger("w3gate.chain")

MIN_PASSPHRASE = 8
SCRYPT_N = 2 ** 15  # 128 * r * n bytes to unlock: 32 MiB (see the module doc)


class KeystoreError(W3gateError):
    """The keystore cannot be created, read or unlocked; ``reason`` says which."""

    reason = "keystore"


def did_of(address: str) -> str:
    """The DID naming an account: ``did:io:0x`` + the address in lowercase hex."""
    raw = address.lower().removeprefix("0x")
    if len(raw) != 40 or any(c not in "0123456789abcdef" for c in raw):
        raise KeystoreError(f"not a 20-byte hex address: {address!r}", reason="bad_address")
    return "did:io:0x" + raw


@dataclass(frozen=True)
class NodeIdentity:
    """What may be shown about the node key: never the key itself."""

    address: str  # EIP-55 checksummed
    path: Path

    @property
    def did(self) -> str:
        return did_of(self.address)

    def to_dict(self) -> dict:
        return {"address": self.address, "did": self.did, "keystore": str(self.path)}

    def did_document(self, chain_id: int | None = None) -> dict:
        """The node's DID document: its key as a secp256k1 recovery method (verifiers recover
        the signer of a signature and compare addresses, as IoTeX ioID does)."""
        did = self.did
        account = f"eip155:{chain_id}:{self.address}" if chain_id else f"eip155:4689:{self.address}"
        method = {"id": f"{did}#key-0", "type": "EcdsaSecp256k1RecoveryMethod2020", "controller": did,
                  "blockchainAccountId": account}
        return {"@context": ["https://www.w3.org/ns/did/v1",
                             "https://w3id.org/security/suites/secp256k1recovery-2020/v2"],
                "id": did, "verificationMethod": [method],
                "authentication": [method["id"]], "assertionMethod": [method["id"]]}


OPERATOR_NAME = re.compile(r"^[A-Za-z0-9_-]{1,32}$")


def operator_keystore_path(layout: DataDir, name: str) -> Path:
    """An operator key: applets send transactions with it when their project names it. The name
    is checked here because it becomes a file name."""
    if not OPERATOR_NAME.match(name):
        raise KeystoreError(f"an operator name is 1-32 letters, digits, '_' or '-': {name!r}", reason="bad_name")
    return layout.operator_key(name)


def _check_passphrase(passphrase: str) -> None:
    if len(passphrase) < MIN_PASSPHRASE:
        raise KeystoreError(f"the passphrase must have at least {MIN_PASSPHRASE} characters",
                            reason="weak_passphrase")


def save_key(path: str | os.PathLike, private_key: bytes | str, passphrase: str, *,
             overwrite: bool = False, kdf: str = "scrypt", iterations: int | None = None) -> NodeIdentity:
    """Encrypt ``private_key`` into ``path`` (mode 0600). Refuses to replace an existing key
    unless ``overwrite``: losing the node key loses the gateway's identity and its anchors'
    sequence. ``iterations`` sets the KDF cost (scrypt's n, ``SCRYPT_N`` by default)."""
    path = Path(path)
    _check_passphrase(passphrase)
    if path.exists() and not overwrite:
        raise KeystoreError(f"{path} already holds a node key; remove it first to replace it", reason="exists")
    try:
        account = Account.from_key(private_key)
    except (ValueError, TypeError) as e:
        raise KeystoreError(f"not a secp256k1 private key: {e}", reason="bad_key") from None
    if iterations is None and kdf == "scrypt":
        iterations = SCRYPT_N
    blob = Account.encrypt(account.key, passphrase, kdf=kdf, iterations=iterations)
    private_dir(path.parent)
    try:
        atomic_write(path, json.dumps(blob, indent=1).encode(), mode=0o600)
    except OSError as e:
        raise KeystoreError(f"cannot write {path}: {e}", reason="io") from None
    return NodeIdentity(account.address, path)


def new_key(path: str | os.PathLike, passphrase: str, **kwargs) -> NodeIdentity:
    """A fresh random key (os.urandom via eth_account), saved as ``save_key`` does."""
    return save_key(path, Account.create().key, passphrase, **kwargs)


def ensure_key(path: str | os.PathLike, passphrase_file: str | os.PathLike) -> tuple[NodeIdentity, bool]:
    """The node key at ``path``, made with a random passphrase written to ``passphrase_file``
    when there is none yet; returns it and whether it was made now.

    Why: an appliance's gateway must unlock its key unattended, and its key must be made on the
    device (at first start), never carried in the image. The passphrase file (0600, random,
    256 bits) protects copies of the key file taken without it, such as a backup of the key
    alone. A key that exists is never touched, and a passphrase file is never replaced: it may
    be the only way into an existing key.
    """
    path, passphrase_file = Path(path), Path(passphrase_file)
    if path.exists():
        return read_identity(path), False
    if passphrase_file.exists():
        passphrase = read_passphrase_file(passphrase_file)
    else:
        passphrase = secrets.token_urlsafe(32)
        private_dir(passphrase_file.parent)
        atomic_write(passphrase_file, (passphrase + "\n").encode(), mode=0o600)
    return new_key(path, passphrase), True


def _read(path: Path) -> dict:
    try:
        blob = json.loads(path.read_text())
    except FileNotFoundError:
        raise KeystoreError(f"no node key at {path} (create one with `w3gate key new`)", reason="missing") from None
    except (OSError, ValueError) as e:
        raise KeystoreError(f"cannot read {path}: {e}", reason="corrupt") from None
    if not isinstance(blob, dict) or "crypto" not in blob and "Crypto" not in blob:
        raise KeystoreError(f"{path} is not a V3 keystore", reason="corrupt")
    return blob


def read_identity(path: str | os.PathLike) -> NodeIdentity:
    """The address stored in the keystore, without the passphrase."""
    path = Path(path)
    blob = _read(path)
    address = blob.get("address")
    if not isinstance(address, str):
        raise KeystoreError(f"{path} does not name its address; unlock it to learn it", reason="no_address")
    from eth_utils import to_checksum_address

    return NodeIdentity(to_checksum_address("0x" + address.lower().removeprefix("0x")), path)


def load_key(path: str | os.PathLike, passphrase: str) -> LocalAccount:
    """Unlock the node key. A wrong passphrase is a KeystoreError ``bad_passphrase``."""
    path = Path(path)
    blob = _read(path)
    try:
        key = Account.decrypt(blob, passphrase)
    except ValueError as e:
        raise KeystoreError(f"cannot unlock {path}: {e}", reason="bad_passphrase") from None
    except (KeyError, TypeError, AttributeError) as e:  # JSON, but not a V3 keystore
        raise KeystoreError(f"{path} is not a V3 keystore ({type(e).__name__}: {e})", reason="corrupt") from None
    account = Account.from_key(key)
    stored = blob.get("address")
    if isinstance(stored, str) and stored.lower().removeprefix("0x") != account.address.lower()[2:]:
        raise KeystoreError(f"{path} names address {stored} but holds the key of {account.address}",
                            reason="corrupt")
    crypto = blob.get("crypto") or blob.get("Crypto") or {}
    if crypto.get("kdf") == "scrypt" and int((crypto.get("kdfparams") or {}).get("n", 0)) > SCRYPT_N:
        try:  # costlier than a small board can afford at every start: the same key, cheaper to unlock
            save_key(path, account.key, passphrase, overwrite=True)
            log.info("%s re-encrypted with scrypt n=%d (%d MiB to unlock, was %d MiB)", path, SCRYPT_N,
                     128 * 8 * SCRYPT_N >> 20, 128 * 8 * int(crypto["kdfparams"]["n"]) >> 20)
        except KeystoreError as e:  # e.g. a read-only file system: it still unlocks, at the old cost
            log.warning("could not re-encrypt %s with cheaper parameters: %s", path, e)
    return account


def read_passphrase_file(path: str | os.PathLike) -> str:
    """The first line of ``path`` (a trailing newline is not part of the passphrase)."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise KeystoreError(f"cannot read passphrase file {path}: {e}", reason="io") from None
    lines = text.splitlines()
    return lines[0] if lines else ""


def did_document(path: Path, chain_id: int | None) -> dict | None:
    """The DID document of the node key at ``path`` (served at /.well-known/did.json), or None
    when there is no readable key: it names only the public identity, never unlocks the key."""
    try:
        return read_identity(path).did_document(chain_id)
    except KeystoreError:
        return None
