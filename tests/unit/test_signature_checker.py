"""The signature checker: verdicts from a worker process, in submission order, never lost."""
from __future__ import annotations

import asyncio
import hashlib
from types import SimpleNamespace

from coincurve import PrivateKey

from gateway.verify.checker import SignatureChecker
from gateway.verify.secp256k1 import Key


def _messages(n: int) -> list[tuple[SimpleNamespace, bool]]:
    """(admitted-like message, expected verdict): valid, tampered, wrong length and high-S."""
    keys = [PrivateKey() for _ in range(5)]
    out = []
    for i in range(n):
        pk = keys[i % len(keys)]
        digest = hashlib.sha256(f"reading {i}".encode()).digest()
        signature = pk.sign_recoverable(digest, hasher=None)[:64]
        expected = True
        if i % 7 == 3:
            digest = hashlib.sha256(b"something else").digest()
            expected = False
        elif i % 11 == 5:
            signature = signature[:63]
            expected = False
        elif i % 5 == 1:  # the same signature with s -> n - s (Riverrock 1.0.14 signs this way)
            s = int.from_bytes(signature[32:], "big")
            n_order = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
            signature = signature[:32] + (n_order - s).to_bytes(32, "big")
        out.append((SimpleNamespace(key=Key(pk.public_key.format(compressed=False)), digest=digest,
                                    signature=signature), expected))
    return out


async def _check(messages, *, kill_after: int | None = None) -> tuple[list[tuple[int, bool]], int]:
    checker = SignatureChecker(max_batch=64)
    await checker.start()
    verdicts: list[tuple[int, bool]] = []
    try:
        for i, (admitted, _) in enumerate(messages):
            checker.submit(admitted, lambda valid, i=i: verdicts.append((i, valid)))
            if kill_after is not None and i == kill_after:
                checker._proc.kill()  # the worker dies with batches in its pipe
            if i % 50 == 0:
                await asyncio.sleep(0)
        await asyncio.wait_for(checker.drain(), 30)
        return verdicts, checker.restarts
    finally:
        checker.close()


def test_every_message_gets_its_verdict_in_submission_order():
    messages = _messages(600)
    verdicts, restarts = asyncio.run(_check(messages))
    assert [i for i, _ in verdicts] == list(range(len(messages)))
    assert [v for _, v in verdicts] == [expected for _, expected in messages]
    assert restarts == 0


def test_a_worker_that_dies_loses_no_verdict_and_is_replaced():
    messages = _messages(600)
    verdicts, restarts = asyncio.run(_check(messages, kill_after=300))
    assert [i for i, _ in verdicts] == list(range(len(messages)))
    assert [v for _, v in verdicts] == [expected for _, expected in messages]
    assert restarts >= 1
