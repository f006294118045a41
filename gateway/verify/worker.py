"""The signature worker: a small process that checks batches of secp256k1 signatures.

Why a process and not a thread: coincurve releases the GIL around each libsecp256k1 call, and
taking it back means waiting for the event loop to let go, several times per signature. Under
load the loop always holds it, so a verify thread crawls (measured: 22k verifications/s alone,
under 300/s beside a busy Python thread). In its own process the check runs on the other core
at full speed and the loop pays one pipe write and one read per batch.

Protocol on stdin/stdout, both binary:
    request  = u32be count, then count × (public key X||Y 64 bytes, digest 32, signature r||s 64)
    response = count bytes, 1 where the signature verifies, 0 where it does not
The worker exits when stdin closes (also when the gateway dies: the pipe closes with it). It imports only the curve module, so it starts fast.
"""
from __future__ import annotations

import signal
import struct
import sys

from gateway.verify.secp256k1 import parse_public_key, verify_parsed

ITEM = 64 + 32 + 64
KEY_CACHE_LIMIT = 100_000


def encode_request(items: list[tuple[bytes, bytes, bytes]]) -> bytes:
    """``items`` are (public key X||Y, digest, signature) triples."""
    return struct.pack(">I", len(items)) + b"".join(k + d + s for k, d, s in items)


class Checker:
    """Verifies with parsed keys kept in a bounded cache (a fleet sends from the same keys)."""

    def __init__(self) -> None:
        self._keys: dict[bytes, object] = {}

    def verify(self, xy: bytes, digest: bytes, signature: bytes) -> bool:
        key = self._keys.get(xy)
        if key is None:
            try:
                key = parse_public_key(b"\x04" + xy)
            except ValueError:
                return False
            if len(self._keys) >= KEY_CACHE_LIMIT:
                self._keys.clear()
            self._keys[xy] = key
        return verify_parsed(key, digest, signature)

    def batch(self, body: bytes) -> bytes:
        verify = self.verify
        return bytes(verify(body[i:i + 64], body[i + 64:i + 96], body[i + 96:i + ITEM])
                     for i in range(0, len(body), ITEM))


def _read_exactly(stream, n: int) -> bytes | None:
    data = stream.read(n)
    return data if len(data) == n else None


def serve(stdin=None, stdout=None) -> None:
    # Ctrl-C and SIGTERM reach the whole process group; the gateway decides when the worker
    # ends (by closing its input, or by exiting), so that a clean shutdown keeps every verdict.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    stdin = stdin or sys.stdin.buffer
    stdout = stdout or sys.stdout.buffer
    checker = Checker()
    while True:
        header = _read_exactly(stdin, 4)
        if header is None:
            return
        (count,) = struct.unpack(">I", header)
        body = _read_exactly(stdin, count * ITEM)
        if body is None:
            return
        stdout.write(checker.batch(body))
        stdout.flush()


if __name__ == "__main__":
    serve()
