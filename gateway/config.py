"""Configuration: embedded defaults, then a TOML file, then ``W3GATE_*`` environment variables.

Environment names are ``W3GATE_<SECTION>_<KEY>`` (``W3GATE_MQTT_PORT=1884``) or ``W3GATE_<KEY>``
for top-level keys (``W3GATE_DATA_DIR``). Every value is checked against ``SETTINGS`` (type and
range) as it is loaded, so a bad value stops the start with one line naming the key and where it
came from, instead of killing a task later (docs/configuration.md).
"""
from __future__ import annotations

import copy
import math
import os
import re
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable, Mapping

from gateway.errors import ConfigError
from gateway.layout import DataDir

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

[broker]                            # the secure mosquitto w3gate writes (`w3gate broker setup`, docs/broker.md)
managed = true                      # keep its identities and access rules in step with devices and publishers
local_port = 1883                   # loopback, a password: the gateway (set mqtt.port to the same)
device_listen = "0.0.0.0"           # where the TLS listeners take devices and publishers from
device_port = 8883                  # TLS + a client certificate from the local CA: Pebbles; 0 = off
client_port = 8884                  # TLS + a password: publishers and tools on the network; 0 = off
hostnames = ["w3gate.local"]        # names the broker's certificate carries (with this host's name)
max_packet_bytes = 65536            # a larger MQTT packet disconnects its sender
max_queued_bytes = 67108864         # per client, QoS 1 messages waiting for it beyond this are dropped
max_connections = 1000              # per listener
persistence = true                  # sessions and queued messages survive a broker restart

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
encrypt_at_rest = false             # encrypt buffered payloads with a data key sealed to the node key
                                    # (needs [chain] key_passphrase_file; lose the node key, lose the history)

[applets]
time_limit_s = 1.0                  # per event; an applet running longer is stopped
max_memory_pages = 1024             # 64 KiB pages of linear memory per instance (64 MiB)
recycle_events = 10000              # projects with instances = "reuse": rebuild after this many events
worker_memory_mb = 1024             # address-space cap of each project's worker process
worker_recycle_mb = 96              # a worker is replaced after a batch past this resident size, once it
                                    # discarded instances (pywasm3 never frees their memory)
batch = 200                         # events per round trip to a worker

[api]
enabled = true                      # W3bstream's HTTP event API (POST /srv-applet-mgr/v0/event/{project})
listen = "127.0.0.1"                # "0.0.0.0" to take events from the network
port = 8889                         # upstream's event port; 0 picks a free one (status.json tells)
max_event_bytes = 262144            # larger event bodies are refused with 413
body_timeout_s = 10.0               # a request's head, or its body, not in within this long: closed
max_connections = 64                # open connections at most; beyond, the oldest without a request is dropped
tls_cert = ""                       # PEM certificate chain and key: HTTPS; required when listen is not loopback
tls_key = ""

[dashboard]
enabled = true                      # the gateway's web pages and Prometheus /metrics, served by `w3gate run`
listen = "127.0.0.1"                # beyond loopback only with tls_cert, tls_key and password_file
port = 8890                         # 0 picks a free one (status.json tells)
tls_cert = ""                       # PEM certificate chain and key: HTTPS
tls_key = ""
password_file = ""                  # its first line is the password (HTTP Basic, any user name);
                                    # set: every page but /healthz asks for it

[chain]
enabled = false                     # anchor batches of records in the proof registry
network = "iotex-testnet"           # "iotex-mainnet" (4689), "iotex-testnet" (4690) or a JSON-RPC URL
registry = ""                       # the ProofRegistry contract address (contracts/); "": no anchoring,
                                    # applets still send transactions and read the chain
key_passphrase_file = ""            # the node key (w3gate key new) is unlocked with this file's first line
confirmations = 2                   # blocks deep before records count as anchored
resubmit_after_s = 60               # a transaction not mined this long is replaced with higher fees
batch_records = 1000                # records per batch (one transaction, one Merkle root) ...
batch_age_s = 60                    # ... or fewer, once the oldest waits this long
batch_records_max = 50000           # ... or more, up to this, when a backlog builds (keeps pace)
max_inflight = 8                    # batches sent and not yet confirmed at once
poll_s = 1.0                        # how often the anchorer looks at the buffer and the chain

