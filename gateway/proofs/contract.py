"""The ProofRegistry contract as the gateway ships it: the artifact ``contracts/compile.js``
builds from ``contracts/ProofRegistry.sol`` (ABI, bytecode, compiler), kept as package data so
an installed gateway can anchor without the repository."""
from __future__ import annotations

import json
from functools import cache
from importlib import resources

ARTIFACT = "ProofRegistry.json"  # package data of gateway.proofs (setup.cfg [options.package_data])
ANCHORED_EVENT = "Anchored(address,bytes32,uint64,uint32,uint48,uint48)"


@cache
def artifact() -> dict:
    """The compiled contract: ``abi``, ``bytecode``, ``deployedBytecode``, ``compiler``, ...
    Read once and shared: do not modify it."""
    return json.loads(resources.files("gateway.proofs").joinpath(ARTIFACT).read_text())


def load_abi() -> list:
    return artifact()["abi"]
