"""The committed contract artifact is what the committed source compiles to, with the pinned
solcjs and settings: nobody deploys bytecode that the source in the repository does not explain."""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / "contracts" / "ProofRegistry.sol"
ARTIFACT = ROOT / "gateway" / "proofs" / "ProofRegistry.json"  # package data, written by contracts/compile.js
CONTRACTS = {"ProofRegistry": "proofs", "DataMarket": "market"}  # contract -> the package shipping it


@pytest.fixture(scope="module", params=sorted(CONTRACTS))
def recompiled(request) -> tuple[str, str]:
    node = shutil.which("node")
    if node is None or not (ROOT / "node_modules" / "solc").is_dir():
        pytest.fail("node and node_modules/solc are needed: run `npm ci` (./dev.sh setup does)")
    result = subprocess.run([node, "contracts/compile.js", request.param, "--stdout"], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return request.param, result.stdout


def _artifact_path(name: str):
    return ROOT / "gateway" / CONTRACTS[name] / f"{name}.json"


def test_artifact_is_exactly_what_the_source_compiles_to(recompiled):
    name, text = recompiled
    assert text == _artifact_path(name).read_text(), f"run `node contracts/compile.js` and commit {name}.json"


@pytest.mark.parametrize("name", sorted(CONTRACTS))
def test_artifact_names_the_source_it_was_built_from(name):
    artifact = json.loads(_artifact_path(name).read_text())
    assert artifact["sourceSha256"] == hashlib.sha256((ROOT / "contracts" / f"{name}.sol").read_bytes()).hexdigest()


@pytest.mark.parametrize("name", sorted(CONTRACTS))
def test_the_gateway_loads_the_artifact_as_package_data(name):
    import importlib
    module = importlib.import_module(f"gateway.{CONTRACTS[name]}.contract")  # what an installed gateway uses
    assert module.artifact() == json.loads(_artifact_path(name).read_text())


def test_compiler_and_settings_are_pinned():
    artifact = json.loads(ARTIFACT.read_text())
    package = json.loads((ROOT / "package.json").read_text())
    assert artifact["compiler"]["version"].startswith(package["devDependencies"]["solc"] + "+")
    assert artifact["settings"] == {"optimizer": {"enabled": True, "runs": 200}, "evmVersion": "cancun"}


def test_artifact_exposes_the_registry_interface():
    abi = json.loads(ARTIFACT.read_text())["abi"]
    functions = {f["name"]: [i["type"] for i in f["inputs"]] for f in abi if f["type"] == "function"}
    assert functions["anchor"] == ["bytes32", "uint64", "uint32", "uint48", "uint48"]
    assert functions["anchorOf"] == ["bytes32"]
    assert functions["nextSequence"] == ["address"]
    assert functions["isGateway"] == ["address"]
    assert {"addGateway", "removeGateway"} <= functions.keys()
    events = {e["name"]: [(i["name"], i["indexed"]) for i in e["inputs"]] for e in abi if e["type"] == "event"}
    assert events["Anchored"][:2] == [("gateway", True), ("root", True)]
    errors = {e["name"] for e in abi if e["type"] == "error"}
    assert {"NotGateway", "UnexpectedSequence"} <= errors