[market]
contract = ""                       # a DataMarket contract address (contracts/): deliver the streams
                                    # buyers paid for (needs [chain]); "": off
allow_private_endpoints = false     # also deliver to buyers' brokers on loopback or private networks
max_purchases = 64                  # purchases delivered at once; later ones wait for a free slot

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


LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
FULL_POLICIES = ("refuse", "drop-anchored")
NETWORK_PRESETS = ("iotex-mainnet", "iotex-testnet")  # gateway/chain/sender.py NETWORKS
MAX_U16 = 65535


@dataclass(frozen=True)
class Setting:
    """What one key accepts: its type, an inclusive range, a set of values, or a further rule."""

    kind: type  # bool, int, float, str or list (of strings)
    lo: float | None = None
    hi: float | None = None
    above: float | None = None  # exclusive lower bound (durations: > 0)
    choices: tuple[str, ...] = ()
    nonempty: bool = False
    casefold: bool = False  # "INFO" is "info"
    rule: Callable[[Any], bool] | None = None
    rule_text: str = ""

    def describe(self) -> str:
        """The rule in words, for the error line."""
        if self.choices:
            return "one of " + ", ".join(repr(c) for c in self.choices)
        if self.rule_text:
            return self.rule_text
        kind = {bool: "true or false", int: "an integer", float: "a number", str: "a string",
                list: "a list of strings"}[self.kind]
        if self.above is not None:
            kind += f" above {_num(self.above)}"
        if self.lo is not None and self.hi is not None:
            kind += f" from {_num(self.lo)} to {_num(self.hi)}"
        elif self.lo is not None:
            kind += f" of at least {_num(self.lo)}"
        if self.nonempty:
            kind = "a non-empty " + kind.removeprefix("a ")
        return kind

    def valid(self, value: Any) -> bool:
        if self.lo is not None and value < self.lo or self.hi is not None and value > self.hi:
            return False
        if self.above is not None and value <= self.above:
            return False
        if self.choices and value not in self.choices:
            return False
        if self.nonempty and not (value.strip() if isinstance(value, str) else value):
            return False
        return self.rule is None or self.rule(value)


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def _positive() -> Setting:
    """A duration or a rate: a finite number above 0."""
    return Setting(float, above=0)


def _count(lo: int = 1, hi: int | None = None) -> Setting:
    return Setting(int, lo=lo, hi=hi)


def _network(value: str) -> bool:
    return value in NETWORK_PRESETS or value.startswith(("http://", "https://")) and len(value) > 8


def _address_or_empty(value: str) -> bool:
    return value == "" or re.fullmatch(r"0x[0-9a-fA-F]{40}", value) is not None


