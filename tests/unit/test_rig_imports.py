"""The rig stands apart from the product. The emulators (hardware/) import nothing of the gateway:
they share with it only wire formats, which live with the device side (hardware/pebble/pebble.proto,
compiled by each side into its own module; hardware/pebble/topics.py; device_fw/frame.py), so a bug
in the gateway's codec or crypto cannot pass on both sides. The gateway, apart from its CLI's
development commands, imports from hardware/ only those wire formats, and nothing of the development
rig (rig/: private brokers, the local chain, the demo), which the product does not need."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SHARED_WIRE_FORMATS = ("hardware.pebble.topics",)  # what the gateway may import from hardware/


def imported_names(path: Path) -> set[str]:
    """Every dotted name a module imports, anywhere in it (lazy imports included); ``from a.b
    import c`` gives ``a.b.c``, so importing a submodule by name counts as importing it."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against the module's package
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def test_the_emulators_import_nothing_of_the_gateway():
    offenders = sorted(f"{path.relative_to(ROOT)}: {name}"
                       for path in (ROOT / "hardware").rglob("*.py")
                       for name in imported_names(path) if within(name, "gateway") or within(name, "rig"))
    assert not offenders, "hardware/ must share only wire formats with the gateway:\n" + "\n".join(offenders)


def test_the_product_imports_nothing_of_the_development_rig():
    cli = ROOT / "gateway" / "cli"  # `w3gate demo` runs the rig, loading it only then
    offenders = sorted(f"{path.relative_to(ROOT)}: {name}"
                       for path in (ROOT / "gateway").rglob("*.py") if cli not in path.parents
                       for name in imported_names(path) if within(name, "rig"))
    assert not offenders, "the gateway must not need the development rig:\n" + "\n".join(offenders)


def test_the_gateway_imports_only_wire_formats_from_the_rig():
    cli = ROOT / "gateway" / "cli"  # `w3gate sim` and `w3gate demo` drive the emulators: dev tools
    offenders = sorted(f"{path.relative_to(ROOT)}: {name}"
                       for path in (ROOT / "gateway").rglob("*.py") if cli not in path.parents
                       for name in imported_names(path)
                       if within(name, "hardware") and not any(within(name, w) for w in SHARED_WIRE_FORMATS))
    assert not offenders, "the gateway may import only wire formats from hardware/:\n" + "\n".join(offenders)


def test_the_emulators_load_without_the_gateway():
    """The same, as the interpreter sees it: no gateway or rig module is loaded, even indirectly."""
    modules = sorted(".".join(p.relative_to(ROOT).with_suffix("").parts) for p in (ROOT / "hardware").rglob("*.py")
                     if p.name not in ("__init__.py", "__main__.py"))
    code = ("import importlib, sys\n"
            f"for name in {modules!r}: importlib.import_module(name)\n"
            "print(' '.join(m for m in sys.modules if m.split('.')[0] in ('gateway', 'rig')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""


def test_the_import_walk_sees_every_form():
    source = ROOT / "hardware" / "pebble" / "device.py"
    names = imported_names(source)
    assert "hardware.pebble.topics" in names and "hardware.pebble.signing.sign" in names
