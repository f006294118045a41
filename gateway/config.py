"""Configuration: embedded defaults, then a TOML file, then ``W3GATE_*`` environment variables.

Environment names are ``W3GATE_<SECTION>_<KEY>`` (``W3GATE_MQTT_PORT=1884``) or ``W3GATE_<KEY>``
for top-level keys (``W3GATE_DATA_DIR``); values are converted to the default's type.
"""
from __future__ import annotations

import copy
import os
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Mapping

from gateway.errors import ConfigError

DEFAULTS_TOML = """\
# w3gate configuration. Every key is optional; these are the defaults.
data_dir = "./w3gate-data"          # records, registry, status; W3GATE_DATA_DIR

[mqtt]
host = "127.0.0.1"                  # the broker Pebbles publish to
port = 1883
client_id = "w3gate"                # fixed, so the broker keeps our session across restarts
username = ""
password = ""
keepalive = 30
reconnect_min_s = 0.5               # reconnect backoff, doubling up to the max
reconnect_max_s = 30.0

[verify]
max_payload = 1024                  # bytes; larger payloads are refused as "oversized"
max_age_s = 600                     # oldest device timestamp accepted, seconds behind our clock
max_future_s = 120                  # how far a device clock may run ahead
nonce_memory = 64                   # recent nonces remembered per device

[buffer]
segment_records = 500               # records per TinyDB segment file
max_records = 1000000               # bound on the backlog held on disk
full_policy = "refuse"              # "refuse" new records, or "drop-anchored" (oldest anchored first)
retention_s = 604800                # anchored (or processed, without a chain) records expire after this
max_batch = 2000                    # most records in one group commit
commit_interval_s = 0.005           # under load, group commits start at most this often

[applets]
time_limit_s = 1.0                  # per event; an applet running longer is stopped
max_memory_pages = 1024             # 64 KiB pages of linear memory per instance (64 MiB)
recycle_events = 10000              # rebuild an instance after this many events (SDK leaks)
worker_memory_mb = 1024             # address-space cap of each project's worker process
batch = 200                         # events per round trip to a worker

[api]
enabled = true                      # W3bstream's HTTP event API (POST /srv-applet-mgr/v0/event/{project})
listen = "127.0.0.1"                # "0.0.0.0" to take events from the network
port = 8889                         # upstream's event port; 0 picks a free one (status.json tells)
max_event_bytes = 262144            # larger event bodies are refused with 413

[chain]
enabled = false                     # anchor batches of records in the proof registry
network = "iotex-testnet"           # "iotex-mainnet" (4689), "iotex-testnet" (4690) or a JSON-RPC URL
registry = ""                       # the ProofRegistry contract address (contracts/)
key_passphrase_file = ""            # the node key (w3gate key new) is unlocked with this file's first line
confirmations = 2                   # blocks deep before records count as anchored
resubmit_after_s = 60               # a transaction not mined this long is replaced with higher fees
batch_records = 1000                # records per batch (one transaction, one Merkle root) ...
batch_age_s = 60                    # ... or fewer, once the oldest waits this long
poll_s = 1.0                        # how often the anchorer looks at the buffer and the chain

[serial]
ports = []                          # legacy sensors: glob patterns or pyserial URLs of their ports,
                                    # e.g. ["/dev/serial/by-id/usb-*"]; opened as they appear
baudrate = 115200
rescan_s = 1.0                      # how often to look for ports that appeared or came back

[ble]
enabled = false                     # connect to paired BLE sensors (w3gate device pair --ble)
transport = ""                      # a Bumble HCI transport ("usb:0", "tcp-client:127.0.0.1:PORT");
                                    # "" uses the system's BlueZ through bleak
max_connections = 8                 # connection attempts at once (links stay up beyond that)
scan_s = 5.0                        # scan length while paired devices are missing
reconnect_max_s = 30.0              # reconnect backoff, doubling up to this

[legacy]
rate = 50.0                         # frames/s each legacy device may send (token bucket) ...
burst = 100                         # ... with bursts this large; the excess is "rate_limited"

[log]
level = "info"
"""


@dataclass(frozen=True)
class MqttConfig:
    host: str
    port: int
    client_id: str
    username: str
    password: str
    keepalive: int
    reconnect_min_s: float
    reconnect_max_s: float


@dataclass(frozen=True)
class VerifyConfig:
    max_payload: int
    max_age_s: float
    max_future_s: float
    nonce_memory: int


@dataclass(frozen=True)
class BufferConfig:
    segment_records: int
    max_records: int
    full_policy: str
    retention_s: float
    max_batch: int
    commit_interval_s: float


@dataclass(frozen=True)
class AppletsConfig:
    time_limit_s: float
    max_memory_pages: int
    recycle_events: int
    worker_memory_mb: int
    batch: int