# Every key of DEFAULTS_TOML, "section.key" (a test checks they match).
SETTINGS: dict[str, Setting] = {
    "data_dir": Setting(str, nonempty=True),
    "mqtt.host": Setting(str, nonempty=True),
    "mqtt.port": _count(1, MAX_U16),
    "mqtt.client_id": Setting(str, nonempty=True),
    "mqtt.username": Setting(str),
    "mqtt.password": Setting(str),
    "mqtt.keepalive": _count(1, MAX_U16),  # seconds; MQTT carries it in 16 bits
    "mqtt.reconnect_min_s": _positive(),
    "mqtt.reconnect_max_s": _positive(),
    "broker.managed": Setting(bool),
    "broker.local_port": _count(1, MAX_U16),
    "broker.device_listen": Setting(str, nonempty=True),
    "broker.device_port": _count(0, MAX_U16),
    "broker.client_port": _count(0, MAX_U16),
    "broker.hostnames": Setting(list),
    "broker.max_packet_bytes": _count(1024, 268435455),  # MQTT's own limit
    "broker.max_queued_bytes": _count(0),
    "broker.max_connections": _count(1),
    "broker.persistence": Setting(bool),
    "verify.max_payload": _count(1, 256 * 1024 * 1024),
    "verify.max_age_s": _positive(),
    "verify.max_future_s": Setting(float, lo=0),
    "verify.nonce_memory": _count(),
    "buffer.segment_records": _count(),
    "buffer.max_records": _count(),
    "buffer.full_policy": Setting(str, choices=FULL_POLICIES),
    "buffer.retention_s": _positive(),
    "buffer.max_batch": _count(),
    "buffer.commit_interval_s": Setting(float, lo=0),
    "buffer.encrypt_at_rest": Setting(bool),
    "applets.time_limit_s": _positive(),
    "applets.max_memory_pages": _count(1, 65536),  # wasm32's limit
    "applets.recycle_events": _count(),
    "applets.worker_memory_mb": _count(),
    "applets.worker_recycle_mb": _count(),
    "applets.batch": _count(),
    "api.enabled": Setting(bool),
    "api.listen": Setting(str, nonempty=True),
    "api.port": _count(0, MAX_U16),  # 0: a free port
    "api.max_event_bytes": _count(),
    "api.body_timeout_s": _positive(),
    "api.max_connections": _count(1),
    "api.tls_cert": Setting(str),
    "api.tls_key": Setting(str),
    "dashboard.enabled": Setting(bool),
    "dashboard.listen": Setting(str, nonempty=True),
    "dashboard.port": _count(0, MAX_U16),  # 0: a free port
    "dashboard.tls_cert": Setting(str),
    "dashboard.tls_key": Setting(str),
    "dashboard.password_file": Setting(str),
    "chain.enabled": Setting(bool),
    "chain.network": Setting(str, rule=_network, rule_text=(
        f"{' or '.join(NETWORK_PRESETS)} or an http(s) JSON-RPC URL")),
    "chain.registry": Setting(str, rule=_address_or_empty, rule_text="\"\" or a 0x address (40 hex digits)"),
    "chain.key_passphrase_file": Setting(str),
    "chain.confirmations": _count(1),
    "chain.resubmit_after_s": _positive(),
    "chain.batch_records": _count(),
    "chain.batch_age_s": _positive(),
    "chain.batch_records_max": _count(1, 0xFFFFFFFF),
    "chain.max_inflight": _count(1, 64),
    "chain.poll_s": _positive(),
    "market.contract": Setting(str, rule=_address_or_empty, rule_text="\"\" or a 0x address (40 hex digits)"),
    "market.allow_private_endpoints": Setting(bool),
    "market.max_purchases": _count(1, 4096),
    "serial.ports": Setting(list),
    "serial.baudrate": _count(1, 100_000_000),
    "serial.rescan_s": _positive(),
    "ble.enabled": Setting(bool),
    "ble.transport": Setting(str),
    "ble.max_connections": _count(),
    "ble.scan_s": _positive(),
    "ble.reconnect_max_s": _positive(),
    "legacy.rate": _positive(),  # frames/s: a positive number
    "legacy.burst": _count(),
    "log.level": Setting(str, choices=LOG_LEVELS, casefold=True),
}

ENV_TRUE = ("true", "1", "yes")
ENV_FALSE = ("false", "0", "no")


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
class BrokerConfig:
    managed: bool
    local_port: int
    device_listen: str
    device_port: int
    client_port: int
    hostnames: list
    max_packet_bytes: int
    max_queued_bytes: int
    max_connections: int
    persistence: bool


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
    encrypt_at_rest: bool


@dataclass(frozen=True)
class AppletsConfig:
    time_limit_s: float
    max_memory_pages: int
    recycle_events: int
    worker_memory_mb: int
    worker_recycle_mb: int
    batch: int


@dataclass(frozen=True)
class ApiConfig:
    enabled: bool
    listen: str
    port: int
    max_event_bytes: int
    body_timeout_s: float
    max_connections: int
    tls_cert: str
    tls_key: str


@dataclass(frozen=True)
class DashboardConfig:
    enabled: bool
    listen: str
    port: int
    tls_cert: str
    tls_key: str
    password_file: str


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
    batch_records_max: int
    max_inflight: int
    poll_s: float


@dataclass(frozen=True)
class MarketConfig:
    contract: str
    allow_private_endpoints: bool
    max_purchases: int


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
    broker: BrokerConfig
    verify: VerifyConfig
    buffer: BufferConfig
    applets: AppletsConfig
    api: ApiConfig
    dashboard: DashboardConfig
    chain: ChainConfig
    market: MarketConfig
    serial: SerialConfig
    ble: BleConfig
    legacy: LegacyConfig
    log: LogConfig

    @property
    def layout(self) -> DataDir:
        """Where each file of the data directory is (gateway/layout.py)."""
        return DataDir(self.data_dir)


