"""Replay protection with memory bounded by the accepted-timestamp window, at 8 bytes a message.

A replayed message is a byte-identical copy (its signature covers the timestamp), so the digest
only needs to be looked up among the same device's messages that carry a nearby device
timestamp. Messages are kept in buckets keyed by that timestamp (a minute each), and a bucket is
dropped once its timestamps fall out of the window, since older messages are rejected as stale
before this check. Keys are per device, since some signed preimages name no device (a confirm
signs only owner and time, so two devices confirming one owner in the same second sign the same
bytes).

Memory is what limits a gateway at high rates: the window holds every message of the last
12 minutes, 7 million at 10,000 msg/s. A Python set of digests costs about 160 bytes per entry
(measured: 48 MB for 300k). Here each device's bucket is one ``bytearray`` of 8-byte digest
prefixes searched with ``find`` in C: 8 bytes per message, and a device sends few messages a
minute, so the search stays short. A false match needs two of one device's messages in the same
minute to share 64 bits of SHA-256. Nonces (a device repeating its ``random`` with different
data) are kept the same way: the last few per device, in a ring of 8-byte fingerprints.
"""
from __future__ import annotations

import hashlib

BUCKET_S = 60
FP = 8  # bytes of fingerprint per entry


def _contains(entries: bytearray | bytes, fp: bytes) -> bool:
    """Whether ``fp`` is one of the 8-byte entries (a match must start on an entry boundary)."""
    i = entries.find(fp)
    while i >= 0:
        if i % FP == 0:
            return True
        i = entries.find(fp, i + 1)
    return False


def _nonce_fp(nonce: str) -> bytes:
    return hashlib.blake2b(nonce.encode(), digest_size=FP).digest()


class ReplayGuard:
    def __init__(self, window_s: float, *, nonce_memory: int = 64) -> None:
        self.window_s = window_s
        self.nonce_memory = nonce_memory
        self._buckets: dict[int, dict[str, bytearray]] = {}
        self._nonces: dict[str, list] = {}  # device -> [ring of fingerprints, next slot]
        self._oldest_bucket = 0

    @staticmethod
    def key(device: str, digest: bytes) -> bytes:
        """A message's identity for sets of messages in flight (few, so a plain set serves)."""
        return digest[:16] + device.encode()

    def seen(self, device: str, timestamp: int, digest: bytes) -> bool:
        bucket = self._buckets.get(timestamp // BUCKET_S)
        if bucket is None:
            return False
        entries = bucket.get(device)
        return entries is not None and _contains(entries, digest[:FP])

    def nonce_seen(self, device: str, nonce: str) -> bool:
        entry = self._nonces.get(device)
        return entry is not None and _contains(entry[0], _nonce_fp(nonce))

    def remember(self, device: str, timestamp: int, digest: bytes, nonce: str | None) -> None:
        bucket = self._buckets.get(timestamp // BUCKET_S)
        if bucket is None:
            bucket = self._buckets[timestamp // BUCKET_S] = {}
        entries = bucket.get(device)
        if entries is None:
            bucket[device] = bytearray(digest[:FP])
        else:
            entries += digest[:FP]
        if nonce:
            entry = self._nonces.get(device)
            if entry is None:
                entry = self._nonces[device] = [bytearray(), 0]
            ring, slot = entry
            fp = _nonce_fp(nonce)
            if len(ring) < self.nonce_memory * FP:
                ring += fp
            else:
                ring[slot * FP:(slot + 1) * FP] = fp
                entry[1] = (slot + 1) % self.nonce_memory

    def prune(self, now: float) -> None:
        """Forget digests whose timestamps are older than the window (cheap; call every second)."""
        oldest = int(now - self.window_s) // BUCKET_S - 1
        if oldest <= self._oldest_bucket:
            return
        self._oldest_bucket = oldest
        for key in [k for k in self._buckets if k < oldest]:
            del self._buckets[key]

    def __len__(self) -> int:
        return sum(len(entries) // FP for bucket in self._buckets.values() for entries in bucket.values())
