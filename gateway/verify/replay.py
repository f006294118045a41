"""Replay protection with memory bounded by the accepted-timestamp window.

A replayed message is a byte-identical copy (its signature covers the timestamp), so the digest
only needs to be looked up among messages that carry the same device timestamp. Digests are keyed
with the device, since some signed preimages name no device (a confirm signs only owner and time,
so two devices confirming one owner in the same second sign the same bytes). They are kept
in buckets keyed by that timestamp, and a bucket is dropped once its timestamps fall out of the
window, since older messages are rejected as stale before this check. Nonce reuse (a device
repeating its ``random`` with different data) is checked against each device's last few nonces.
"""
from __future__ import annotations

from collections import deque

BUCKET_S = 60


class ReplayGuard:
    def __init__(self, window_s: float, *, nonce_memory: int = 64) -> None:
        self.window_s = window_s
        self.nonce_memory = nonce_memory
        self._buckets: dict[int, set[bytes]] = {}
        self._nonces: dict[str, tuple[deque, set]] = {}
        self._oldest_bucket = 0

    @staticmethod
    def key(device: str, digest: bytes) -> bytes:
        return digest[:16] + device.encode()

    def seen(self, device: str, timestamp: int, digest: bytes) -> bool:
        bucket = self._buckets.get(timestamp // BUCKET_S)
        return bucket is not None and self.key(device, digest) in bucket

    def nonce_seen(self, device: str, nonce: str) -> bool:
        entry = self._nonces.get(device)
        return entry is not None and nonce in entry[1]

    def remember(self, device: str, timestamp: int, digest: bytes, nonce: str | None) -> None:
        self._buckets.setdefault(timestamp // BUCKET_S, set()).add(self.key(device, digest))
        if nonce:
            order, members = self._nonces.setdefault(device, (deque(), set()))
            order.append(nonce)
            members.add(nonce)
            if len(order) > self.nonce_memory:
                members.discard(order.popleft())

    def prune(self, now: float) -> None:
        """Forget digests whose timestamps are older than the window (cheap; call every second)."""
        oldest = int(now - self.window_s) // BUCKET_S - 1
        if oldest <= self._oldest_bucket:
            return
        self._oldest_bucket = oldest
        for key in [k for k in self._buckets if k < oldest]:
            del self._buckets[key]

    def __len__(self) -> int:
        return sum(len(b) for b in self._buckets.values())