_SECTIONS = {"mqtt": MqttConfig, "broker": BrokerConfig, "verify": VerifyConfig, "buffer": BufferConfig, "applets": AppletsConfig,
             "api": ApiConfig, "dashboard": DashboardConfig, "chain": ChainConfig, "market": MarketConfig, "serial": SerialConfig,
             "ble": BleConfig, "legacy": LegacyConfig, "log": LogConfig}


class _Bad(ValueError):
    """A value of the wrong type or out of range (the caller adds the key and the source)."""


def _convert(value: Any, setting: Setting, from_env: bool) -> Any:
    """``value`` as the setting's type: TOML values must have it already; environment strings
    are parsed (booleans true/false/1/0/yes/no, integers without a fraction, lists by commas)."""
    kind = setting.kind
    if from_env:
        text = value.strip()
        if kind is bool:
            if text.lower() in ENV_TRUE:
                return True
            if text.lower() in ENV_FALSE:
                return False
            raise _Bad
        if kind is int:
            if not re.fullmatch(r"[+-]?[0-9]+", text):
                raise _Bad
            return int(text)
        if kind is float:
            try:
                number = float(text)
            except ValueError:
                raise _Bad from None
            if not math.isfinite(number):
                raise _Bad
            return number
        if kind is list:
            return [item.strip() for item in value.split(",") if item.strip()]
        if "\x00" in value:
            raise _Bad
        return value
    if kind is bool:
        if not isinstance(value, bool):
            raise _Bad
        return value
    if kind is int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise _Bad
        return value
    if kind is float:
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            raise _Bad
        return float(value)
    if kind is list:
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise _Bad
        return [item.strip() for item in value if item.strip()]
    if not isinstance(value, str) or "\x00" in value:  # no file name or host holds a NUL
        raise _Bad
    return value


def check_value(key: str, value: Any, source: str, *, from_env: bool = False) -> Any:
    """``value`` for ``key`` converted and checked against SETTINGS, or a ConfigError naming the
    key and ``source`` (the file, the environment variable) in one line."""
    setting = SETTINGS[key]
    try:
        checked = _convert(value, setting, from_env)
        if setting.casefold:
            checked = checked.strip().lower()
        if not setting.valid(checked):
            raise _Bad
    except _Bad:
        raise ConfigError(f"{source}: {key} must be {setting.describe()}, got {value!r}") from None
    return checked


def _read_file(path: str | os.PathLike) -> dict:
    try:
        return tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a directory") from None
    except OSError as e:
        raise ConfigError(f"config file {path}: cannot read it ({e.strerror or e})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path}: {e}") from None


def _check_tls_files(section: str, values: dict, sources: dict) -> None:
    """``<section>.tls_cert`` and ``tls_key``: both or neither, and files that exist."""
    cert, key = values["tls_cert"], values["tls_key"]
    if bool(cert) != bool(key):
        where = sources[f"{section}.tls_cert" if cert else f"{section}.tls_key"]
        raise ConfigError(f"{where}: {section}.tls_cert and {section}.tls_key go together "
                          "(PEM certificate chain and its key)")
    for name, file in ((f"{section}.tls_cert", cert), (f"{section}.tls_key", key)):
        if file and not Path(file).expanduser().is_file():
            raise ConfigError(f"{sources[name]}: {name}: no file {file}")


def _check_api_tls(api: dict, sources: dict) -> None:
    """The event API takes publisher tokens: beyond loopback only over TLS (both PEM files)."""
    cert = api["tls_cert"]
    _check_tls_files("api", api, sources)
    if api["enabled"] and not cert and not _loopback(api["listen"]):
        raise ConfigError(f"{sources['api.listen']}: api.listen {api['listen']!r} is beyond loopback: set api.tls_cert "
                          "and api.tls_key (PEM files) so publisher tokens never cross the network in clear")


