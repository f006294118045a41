"""The data directory's layout: every path it names, pinned (they are the on-disk format), and
gateway/layout.py the only module that spells them."""
from __future__ import annotations

import ast
import inspect
from pathlib import Path

from gateway.config import load_config
from gateway.layout import BrokerFiles, ClientFiles, DashboardFiles, DataDir, ProjectFiles

ROOT = Path(__file__).resolve().parents[2]
GATEWAY = ROOT / "gateway"

# Every property of DataDir and ProjectFiles, and the name it has on disk (relative to its directory).
DATA_DIR = {
    "devices": "devices.json",
    "legacy_devices": "legacy_devices.json",
    "legacy_seq": "legacy_seq.json",
    "serial_holds": "serial-holds",
    "status": "status.json",
    "records": "records",
    "modules": "modules",
    "projects": "projects",
    "node_key": "node-key.json",
    "data_key": "datakey.json",
    "market": "market",
    "operators": "operators",
    "txjournal": "txjournal.json",
    "proofs": "proofs",
    "fleet": "fleet",
    "broker": "broker",
    "dashboard": "dashboard",
}
BROKER = {
    "conf": "mosquitto.conf",
    "passwd": "passwd",
    "acl": "acl",
    "gateway_secret": "gateway.secret",
    "ca_cert": "ca.crt",
    "ca_key": "ca.key",
    "server_cert": "server.crt",
    "server_key": "server.key",
    "pid": "mosquitto.pid",
    "clients": "clients",
}
CLIENT = {"ca": "ca.crt", "cert": "client.crt", "key": "client.key"}
DASHBOARD = {"tls_cert": "tls.crt", "tls_key": "tls.key", "password": "password"}
PROJECT = {
    "definition": "project.json",
    "state": "state.sqlite",
    "applet_log": "applet.log",
    "worker_stderr": "worker.stderr",
    "metrics": "metrics.log",
    "publishers": "publishers.json",
    "txs": "txs.log",
    "monitors": "monitors.json",
}
# What the names of templated files (modules/<sha256>.wasm, operators/<name>.txjournal.json) end with.
SUFFIXES = (".wasm", ".txjournal.json")

# Literals that spell a layout name for something else, or that wait for a module being rewritten.
ALLOWED = {
    ("gateway/cli/demo.py", "fleet"): "the demo's own work directory, beside the gateway's data directory",
}


def _properties(cls: type) -> list[str]:
    return [name for name, _ in inspect.getmembers(cls, lambda m: isinstance(m, property))]


def test_every_path_of_the_layout(tmp_path):
    layout = DataDir(tmp_path)
    assert sorted(_properties(DataDir)) == sorted(DATA_DIR), "a new path needs its entry here (and its name)"
    for prop, name in DATA_DIR.items():
        path = getattr(layout, prop)
        assert (path.dir if isinstance(path, (BrokerFiles, DashboardFiles)) else path) == tmp_path / name, prop
    assert layout.module("ab" * 32) == tmp_path / "modules" / f"{'ab' * 32}.wasm"
    assert layout.operator_key("minter") == tmp_path / "operators" / "minter.json"
    assert layout.operator_txjournal("minter") == tmp_path / "operators" / "minter.txjournal.json"

    project = layout.project("pebble-demo")
    assert project == ProjectFiles(tmp_path / "projects" / "pebble-demo")
    assert sorted(_properties(ProjectFiles)) == sorted(PROJECT)
    for prop, name in PROJECT.items():
        assert getattr(project, prop) == tmp_path / "projects" / "pebble-demo" / name, prop

    broker = layout.broker
    assert broker == BrokerFiles(tmp_path / "broker")
    assert sorted(_properties(BrokerFiles)) == sorted(BROKER)
    for prop, name in BROKER.items():
        assert getattr(broker, prop) == tmp_path / "broker" / name, prop
    dashboard = layout.dashboard
    assert sorted(_properties(DashboardFiles)) == sorted(DASHBOARD)
    for prop, name in DASHBOARD.items():
        assert getattr(dashboard, prop) == tmp_path / "dashboard" / name, prop
    client = broker.client("350000000000001")
    assert client == ClientFiles(tmp_path / "broker" / "clients" / "350000000000001")
    assert sorted(_properties(ClientFiles)) == sorted(CLIENT)
    for prop, name in CLIENT.items():
        assert getattr(client, prop) == client.dir / name, prop


