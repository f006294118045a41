"""Device registry: which IMEIs may send data, and which key or address signs for each.

Kept in a small TinyDB file (atomic writes, ``WatchedTable``) that the CLI edits while the
gateway runs; the gateway reloads it when the file changes and records confirmations in it.
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, replace

from tinydb import Query

from gateway.storage import WatchedTable
from gateway.codec.pebble import PROFILES, DEFAULT_PROFILE
from gateway.errors import W3gateError
from gateway.verify.secp256k1 import Key, normalize_address

STATUS_CREATED, STATUS_PROPOSED, STATUS_CONFIRMED = "created", "proposed", "confirmed"
STATUS_CODES = {STATUS_CREATED: 0, STATUS_PROPOSED: 1, STATUS_CONFIRMED: 2}


class RegistryError(W3gateError):
    reason = "registry"


@dataclass(frozen=True)
class Device:
    imei: str
    address: str  # EIP-55; derived from public_key when that is given
    public_key: str | None = None  # uncompressed hex (04...), optional
    owner: str | None = None  # proposer / owner address
    profile: str = DEFAULT_PROFILE
    status: str = STATUS_CREATED
    added: float = 0.0

    @property
    def did(self) -> str:
        return f"did:io:{self.address.lower()}"

    def to_dict(self) -> dict:
        return asdict(self)


def make_device(imei: str, *, address: str | None = None, public_key: str | None = None,
                owner: str | None = None, profile: str = DEFAULT_PROFILE) -> Device:
    """Validate user input into a Device; errors name the bad field."""
    imei = imei.strip()
    if not (imei.isdigit() and 6 <= len(imei) <= 20):
        raise RegistryError(f"IMEI must be digits (15 on a Pebble), got {imei!r}", reason="bad_imei")
    if profile not in PROFILES:
        raise RegistryError(f"unknown profile {profile!r}; known: {', '.join(PROFILES)}",
                            reason="bad_profile")
    if public_key:
        try:
            key = Key(bytes.fromhex(public_key.removeprefix("0x")))
        except ValueError as e:
            raise RegistryError(f"public key is not a secp256k1 point: {e}", reason="bad_key") from None
        if address and normalize_address(address) != key.address:
            raise RegistryError(f"address {address} does not belong to the public key ({key.address})",
                                reason="bad_key")
        address, public_key = key.address, key.public_key.hex()
    elif address:
        try:
            address = normalize_address(address)
        except ValueError as e:
            raise RegistryError(f"bad address {address!r}: {e}", reason="bad_address") from None
    else:
        raise RegistryError("give the device's address or its public key", reason="no_identity")
    if owner:
        try:
            owner = normalize_address(owner)
        except ValueError as e:
            raise RegistryError(f"bad owner address {owner!r}: {e}", reason="bad_address") from None
    status = STATUS_PROPOSED if owner else STATUS_CREATED
    return Device(imei, address, public_key, owner, profile, status, time.time())


class Registry(WatchedTable[Device]):
    """The device table at ``path`` (a JSON file)."""

    def __init__(self, path: str | os.PathLike) -> None:
        super().__init__(path, "devices", "imei", lambda doc: Device(**doc))

    def add(self, device: Device, *, replace_existing: bool = False) -> None:
        with self._table() as table:
            q = Query().imei == device.imei
            if table.contains(q):
                if not replace_existing:
                    raise RegistryError(f"device {device.imei} is already registered", reason="exists")
                table.remove(q)
            table.insert(device.to_dict())

    def add_many(self, devices: list[Device], *, replace_existing: bool = False) -> int:
        """Add several devices in one write; returns how many were added or replaced."""
        with self._table() as table:
            known = {d["imei"] for d in table.all()}
            fresh = [d for d in devices if replace_existing or d.imei not in known]
            if replace_existing:
                table.remove(Query().imei.one_of([d.imei for d in fresh]))
            table.insert_multiple(d.to_dict() for d in fresh)
            return len(fresh)

    def remove(self, imei: str) -> bool:
        with self._table() as table:
            return bool(table.remove(Query().imei == imei))

    def update(self, imei: str, **changes) -> Device:
        with self._table() as table:
            docs = table.search(Query().imei == imei)
            if not docs:
                raise RegistryError(f"device {imei} is not registered", reason="unknown_device")
            device = replace(Device(**docs[0]), **changes)
            table.update(device.to_dict(), Query().imei == imei)
        return device
