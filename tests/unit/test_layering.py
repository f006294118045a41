"""Imports go down the pipeline, never up (docs/architecture.md, "Rules of the house"): the
codecs (and the record format) know no other layer, the buffer knows neither verification nor
the device families, the chain service knows nothing of proofs or applets, and proofs no longer
drive the applet runtime. Read from the source, so a stray import fails here rather than as a
cycle at run time."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

GATEWAY = Path(__file__).resolve().parents[2] / "gateway"


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


ABOVE_VERIFY = ("gateway.buffer", "gateway.applets", "gateway.proofs", "gateway.chain", "gateway.node")
SOURCES = ("gateway.pebble", "gateway.legacy", "gateway.ingest", "gateway.ble")


@pytest.mark.parametrize(("package", "forbidden"), [
    ("codec", ("gateway.verify", *SOURCES, *ABOVE_VERIFY)),
    ("verify", (*SOURCES, *ABOVE_VERIFY)),
    ("buffer", ("gateway.verify", *SOURCES, "gateway.applets", "gateway.proofs", "gateway.chain", "gateway.node")),
    ("chain", ("gateway.proofs", "gateway.applets", "gateway.node")),
    ("proofs", ("gateway.applets", "gateway.node")),
])
def test_a_lower_layer_never_imports_a_higher_one(package, forbidden):
    for path in sorted((GATEWAY / package).glob("*.py")):
        bad = sorted(m for m in imports_of(path) if m.startswith(forbidden))
        assert not bad, f"{path.relative_to(GATEWAY.parent)} imports {bad}"


def test_the_anchorer_has_a_journal_rather_than_being_one():
    from gateway.proofs.anchorer import Anchorer
    from gateway.proofs.journal import BatchJournal
    assert not issubclass(Anchorer, BatchJournal)
