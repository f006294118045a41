"""A TinyGo-sized applet for the benchmark: about 290 KB, like the TinyGo builds of W3bstream's
examples (click2earn.wasm is 291 KB), which cannot be built here (TinyGo is not installable).

What makes a TinyGo applet cost more than an AssemblyScript one is its size (hundreds of
runtime, fmt and encoding functions to parse and load on every instantiation) and its layout (two
pages at start: the stack, then .rodata and .data, then the heap). So the module is
tests/data/wat/gosdk_word_count.wat (TinyGo's heap and the SDK's alloc) plus generated functions
(about 220 KB of code) and a 36 KB data segment, with a click2earn-like handler `counter`: it
logs "start received: <rid>", reads the payload, runs a few of the generated functions over it,
adds one to the int32 under KV key "clicks" and logs "clicks: <n>".
"""
from __future__ import annotations

import random
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT / "tests" / "data" / "wat" / "gosdk_word_count.wat"
DATA_AT = 67584  # the base module's __heap_base: the new data goes there, the heap after it
DATA_BYTES = 36 * 1024
FUNCTIONS = 440
STATEMENTS = 23  # per function: about 560 bytes of code each


def _function(i: int, rng: random.Random) -> str:
    body = "\n".join(
        f"    (local.set $a (i32.xor (i32.add (i32.mul (local.get $a) (i32.const {rng.randrange(3, 1 << 20)})) "
        f"(i32.load8_u offset={rng.randrange(DATA_BYTES)} (i32.const {DATA_AT}))) (i32.const {rng.randrange(1 << 24)})))"
        for _ in range(STATEMENTS))
    return f"  (func $gen{i} (param $a i32) (result i32)\n{body}\n    (local.get $a))\n"


COUNTER = """
  (data (i32.const 65704) "clicks")
  (data (i32.const 65712) "clicks: ")
  ;; click2earn's shape: log, payload, the runtime's work on it, the count in KV, log
  (func (export "counter") (param $rid i32) (result i32)
    (local $sp i32) (local $v i32) (local $buf i32) (local $msg i32)
    (call $enter)
    (local.set $sp (i32.sub (global.get $__stack_pointer) (i32.const 16)))
    (global.set $__stack_pointer (local.get $sp))
    (call $log_start (local.get $rid))
    (if (call $get_data (local.get $rid) (local.get $sp))
      (then (global.set $__stack_pointer (i32.add (local.get $sp) (i32.const 16)))
            (return (i32.const -1))))
    (drop %(calls)s)
    (if (i32.eqz (call $ws_get_db (i32.const 65704) (i32.const 6) (i32.add (local.get $sp) (i32.const 8))
                                  (i32.add (local.get $sp) (i32.const 12))))
      (then (local.set $v (i32.load (i32.load offset=8 (local.get $sp))))))
    (local.set $v (i32.add (local.get $v) (i32.const 1)))
    (local.set $buf (call $new (i32.const 4)))
    (i32.store (local.get $buf) (local.get $v))
    (drop (call $ws_set_db (i32.const 65704) (i32.const 6) (local.get $buf) (i32.const 4)))
    (local.set $msg (call $new (i32.const 24)))
    (call $log (local.get $msg) (call $utoa (call $append (local.get $msg) (i32.const 65712) (i32.const 8))
                                            (local.get $v)))
    (global.set $__stack_pointer (i32.add (local.get $sp) (i32.const 16)))
    (i32.const 0))
"""


def wat_text(seed: int = 14) -> str:
    """The module's text: the base module, its heap moved past the new data, the additions."""
    rng = random.Random(seed)
    base = BASE.read_text()
    heap_base = f"(global $__heap_base i32 (i32.const {DATA_AT}))"
    if heap_base not in base:
        raise RuntimeError(f"{BASE} no longer declares {heap_base}")
    text = base.replace(heap_base, f"(global $__heap_base i32 (i32.const {DATA_AT + DATA_BYTES}))")
    text = text[:text.rstrip().rindex(")")]  # the module's closing parenthesis
    data = "".join(f"\\{rng.randrange(256):02x}" for _ in range(DATA_BYTES))
    calls = "(i32.load offset=4 (local.get $sp))"
    for i in range(0, FUNCTIONS, FUNCTIONS // 8):  # eight of them per event, as a parser would
        calls = f"(call $gen{i} {calls})"
    return (text + f'  (data (i32.const {DATA_AT}) "{data}")\n' + COUNTER % {"calls": calls}
            + "".join(_function(i, rng) for i in range(FUNCTIONS)) + ")\n")


def build(out_dir: Path) -> Path:
    """Assemble the module into ``out_dir`` (wabt's wat2wasm); its path."""
    tool = shutil.which("wat2wasm")
    if tool is None:
        raise RuntimeError("wat2wasm is missing: install Debian's wabt package (./dev.sh setup does)")
    source, out = out_dir / "tinygo-sized.wat", out_dir / "tinygo-sized.wasm"
    source.write_text(wat_text())
    subprocess.run([tool, str(source), "-o", str(out)], check=True)
    return out


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        wasm = build(Path(tmp))
        print(f"{wasm.name}: {wasm.stat().st_size} bytes")
