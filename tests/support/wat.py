"""Hand-written test applets (tests/data/wat/*.wat), assembled with wabt's wat2wasm."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

WAT_DIR = Path(__file__).resolve().parents[1] / "data" / "wat"


def assemble(name: str, out_dir: Path) -> bytes:
    """The module ``tests/data/wat/<name>.wat`` as WebAssembly bytes."""
    tool = shutil.which("wat2wasm")
    if tool is None:
        raise RuntimeError("wat2wasm is missing: install Debian's wabt package (./dev.sh setup does)")
    out = out_dir / f"{name}.wasm"
    subprocess.run([tool, str(WAT_DIR / f"{name}.wat"), "-o", str(out)], check=True)
    return out.read_bytes()
