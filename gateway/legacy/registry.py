"""Legacy devices and their registry: sensors without a secure element, on serial or BLE.

Each is paired with a fresh id and a per-device HMAC key (``gateway/legacy/pairing.py``); the
registry file holds the keys, so it is written 0600 and no key is ever logged: a ``LegacyDevice``
prints without its key.
"""
from __future__ import annotations

import os
import secrets
import time
from dataclasses import asdict, dataclass, field, replace

from tinydb import Query

from gateway.storage import WatchedTable
from gateway.verify.registry import RegistryError

TRANSPORTS = ("serial", "ble")
SENSORS = ("sim", "bme280", "dht22")
MIN_PERIOD_MS = 100


@dataclass(frozen=True)
class LegacyDevice:
    device_id: str  # 16 hex digits: the 8-byte id in every frame
    name: str
    key: str = field(repr=False)  # 64 hex digits, the HMAC key; secret
    transport: str = "serial"
    address: str = ""  # BLE address or serial port it was paired on (a hint, not a filter)
    config: dict = field(default_factory=dict)  # the settings the gateway wants: period_ms, sensors
    config_seq: int = 0  # seq of the last CONFIG frame sent; the device only applies growing ones
    added: float = 0.0
    command_seq: int = 0  # seq of the last COMMAND frame taken; a counter apart from config_seq
    command: dict = field(default_factory=dict)  # the newest command: {"seq", "command", "project", "at"}
    command_ack: dict = field(default_factory=dict)  # the device's answer to it: {"seq", "result", "at"}

    @property
    def key_bytes(self) -> bytes:
        return bytes.fromhex(self.key)

    def public_dict(self) -> dict:
        """Everything but the key: what `device list` shows and logs may carry."""
        d = asdict(self)
        d.pop("key")
        return d


def new_legacy_device(name: str, *, transport: str, address: str = "", config: dict | None = None) -> LegacyDevice:
    """A fresh identity: random id and key, so a re-paired board starts clean (new id, seq 0)."""
    if transport not in TRANSPORTS:
        raise RegistryError(f"transport must be one of {', '.join(TRANSPORTS)}, got {transport!r}",
                            reason="bad_transport")
    return LegacyDevice(secrets.token_hex(8), name or "", secrets.token_hex(32), transport, address,
                        check_config(config or {}), 0, time.time())


def check_config(config: dict) -> dict:
    """The settings a device accepts (device_fw/frame.py CONFIG); refuses anything else by name."""
    out = {}
    for key, value in config.items():
        if key == "period_ms":
            if not isinstance(value, int) or isinstance(value, bool) or value < MIN_PERIOD_MS:
                raise RegistryError(f"period_ms must be an integer >= {MIN_PERIOD_MS}, got {value!r}",
                                    reason="bad_config")
        elif key == "sensors":
            if not isinstance(value, list) or any(s not in SENSORS for s in value):
                raise RegistryError(f"sensors must be a list of {', '.join(SENSORS)}, got {value!r}",
                                    reason="bad_config")
        else:
            raise RegistryError(f"unknown setting {key!r} (period_ms, sensors)", reason="bad_config")
        out[key] = value
    return out


class LegacyRegistry(WatchedTable[LegacyDevice]):
    """Paired legacy devices and their keys (``legacy_devices.json``, mode 0600)."""

    def __init__(self, path: str | os.PathLike) -> None:
        super().__init__(path, "legacy", "device_id", lambda doc: LegacyDevice(**doc), mode=0o600)

    def add(self, device: LegacyDevice) -> None:
        with self._table() as table:
            if table.contains(Query().device_id == device.device_id):
                raise RegistryError(f"legacy device {device.device_id} is already paired", reason="exists")
            if device.name and table.contains(Query().name == device.name):
                raise RegistryError(f"a legacy device is already named {device.name!r}", reason="exists")
            table.insert(asdict(device))

    def remove(self, device_id: str) -> bool:
        with self._table() as table:
            return bool(table.remove(Query().device_id == device_id))

    def update(self, device_id: str, **changes) -> LegacyDevice:
        with self._table() as table:
            docs = table.search(Query().device_id == device_id)
            if not docs:
                raise RegistryError(f"legacy device {device_id} is not paired", reason="unknown_device")
            device = replace(LegacyDevice(**docs[0]), **changes)
            table.update(asdict(device), Query().device_id == device_id)
        return device

    def find(self, name_or_id: str) -> LegacyDevice | None:
        """By id, or by name (what a user types)."""
        return self.get(name_or_id) or next((d for d in self if d.name == name_or_id), None)

    def next_command(self, device_id: str) -> int:
        """Take the next COMMAND seq for a device, stored before any frame carries it: a command
        is never sent twice under two seqs, and the device applies each seq once."""
        with self._table() as table:
            docs = table.search(Query().device_id == device_id)
            if not docs:
                raise RegistryError(f"legacy device {device_id} is not paired", reason="unknown_device")
            seq = max(int(docs[0].get("command_seq", 0)) + 1, int(time.time()))  # grows even if the file was restored
            table.update({"command_seq": seq}, Query().device_id == device_id)
        return seq

    def next_config(self, device_id: str) -> tuple[LegacyDevice, int]:
        """Take the next CONFIG seq for a device (stored before the frame is sent, so it only grows)."""
        with self._table() as table:
            docs = table.search(Query().device_id == device_id)
            if not docs:
                raise RegistryError(f"legacy device {device_id} is not paired", reason="unknown_device")
            device = LegacyDevice(**docs[0])
            seq = max(device.config_seq + 1, int(time.time()))  # grows even if the file was restored
            table.update({"config_seq": seq}, Query().device_id == device_id)
        return replace(device, config_seq=seq), seq
