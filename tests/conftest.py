"""Shared fixtures: the real Pebble test vectors (tests/data/pebble_vectors.json, or the file named by
$W3GATE_VECTORS: signed messages published in IoTeX's pebble-server tests and the pebble-data-spec
README, described in docs/pebble-wire.md "Test vectors"), a real broker and a real chain."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
VECTORS_PATH = Path(os.environ.get("W3GATE_VECTORS", ROOT / "tests" / "data" / "pebble_vectors.json"))


@pytest.fixture(scope="session")
def vectors() -> dict:
    """Vectors by short name: A (data, high-S), B (confirm), C (G1 JSON)."""
    data = json.loads(VECTORS_PATH.read_text())
    return {v["name"][0]: v for v in data["vectors"]}


@pytest.fixture
def mosquitto(tmp_path):
    """A real mosquitto broker on a random loopback port, stopped after the test."""
    from rig.broker import start_broker

    broker = start_broker(tmp_path)
    yield broker
    broker.stop()


@pytest.fixture
def anvil(tmp_path):
    """A real anvil chain (id 31337) on a random loopback port, stopped after the test."""
    from rig.chain import start_anvil

    chain = start_anvil(tmp_path / "anvil")
    yield chain
    chain.stop()


@pytest.fixture(scope="session")
def built_applets() -> Path:
    """applets/build/, with every applet compiled by asc (the build skips what is up to date)."""
    import shutil
    import subprocess

    node = shutil.which("node")
    if node is None or not (ROOT / "node_modules" / "assemblyscript").is_dir():
        pytest.fail("node and node_modules/assemblyscript are needed: run `./dev.sh setup` (npm ci)")
    result = subprocess.run([node, "applets/build.js", "--quiet"], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    return ROOT / "applets" / "build"
