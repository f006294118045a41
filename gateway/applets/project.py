"""Projects: applets + strategies + env + database schema, declared in a TOML file and deployed
into the data directory.

    name = "pebble-monitor"
    [events]
    pebble = true                 # verified Pebble messages reach this project (all devices)
    legacy = true                 # and attested records of serial and BLE sensors
    [[applets]]
    name = "validator"
    wasm = "../applets/build/pebble-validator.wasm"     # relative to this file
    [[strategies]]
    event = "PEBBLE_DATA"         # an event type, or "DEFAULT" for whatever matches nothing else
    applet = "validator"
    handler = "start"             # the default
    operators = ["minter"]        # keys its applets may send with (w3gate key new --operator minter);
                                  # the first is ws_send_tx's, others by ws_send_tx_with_operator's name
    command_devices = ["door"]    # legacy devices (names or ids) its applets may command through
                                  # POST /system/device_command; none unless listed
    [env]
    REWARD_EVERY = "10"
    [database]
    schema = ["CREATE TABLE IF NOT EXISTS readings (device TEXT, t REAL)"]
    [[cron]]
    expression = "*/5 * * * *"    # every five minutes: an event {"ID", "Timestamp"} as upstream's
    event = "REPORT"
    [[monitors]]                  # with [chain] enabled: logs of a contract, as go-ethereum's Log JSON
    kind = "contract_log"         # or "chain_height" with height = N: {"HeaderNumber": N} once
    address = "0x..."
    topics = ["0xddf252ad..."]    # optional, up to four ("" for any)
    event = "TRANSFER"

Deploying checks every module against the host ABI (unknown imports are refused by name), copies
it to ``<data>/modules/<sha256>.wasm`` (content-addressed: the same module is stored once and a
redeploy that changes nothing changes nothing) and writes ``<data>/projects/<name>/project.json``,
which a running gateway picks up without a restart.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import shutil
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path

from croniter import croniter

from gateway.applets.abi import check_module
from gateway.applets.module import ModuleError, inspect
from gateway.codec.record import Record
from gateway.errors import W3gateError
from gateway.layout import DataDir, ProjectFiles
from gateway.storage import atomic_write, private_dir

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # whole names only: fullmatch
DEFAULT_EVENT = "DEFAULT"
MAX_MODULE_BYTES = 1 << 20  # upstream's upload limit


class ProjectError(W3gateError):
    """A project file or deployment that cannot be used; the message says what to fix."""

    reason = "bad_project"


@dataclass(frozen=True)
class Strategy:
    event: str
    applet: str
    handler: str = "start"


@dataclass(frozen=True)
class CronJob:
    expression: str  # five fields (minute hour day month weekday), or six with seconds last
    event: str

    @property
    def id(self) -> str:
        return hashlib.sha256(f"{self.expression}|{self.event}".encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Project:
    name: str
    applets: dict[str, str]  # applet name -> module sha256
    strategies: list[Strategy]
    env: dict[str, str] = field(default_factory=dict)
    schema: list[str] = field(default_factory=list)
    pebble: bool = False  # verified Pebble messages are events of this project
    legacy: bool = False  # so are attested records of legacy (serial, BLE) sensors
    cron: list[CronJob] = field(default_factory=list)
    monitors: list[dict] = field(default_factory=list)  # chain monitors (gateway/chain/monitors.py)
    operators: list[str] = field(default_factory=list)  # operator keys its applets send with; first = default
    reuse_instances: bool = False  # opt-in: instances keep their memory across events (not W3bstream's rule)
    command_devices: list[str] = field(default_factory=list)  # legacy devices its applets may command

    def takes(self, record: Record) -> bool:
        """Whether a buffered record is an event of this project."""
        return self.legacy if record.family == "legacy" else self.pebble

    def route(self, event_type: str) -> list[Strategy]:
        """Every strategy for this event type, else the DEFAULT ones (upstream's rule)."""
        matched = [s for s in self.strategies if s.event == event_type]
        return matched or [s for s in self.strategies if s.event == DEFAULT_EVENT]

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "Project":
        return cls(data["name"], dict(data["applets"]), [Strategy(**s) for s in data["strategies"]],
                   dict(data.get("env") or {}), list(data.get("schema") or []), bool(data.get("pebble")),
                   bool(data.get("legacy")), [CronJob(**c) for c in data.get("cron") or []],
                   list(data.get("monitors") or []), list(data.get("operators") or []),
                   bool(data.get("reuse_instances")), list(data.get("command_devices") or []))


class ProjectStore:
    """Deployed projects and their modules under the data directory."""

    def __init__(self, layout: DataDir) -> None:
        self.layout = layout
        self.modules_dir = self.layout.modules
        self.projects_dir = self.layout.projects

    def files(self, name: str) -> ProjectFiles:
        """Where project ``name`` keeps its definition, state and logs."""
        return self.layout.project(name)

    def load(self, name: str) -> Project | None:
        path = self.files(name).definition
        try:
            return Project.from_json(json.loads(path.read_text()))
        except FileNotFoundError:
            return None

    def all(self) -> list[Project]:
        if not self.projects_dir.is_dir():
            return []
        found = (self.load(p.name) for p in sorted(self.projects_dir.iterdir()) if p.is_dir())
        return [p for p in found if p is not None]

    def version(self) -> tuple:
        """Changes whenever a project is deployed or removed (for live reload)."""
        if not self.projects_dir.is_dir():
            return ()
        found = (self.files(p.name).definition for p in self.projects_dir.iterdir())
        return tuple(sorted((p.parent.name, p.stat().st_mtime_ns) for p in found if p.exists()))

    def deploy(self, project_file: Path) -> Project:
        """Check and install a project from its TOML file (replacing one of the same name)."""
        project, modules = parse_project_file(project_file)
        private_dir(self.modules_dir)
        for sha, wasm in modules.items():
            target = self.layout.module(sha)
            if not target.exists():
                atomic_write(target, wasm)
        files = self.files(project.name)
        private_dir(files.dir)
        atomic_write(files.definition, json.dumps(project.to_json(), indent=2).encode())
        return project

    def remove(self, name: str, *, keep_state: bool = False) -> bool:
        files = self.files(name)
        if not files.definition.exists():
            return False
        if keep_state:
            files.definition.unlink()
        else:
            shutil.rmtree(files.dir)
        return True


def parse_project_file(path: Path) -> tuple[Project, dict[str, bytes]]:
    """The project a TOML file declares, and its modules by sha256 (checked, not yet stored)."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ProjectError(f"{path}: {e}") from None
    except UnicodeDecodeError:
        raise ProjectError(f"{path} is not UTF-8 text") from None
    name = data.get("name")
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise ProjectError(f"{path}: 'name' must be 1-64 letters, digits, '_', '.' or '-'")
    applets: dict[str, str] = {}
    modules: dict[str, bytes] = {}
    for entry in _tables(path, data, "applets"):
        applet, wasm_path = entry.get("name"), entry.get("wasm")
        if not isinstance(applet, str) or not NAME.fullmatch(applet) or not isinstance(wasm_path, str) \
                or not wasm_path or "\0" in wasm_path:
            raise ProjectError(f"{path}: each [[applets]] needs a 'name' and a 'wasm' path")
        if applet in applets:
            raise ProjectError(f"{path}: applet {applet!r} is declared twice")
        file = (path.parent / wasm_path).resolve()
        try:
            wasm = _read_module(file)
        except OSError as e:
            raise ProjectError(f"{path}: applet {applet!r}: {e}") from None
        if wasm is None:
            raise ProjectError(f"{path}: applet {applet!r}: {file} is not a regular file")
        if len(wasm) > MAX_MODULE_BYTES:
            raise ProjectError(f"{path}: applet {applet!r} is {len(wasm)} bytes, the limit is {MAX_MODULE_BYTES}")
        try:
            info = inspect(wasm)
            check_module(info)
        except ModuleError as e:
            raise ProjectError(f"applet {applet!r} ({file.name}) cannot run here: {e.detail}") from None
        applets[applet] = info.sha256
        modules[info.sha256] = wasm
    if not applets:
        raise ProjectError(f"{path}: a project needs at least one [[applets]] entry")
    strategies = []
    for entry in _tables(path, data, "strategies") or [{"event": DEFAULT_EVENT, "applet": next(iter(applets))}]:
        strategy = Strategy(str(entry.get("event", DEFAULT_EVENT)), str(entry.get("applet", "")),
                            str(entry.get("handler", "start")))
        if strategy.applet not in applets:
            raise ProjectError(f"{path}: a strategy names applet {strategy.applet!r}, which is not declared")
        info = inspect(modules[applets[strategy.applet]])
        if info.exports.get(strategy.handler) != "func":
            raise ProjectError(f"{path}: applet {strategy.applet!r} exports no handler {strategy.handler!r}")
        signature = info.signatures.get(strategy.handler)
        if signature != HANDLER_SIGNATURE:
            raise ProjectError(f"{path}: applet {strategy.applet!r}: handler {strategy.handler!r} is "
                               f"{_describe(signature)}, but a handler is called as (i32 rid) -> i32: "
                               + FLOW_OPERATORS_NOTE + f" (W3bstream's main answers every such event with "
                               f"code -1, {_upstream_answer(signature)!r})")
        strategies.append(strategy)
    env = _table(path, data, "env")
    if not all(isinstance(v, (str, int, float, bool)) for v in env.values()):
        raise ProjectError(f"{path}: [env] must be a table of strings")
    schema = _table(path, data, "database").get("schema") or []
    if not isinstance(schema, list) or not all(isinstance(s, str) for s in schema):
        raise ProjectError(f"{path}: [database] schema must be a list of SQL statements")
    events = _table(path, data, "events")
    pebble, legacy = events.get("pebble", False), events.get("legacy", False)
    if not isinstance(pebble, bool) or not isinstance(legacy, bool):
        raise ProjectError(f"{path}: [events] pebble and legacy are true or false")
    cron = []
    for entry in _tables(path, data, "cron"):
        expression, event = entry.get("expression"), entry.get("event")
        if not isinstance(expression, str) or not croniter.is_valid(expression):
            raise ProjectError(f"{path}: [[cron]] expression {expression!r} is not a cron expression "
                               "(five fields, or six with seconds last)")
        if not isinstance(event, str) or not event:
            raise ProjectError(f"{path}: [[cron]] needs the 'event' type it delivers")
        cron.append(CronJob(expression, event))
    monitors = [_monitor(path, entry) for entry in _tables(path, data, "monitors")]
    operators = data.get("operators") or []
    if not isinstance(operators, list) or not all(isinstance(o, str) and re.match(r"^[A-Za-z0-9_-]{1,32}$", o)
                                                  for o in operators):
        raise ProjectError(f"{path}: 'operators' is a list of operator key names (w3gate key new --operator NAME)")
    command_devices = data.get("command_devices") or []
    if not isinstance(command_devices, list) or not all(isinstance(d, str) and d for d in command_devices):
        raise ProjectError(f"{path}: 'command_devices' is a list of legacy device names or ids "
                           "(w3gate device sensors) its applets may command")
    instances = data.get("instances", "fresh")
    if instances not in ("fresh", "reuse"):
        raise ProjectError(f"{path}: 'instances' is \"fresh\" (every event sees a freshly instantiated module, "
                           f"as on W3bstream) or \"reuse\" (memory carries over between events), not {instances!r}")
    return Project(name, applets, strategies, {str(k): str(v) for k, v in env.items()}, schema, pebble,
                   legacy, cron, monitors, operators, instances == "reuse", command_devices), modules


HANDLER_SIGNATURE = "i(i)"  # handler(rid i32) -> i32, as W3bstream calls every strategy's handler
FLOW_OPERATORS_NOTE = ("a flow operator (filter, map, groupBy: one argument; reduce: two) is not a handler: "
                       "flows (PROJECT_FLOW) were a proof of concept W3bstream fed events to only from v1.4.6 "
                       "to v1.5.5, dead code on its main since #738, and w3gate runs strategies as main does")
_WASM_TYPES = {"i": "i32", "I": "i64", "f": "f32", "F": "f64"}


def _describe(signature: str | None) -> str:
    """A pywasm3 signature ("i(ii)") as WebAssembly text: "(i32, i32) -> i32"."""
    if not signature or "(" not in signature:
        return "of an unknown type"
    result, params = signature[0], signature[2:-1]
    args = ", ".join(_WASM_TYPES.get(p, "?") for p in params)
    return f"({args}) -> {_WASM_TYPES.get(result, 'nothing')}"


def _upstream_answer(signature: str | None) -> str:
    """What W3bstream's main (wasmtime) says when it calls a handler of this type with one i32."""
    if not signature or "(" not in signature:
        return "func not imported"
    params = signature[2:-1]
    if not params:
        return "too many arguments provided"
    if len(params) > 1:
        return f"expected {len(params)} arguments, got 1"
    if params != "i":
        return f"argument type mismatch: found i32 but expected {_WASM_TYPES.get(params, '?')}"
    return "wait timeout"  # an i32 argument and no i32 result: the call panics and nothing answers


def _read_module(file: Path) -> bytes | None:
    """The module's bytes, at most one byte past the limit; None for what is not a regular file
    (``/dev/zero`` or a FIFO would be read for ever)."""
    with open(os.open(file, os.O_RDONLY | os.O_NONBLOCK), "rb") as f:  # a FIFO must not block the open
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            return None
        return f.read(MAX_MODULE_BYTES + 1)


def _table(path: Path, data: dict, key: str) -> dict:
    value = data.get(key) or {}
    if not isinstance(value, dict):
        raise ProjectError(f"{path}: [{key}] must be a table")
    return value


def _tables(path: Path, data: dict, key: str) -> list[dict]:
    value = data.get(key) or []
    if not isinstance(value, list) or not all(isinstance(entry, dict) for entry in value):
        raise ProjectError(f"{path}: {key} must be [[{key}]] tables")
    return value


ADDRESS = re.compile(r"^0x[0-9a-fA-F]{40}$")
TOPIC = re.compile(r"^0x[0-9a-fA-F]{64}$")


def _monitor(path: Path, entry: dict) -> dict:
    kind = entry.get("kind")
    event = entry.get("event", "MONITOR_DEFAULT")
    if kind == "chain_height":
        if not isinstance(entry.get("height"), int) or entry["height"] < 0:
            raise ProjectError(f"{path}: a chain_height monitor needs 'height', a block number")
        return {"kind": kind, "event": event, "height": entry["height"]}
    if kind == "contract_log":
        address, topics = entry.get("address"), entry.get("topics") or []
        if not isinstance(address, str) or not ADDRESS.match(address):
            raise ProjectError(f"{path}: a contract_log monitor needs 'address', a 0x contract address")
        if not isinstance(topics, list) or len(topics) > 4 or \
                not all(t in ("", None) or (isinstance(t, str) and TOPIC.match(t)) for t in topics):
            raise ProjectError(f"{path}: 'topics' is a list of up to four 32-byte 0x topics (\"\" for any)")
        start = entry.get("block_start")
        if start is not None and (not isinstance(start, int) or start < 0):
            raise ProjectError(f"{path}: 'block_start' is a block number")
        return {"kind": kind, "event": event, "address": address, "topics": [t or None for t in topics],
                "block_start": start}
    raise ProjectError(f"{path}: a [[monitors]] kind is 'chain_height' or 'contract_log', not {kind!r}")
