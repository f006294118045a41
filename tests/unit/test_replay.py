"""Replay memory: exact per device and minute, bounded by the window, 8 bytes a message."""
from __future__ import annotations

import hashlib

from gateway.verify.replay import ReplayGuard


def _digest(i: int) -> bytes:
    return hashlib.sha256(i.to_bytes(8, "big")).digest()


def test_a_digest_is_seen_only_for_its_device_and_minute():
    guard = ReplayGuard(720)
    guard.remember("A", 1_000_000, _digest(1), None)
    assert guard.seen("A", 1_000_000, _digest(1))
    assert not guard.seen("B", 1_000_000, _digest(1))  # confirms of two devices can share bytes
    assert not guard.seen("A", 1_000_000, _digest(2))


def test_a_match_across_two_entries_is_not_a_match():
    guard = ReplayGuard(720)
    guard.remember("A", 1_000_000, bytes(range(8)) + bytes(24), None)
    guard.remember("A", 1_000_000, bytes(range(8, 16)) + bytes(24), None)
    assert not guard.seen("A", 1_000_000, bytes(range(4, 12)) + bytes(24))


def test_buckets_older_than_the_window_are_forgotten():
    guard = ReplayGuard(600)
    guard.remember("A", 1_000_000, _digest(1), None)
    guard.prune(1_000_000 + 60)
    assert guard.seen("A", 1_000_000, _digest(1))
    guard.prune(1_000_000 + 600 + 180)
    assert not guard.seen("A", 1_000_000, _digest(1))
    assert len(guard) == 0


def test_each_device_remembers_its_last_nonces():
    guard = ReplayGuard(720, nonce_memory=4)
    for i in range(6):
        guard.remember("A", 1_000_000 + i, _digest(i), f"{i:016x}")
    assert [guard.nonce_seen("A", f"{i:016x}") for i in range(6)] == [False, False, True, True, True, True]
    assert not guard.nonce_seen("B", f"{5:016x}")
