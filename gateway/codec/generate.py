"""Regenerate the two ``pebble_pb2.py`` modules from ``hardware/pebble/pebble.proto`` (needs
grpcio-tools).

The .proto is the Pebble wire format the gateway and the emulator share; each side compiles it
into its own module (``gateway/codec/pebble_pb2.py`` for the gateway's decoder,
``hardware/pebble/pebble_pb2.py`` for the emulator's encoder), the way the firmware (nanopb) and
a server compile the same schema separately. So the emulator imports nothing of the gateway's,
and all the two modules have in common is the schema text. Both are committed so nothing needs a
protobuf compiler to install; a unit test fails when either no longer matches the .proto.
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROTO = ROOT / "hardware" / "pebble" / "pebble.proto"
TARGET = Path(__file__).with_name("pebble_pb2.py")  # the gateway's
TARGETS = (TARGET, PROTO.with_name("pebble_pb2.py"))  # the gateway's, the emulator's


def generate() -> str:
    """Return the text protoc generates for the .proto."""
    from grpc_tools import protoc

    with tempfile.TemporaryDirectory() as out:
        rc = protoc.main(["protoc", f"-I{PROTO.parent}", f"--python_out={out}", str(PROTO)])
        if rc != 0:
            raise RuntimeError(f"protoc failed with exit code {rc}")
        return (Path(out) / "pebble_pb2.py").read_text()


if __name__ == "__main__":
    text = generate()
    for target in TARGETS:
        target.write_text(text)
        print(f"wrote {target}", file=sys.stderr)