def test_every_path_says_what_it_holds():
    for cls, props in ((DataDir, DATA_DIR), (ProjectFiles, PROJECT), (BrokerFiles, BROKER), (ClientFiles, CLIENT),
                       (DashboardFiles, DASHBOARD)):
        for prop in props:
            doc = getattr(cls, prop).__doc__ or ""
            assert doc.startswith(props[prop].split(".")[0]) and len(doc.splitlines()) == 1, prop


def test_config_gives_the_layout_of_its_data_dir(tmp_path):
    config = load_config(env={}, data_dir=tmp_path / "d")
    assert config.layout == DataDir(tmp_path / "d")
    assert config.layout.devices == tmp_path / "d" / "devices.json"


def _names() -> tuple[set[str], set[str]]:
    """Every layout name, and those too distinctive to mean anything else (a dot or a dash)."""
    names = set(DATA_DIR.values()) | set(PROJECT.values()) | set(BROKER.values()) | set(CLIENT.values())
    return names, {n for n in names if "." in n or "-" in n}


def _docstrings(tree: ast.AST) -> set[int]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def _constants(trees: dict[str, ast.AST]) -> dict[str, set[str]]:
    """Module-level ``NAME = "text"`` in any gateway module: a name used in a path stands for its text."""
    found: dict[str, set[str]] = {}
    for tree in trees.values():
        for node in tree.body:
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) \
                    and isinstance(node.value.value, str):
                for target in node.targets:
                    if isinstance(target, ast.Name):
                        found.setdefault(target.id, set()).add(node.value.value)
    return found


def _path_parts(node: ast.AST) -> list[ast.AST]:
    """The operands a path is built from here: right of ``/``, or the arguments of a path call."""
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
        return [node.right]
    if isinstance(node, ast.Call):
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
        if name in ("joinpath", "with_name", "Path", "PurePath", "join"):
            return list(node.args)
    return []


def _texts(node: ast.AST, constants: dict[str, set[str]]) -> set[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return {node.value}
    if isinstance(node, ast.JoinedStr):
        return {v.value for v in node.values if isinstance(v, ast.Constant) and isinstance(v.value, str)}
    if isinstance(node, ast.Name):
        return constants.get(node.id, set())
    if isinstance(node, ast.Attribute):
        return constants.get(node.attr, set())
    return set()


def _builders(files: dict[str, str]) -> list[str]:
    """Where modules (other than the layout) spell a data-directory name: ``file:line: name``."""
    names, distinctive = _names()
    trees = {rel: ast.parse(text, rel) for rel, text in files.items()}
    constants = _constants(trees)
    found = []
    for rel, tree in trees.items():
        if rel == "gateway/layout.py":
            continue
        docs = _docstrings(tree)
        for node in ast.walk(tree):
            hits = set()
            if isinstance(node, ast.Constant) and node.value in distinctive and id(node) not in docs:
                hits.add(node.value)
            for part in _path_parts(node):
                hits |= {t for t in _texts(part, constants) if t in names or t.endswith(SUFFIXES)}
            found += [f"{rel}:{node.lineno}: {hit}" for hit in sorted(hits) if (rel, hit) not in ALLOWED]
    return sorted(set(found))


def test_no_module_builds_a_data_dir_name_itself():
    """The layout stays the one owner: a module that needs a path takes it from the layout
    (what lies inside records/ and proofs/ is the store's and the anchorer's own)."""
    files = {p.relative_to(ROOT).as_posix(): p.read_text(encoding="utf-8") for p in sorted(GATEWAY.rglob("*.py"))}
    assert _builders(files) == []


def test_the_check_finds_each_way_of_building_a_name():
    source = '''
"""A docstring may name status.json."""
from pathlib import Path
JOURNAL = "txjournal.json"
SUB = "proofs"
def paths(data_dir, sha, name):
    """So may this one: devices.json."""
    help_text = "written to devices.json for new devices"
    return [data_dir / "devices.json", data_dir / "records", data_dir / JOURNAL, data_dir / SUB,
            data_dir / "modules" / f"{sha}.wasm", Path(data_dir, "fleet"), data_dir.joinpath("operators"),
            data_dir / f"{name}.txjournal.json", {"records": 1}["records"], "state.sqlite", data_dir / "seg-1.json"]
'''
    found = _builders({"gateway/example.py": source})
    assert found == sorted(f"gateway/example.py:{line}: {name}" for line, name in [
        (4, "txjournal.json"), (9, "devices.json"), (9, "records"), (9, "txjournal.json"), (9, "proofs"),
        (10, "modules"), (10, ".wasm"), (10, "fleet"), (10, "operators"), (11, ".txjournal.json"),
        (11, "state.sqlite")])