@dataclass(frozen=True)
class ApiConfig:
    enabled: bool
    listen: str
    port: int
    max_event_bytes: int


@dataclass(frozen=True)
class ChainConfig:
    enabled: bool
    network: str
    registry: str
    key_passphrase_file: str
    confirmations: int
    resubmit_after_s: float
    batch_records: int
    batch_age_s: float
    poll_s: float


@dataclass(frozen=True)
class SerialConfig:
    ports: list
    baudrate: int
    rescan_s: float


@dataclass(frozen=True)
class BleConfig:
    enabled: bool
    transport: str
    max_connections: int
    scan_s: float
    reconnect_max_s: float


@dataclass(frozen=True)
class LegacyConfig:
    rate: float
    burst: int


@dataclass(frozen=True)
class LogConfig:
    level: str


@dataclass(frozen=True)
class Config:
    data_dir: Path
    mqtt: MqttConfig
    verify: VerifyConfig
    buffer: BufferConfig
    applets: AppletsConfig
    api: ApiConfig
    chain: ChainConfig
    serial: SerialConfig
    ble: BleConfig
    legacy: LegacyConfig
    log: LogConfig

    @property
    def registry_path(self) -> Path:
        return self.data_dir / "devices.json"

    @property
    def records_path(self) -> Path:
        return self.data_dir / "records"

    @property
    def legacy_registry_path(self) -> Path:
        return self.data_dir / "legacy_devices.json"

    @property
    def serial_holds_path(self) -> Path:
        """Ports another program (pairing) holds; the gateway leaves them alone."""
        return self.data_dir / "serial-holds"

    @property
    def status_path(self) -> Path:
        return self.data_dir / "status.json"


_SECTIONS = {"mqtt": MqttConfig, "verify": VerifyConfig, "buffer": BufferConfig, "applets": AppletsConfig,
             "api": ApiConfig, "chain": ChainConfig, "serial": SerialConfig, "ble": BleConfig,
             "legacy": LegacyConfig, "log": LogConfig}


def _coerce(value: object, default: object, name: str) -> object:
    try:
        if isinstance(default, bool):
            if isinstance(value, str):
                return value.strip().lower() in ("1", "true", "yes", "on")
            return bool(value)
        if isinstance(default, list):  # of strings; from the environment, comma-separated
            items = value.split(",") if isinstance(value, str) and name.startswith("W3GATE_") else value
            if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
                raise TypeError
            return [i.strip() for i in items if i.strip()]
        if isinstance(default, int) and not isinstance(value, bool):
            return int(value)
        if isinstance(default, float):
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        kind = {bool: "true or false", int: "an integer", float: "a number", list: "a list of strings"}.get(type(default), "a string")
        raise ConfigError(f"{name} must be {kind}, got {value!r}") from None


def load_config(path: str | os.PathLike | None = None, *, env: Mapping[str, str] | None = None,
                data_dir: str | os.PathLike | None = None) -> Config:
    """Merge defaults, the TOML file at ``path`` and the environment into a Config."""
    env = os.environ if env is None else env
    merged = tomllib.loads(DEFAULTS_TOML)
    defaults = copy.deepcopy(merged)
    if path is not None:
        try:
            user = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config file {path}: {e}") from None
        for key, value in user.items():
            if key not in defaults:
                raise ConfigError(f"config file {path}: unknown key {key!r}")
            if isinstance(defaults[key], dict):
                if not isinstance(value, dict):
                    raise ConfigError(f"config file {path}: [{key}] must be a table")
                for sub, subvalue in value.items():
                    if sub not in defaults[key]:
                        raise ConfigError(f"config file {path}: unknown key {key}.{sub}")
                    merged[key][sub] = _coerce(subvalue, defaults[key][sub], f"{key}.{sub}")
            else:
                merged[key] = _coerce(value, defaults[key], key)
    for key, default in defaults.items():
        if isinstance(default, dict):
            for sub, subdefault in default.items():
                name = f"W3GATE_{key}_{sub}".upper()
                if name in env:
                    merged[key][sub] = _coerce(env[name], subdefault, name)
        elif f"W3GATE_{key}".upper() in env:
            merged[key] = _coerce(env[f"W3GATE_{key}".upper()], default, f"W3GATE_{key}".upper())
    if data_dir is not None:
        merged["data_dir"] = str(data_dir)
    if merged["buffer"]["full_policy"] not in ("refuse", "drop-anchored"):
        raise ConfigError(f"buffer.full_policy must be 'refuse' or 'drop-anchored', "
                          f"got {merged['buffer']['full_policy']!r}")
    sections = {name: cls(**{f.name: merged[name][f.name] for f in fields(cls)})
                for name, cls in _SECTIONS.items()}
    return Config(data_dir=Path(merged["data_dir"]).expanduser(), **sections)