def _check_dashboard_access(dashboard: dict, sources: dict) -> None:
    """The dashboard shows every device's readings and whereabouts: beyond loopback only over TLS
    and behind a login (``password_file``), so neither the pages nor the password cross the
    network in clear. A password file, once named, must exist (it is read when the server is made)."""
    _check_tls_files("dashboard", dashboard, sources)
    password_file = dashboard["password_file"]
    if password_file and not Path(password_file).expanduser().is_file():
        raise ConfigError(f"{sources['dashboard.password_file']}: dashboard.password_file: no file {password_file}")
    if not dashboard["enabled"] or _loopback(dashboard["listen"]):
        return
    missing = [name for name in ("tls_cert", "tls_key", "password_file") if not dashboard[name]]
    if missing:
        raise ConfigError(f"{sources['dashboard.listen']}: dashboard.listen {dashboard['listen']!r} is beyond "
                          f"loopback: set {', '.join('dashboard.' + m for m in missing)} (HTTPS and a login) so "
                          "the readings and the password never cross the network in clear")


def _loopback(host: str) -> bool:
    import ipaddress

    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def load_config(path: str | os.PathLike | None = None, *, env: Mapping[str, str] | None = None,
                data_dir: str | os.PathLike | None = None) -> Config:
    """Merge defaults, the TOML file at ``path`` and the environment into a Config; ConfigError
    (one line: the key, where it came from, what it must be) on any value that is not usable."""
    env = os.environ if env is None else env
    merged = tomllib.loads(DEFAULTS_TOML)
    defaults = copy.deepcopy(merged)
    sources = {key: "defaults" for key in SETTINGS}
    if path is not None:
        where = f"config file {path}"
        for key, value in _read_file(path).items():
            if key not in defaults:
                raise ConfigError(f"{where}: unknown key {key!r}")
            if isinstance(defaults[key], dict):
                if not isinstance(value, dict):
                    raise ConfigError(f"{where}: [{key}] must be a table")
                for sub, subvalue in value.items():
                    if sub not in defaults[key]:
                        raise ConfigError(f"{where}: unknown key {key}.{sub}")
                    merged[key][sub] = check_value(f"{key}.{sub}", subvalue, where)
                    sources[f"{key}.{sub}"] = where
            else:
                merged[key] = check_value(key, value, where)
                sources[key] = where
    for key, default in defaults.items():
        subs = default.items() if isinstance(default, dict) else [(None, default)]
        for sub, _ in subs:
            name = f"W3GATE_{key}_{sub}".upper() if sub else f"W3GATE_{key}".upper()
            if name not in env:
                continue
            dotted = f"{key}.{sub}" if sub else key
            value = check_value(dotted, env[name], f"environment variable {name}", from_env=True)
            sources[dotted] = f"environment variable {name}"
            if sub:
                merged[key][sub] = value
            else:
                merged[key] = value
    if data_dir is not None:
        merged["data_dir"] = check_value("data_dir", str(data_dir), "--data-dir")
    mqtt = merged["mqtt"]
    if mqtt["reconnect_min_s"] > mqtt["reconnect_max_s"]:
        raise ConfigError(f"{sources['mqtt.reconnect_min_s']}: mqtt.reconnect_min_s ({mqtt['reconnect_min_s']:g}) "
                          f"must not exceed mqtt.reconnect_max_s ({mqtt['reconnect_max_s']:g})")
    _check_api_tls(merged["api"], sources)
    _check_dashboard_access(merged["dashboard"], sources)
    if merged["buffer"]["encrypt_at_rest"] and not merged["chain"]["key_passphrase_file"]:
        raise ConfigError(f"{sources['buffer.encrypt_at_rest']}: buffer.encrypt_at_rest needs "
                          "chain.key_passphrase_file: the data key is sealed to the node key, which is unlocked "
                          "with that file")
    if merged["market"]["contract"] and not merged["chain"]["enabled"]:
        raise ConfigError(f"{sources['market.contract']}: market.contract is set but [chain] is not enabled: "
                          "the market is followed and settled on the chain")
    sections = {name: cls(**{f.name: merged[name][f.name] for f in fields(cls)})
                for name, cls in _SECTIONS.items()}
    return Config(data_dir=Path(merged["data_dir"]).expanduser(), **sections)
