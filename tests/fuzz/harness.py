"""One fuzz target under atheris, in its own process: ``python -m tests.fuzz.harness TARGET [libFuzzer
arguments]``. The gateway's modules are instrumented for coverage as they are imported."""
from __future__ import annotations

import importlib
import os
import pkgutil
import sys

import atheris


def main() -> None:
    name = sys.argv[1]
    with atheris.instrument_imports(include=["gateway", "device_fw"]):
        # every module a target may reach, imported now: one imported later is not instrumented
        import gateway
        import device_fw  # noqa: F401
        for module in pkgutil.walk_packages(gateway.__path__, "gateway."):
            if not module.name.startswith(("gateway.__main__", "gateway.cli", "gateway.chain", "gateway.proofs",
                                           "gateway.ble")):
                importlib.import_module(module.name)
        from tests.fuzz.targets import TARGETS, check
    target = TARGETS[name]
    argv0 = os.environ.get("W3GATE_FUZZ_ARGV0", sys.argv[0])  # what libFuzzer runs again to merge
    atheris.Setup([argv0, *sys.argv[2:]], lambda data: check(target, data))
    atheris.Fuzz()


if __name__ == "__main__":
    main()
