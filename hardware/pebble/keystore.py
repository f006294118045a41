"""The emulated fleet's identities: IMEI, secp256k1 private key, firmware profile and owner.

A real Pebble keeps its key in the nRF9160 (docs/pebble-wire.md, "Keys") and its IMEI forever;
the emulator keeps both in ``<fleet dir>/keys.json`` (mode 0600) so a device is the same device on every
run, and growing the fleet adds devices without touching the existing ones. Next to it,
``devices.json`` lists the public side only ({imei, address, profile, owner}), the file a user
registers with ``w3gate device import``. Private keys are never printed or logged.
"""
from __future__ import annotations

import json
import os
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path

from coincurve import PrivateKey

from hardware.errors import EmulatorError
from hardware.pebble.firmware import DEFAULT_PROFILE, PROFILES
from hardware.pebble.signing import address_of, normalize_address

KEYS_FILE = "keys.json"
DEVICES_FILE = "devices.json"
FORMAT = "w3gate-pebble-fleet/1"
MIXED = "mixed"  # cycle new devices through every profile

# Type Allocation Codes (first 8 IMEI digits). Made-up values in the "35" (BABT) range, one for
# the fleet and one that the fleet never uses, for messages from devices nobody registered.
FLEET_TAC = "35467210"
STRANGER_TAC = "35467219"


class KeystoreError(EmulatorError):
    reason = "keystore"


def luhn_check_digit(body: str) -> str:
    """The check digit that makes ``body + digit`` pass the Luhn test (IMEI digit 15)."""
    total = 0
    for i, ch in enumerate(reversed(body)):
        d = int(ch)
        if i % 2 == 0:  # every second digit from the right, starting with the last body digit
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return str((10 - total % 10) % 10)


def luhn_valid(number: str) -> bool:
    return number.isdigit() and len(number) >= 2 and luhn_check_digit(number[:-1]) == number[-1]


def make_imei(tac: str = FLEET_TAC, serial: int | None = None) -> str:
    """A 15-digit IMEI: TAC (8) + serial (6) + Luhn check digit."""
    if serial is None:
        serial = secrets.randbelow(1_000_000)
    body = f"{tac}{serial:06d}"
    if len(body) != 14 or not body.isdigit():
        raise KeystoreError(f"TAC must be 8 digits, got {tac!r}", reason="bad_imei")
    return body + luhn_check_digit(body)


@dataclass(frozen=True)
class Identity:
    """One emulated device. ``private_key`` (hex) is left out of repr so it never reaches a log."""

    imei: str
    private_key: str = field(repr=False)
    profile: str = DEFAULT_PROFILE
    owner: str | None = None
    created: float = 0.0

    @property
    def key(self) -> PrivateKey:
        return PrivateKey(bytes.fromhex(self.private_key))

    @property
    def public_key(self) -> bytes:
        """Uncompressed 04||X||Y."""
        return self.key.public_key.format(compressed=False)

    @property
    def address(self) -> str:
        return address_of(self.public_key)

    def public(self) -> dict:
        """The entry in devices.json."""
        return {"imei": self.imei, "address": self.address, "profile": self.profile, "owner": self.owner}

    @staticmethod
    def generate(imei: str, profile: str = DEFAULT_PROFILE, owner: str | None = None) -> "Identity":
        if profile not in PROFILES:
            raise KeystoreError(f"unknown profile {profile!r}; known: {', '.join(PROFILES)}, {MIXED}",
                                reason="bad_profile")
        return Identity(imei, PrivateKey().secret.hex(), profile, owner, time.time())


def _write_private(path: Path, text: str) -> None:
    """Atomically replace ``path`` with a file only its owner can read."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)  # in case the file already existed with wider permissions
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _write_public(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class Keystore:
    """The fleet directory: ``keys.json`` (private, 0600) and ``devices.json`` (public)."""

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory)
        self.keys_path = self.directory / KEYS_FILE
        self.devices_path = self.directory / DEVICES_FILE

    def load(self) -> list[Identity]:
        """The stored devices in creation order; [] when the fleet does not exist yet."""
        try:
            doc = json.loads(self.keys_path.read_text())
        except FileNotFoundError:
            return []
        except ValueError as e:
            raise KeystoreError(f"{self.keys_path} is not valid JSON: {e}", reason="bad_keystore") from None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise KeystoreError(f"{self.keys_path} is not a {FORMAT} file", reason="bad_keystore")
        try:
            return [Identity(d["imei"], d["private_key"], d.get("profile", DEFAULT_PROFILE), d.get("owner"),
                             d.get("created", 0.0)) for d in doc["devices"]]
        except (KeyError, TypeError) as e:
            raise KeystoreError(f"{self.keys_path}: bad device entry ({e})", reason="bad_keystore") from None

    def owner(self) -> str | None:
        """The fleet's default owner (the emulated user's wallet address), if one was chosen."""
        try:
            return json.loads(self.keys_path.read_text()).get("owner")
        except (FileNotFoundError, ValueError, AttributeError):
            return None

    def save(self, identities: list[Identity], owner: str | None = None) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        doc = {"format": FORMAT, "owner": owner if owner is not None else self.owner(),
               "devices": [{"imei": i.imei, "private_key": i.private_key, "profile": i.profile,
                            "owner": i.owner, "created": i.created} for i in identities]}
        _write_private(self.keys_path, json.dumps(doc, indent=1) + "\n")
        _write_public(self.devices_path, json.dumps([i.public() for i in identities], indent=1) + "\n")

    def ensure(self, count: int, *, profile: str = DEFAULT_PROFILE, owner: str | None = None) -> list[Identity]:
        """The first ``count`` devices, creating the missing ones; existing devices are kept as
        they are (their profile and owner included). ``profile`` may be "mixed": new devices
        then cycle through every profile. ``owner`` defaults to a fleet owner address made up
        once and remembered."""
        if count < 1:
            raise KeystoreError(f"a fleet needs at least one device, got {count}", reason="bad_count")
        if profile != MIXED and profile not in PROFILES:
            raise KeystoreError(f"unknown profile {profile!r}; known: {', '.join(PROFILES)}, {MIXED}",
                                reason="bad_profile")
        if owner is not None:
            try:
                owner = normalize_address(owner)
            except ValueError as e:
                raise KeystoreError(f"bad owner address {owner!r}: {e}", reason="bad_address") from None
        existing = self.load()
        fleet_owner = self.owner()
        if fleet_owner is None:
            fleet_owner = owner or address_of(PrivateKey().public_key.format(compressed=False))
        if len(existing) >= count and self.devices_path.exists():
            return existing[:count]
        names = list(PROFILES)
        taken = {i.imei for i in existing}
        identities = list(existing)
        while len(identities) < count:
            imei = make_imei()
            if imei in taken:
                continue
            taken.add(imei)
            chosen = names[len(identities) % len(names)] if profile == MIXED else profile
            identities.append(Identity.generate(imei, chosen, owner or fleet_owner))
        self.save(identities, fleet_owner)
        return identities[:count]
