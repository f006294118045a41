"""Regenerate ``pebble_pb2.py`` from ``hardware/pebble/pebble.proto`` (needs grpcio-tools).

The generated module is committed so the gateway installs without a protobuf compiler; a unit
test regenerates it and fails when it no longer matches the .proto.
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

PROTO = Path(__file__).resolve().parents[2] / "hardware" / "pebble" / "pebble.proto"
TARGET = Path(__file__).with_name("pebble_pb2.py")


def generate() -> str:
    """Return the text protoc generates for the .proto."""
    from grpc_tools import protoc

    with tempfile.TemporaryDirectory() as out:
        rc = protoc.main(["protoc", f"-I{PROTO.parent}", f"--python_out={out}", str(PROTO)])
        if rc != 0:
            raise RuntimeError(f"protoc failed with exit code {rc}")
        return (Path(out) / "pebble_pb2.py").read_text()


if __name__ == "__main__":
    TARGET.write_text(generate())
    print(f"wrote {TARGET}", file=sys.stderr)
