"""Checks legacy frames: sensors authenticate each frame with HMAC-SHA256 under their key
(``device_fw/frame.py`` is the frame, shared with the firmware). The gateway checks the MAC,
refuses replayed sequence numbers and floods, in that order, and the bridge then attests what was
verified with the node key (``attest.py``): the record's trust level is ``gateway-attested``,
never ``secure-element``.
"""
from __future__ import annotations

import binascii
import hmac
import logging
import time
from dataclasses import dataclass
from typing import Callable

from device_fw import frame as wire
from gateway.codec import strict_json
from gateway.errors import CodecError, Rejection
from gateway.legacy.registry import LegacyDevice, LegacyRegistry

log = logging.getLogger("w3gate.legacy")

FRAME_KINDS = {wire.READING: "data", wire.HELLO: "hello", wire.CONFIG_ACK: "config_ack",
               wire.COMMAND_ACK: "command_ack"}

SEQ_MOD = 1 << 32  # the wire's u32
SEQ_HALF = 1 << 31  # serial-number arithmetic (RFC 1982): ahead means less than half the circle ahead


def seq_ahead(seq: int, highest: int) -> int:
    """How far ``seq`` is ahead of ``highest`` on the u32 circle (negative: behind), so a seq
    that wrapped from 2**32 - 1 to 0 counts as the next one, not as 4 billion frames old."""
    d = (seq - highest) % SEQ_MOD
    return d if d < SEQ_HALF else d - SEQ_MOD


class SeqWindow:
    """Replay protection by sequence number, with a 64-frame window for frames that arrive out of
    order (a device heard on two links at once): accept a seq ahead of the highest seen, or one
    inside the window not seen yet.

    Seqs are u32 and wrap: "ahead" is serial-number arithmetic, less than 2**31 forward on the
    circle (docs/legacy-devices.md, "Sequence numbers"). A replayed frame from before a wrap is
    behind the highest seq by its true distance, so it is refused like any other."""

    SIZE = 64
    __slots__ = ("highest", "_seen")

    def __init__(self, highest: int = -1) -> None:
        # bit i: highest - i was seen. Restored from before a restart, which of the seqs below
        # ``highest`` were used is unknown: all count as spent. -1: nothing seen yet.
        self.highest = highest % SEQ_MOD if highest >= 0 else -1
        self._seen = (1 << self.SIZE) - 1

    def check(self, seq: int) -> str | None:
        """None if ``seq`` is new, else why not."""
        if self.highest < 0:
            return None
        ahead = seq_ahead(seq, self.highest)
        if ahead > 0:
            return None
        if -ahead >= self.SIZE:
            return f"seq {seq} is far below the device's latest {self.highest}"
        if self._seen >> -ahead & 1:
            return f"seq {seq} was already accepted"
        return None

    def accept(self, seq: int) -> bool:
        """Mark ``seq`` seen (after ``check``); True if it wrapped past 2**32 - 1."""
        if self.highest < 0:
            self.highest, self._seen = seq, 1
            return False
        ahead = seq_ahead(seq, self.highest)
        if ahead > 0:
            self._seen = (self._seen << ahead | 1) & ((1 << self.SIZE) - 1) if ahead < self.SIZE else 1
            wrapped = seq < self.highest
            self.highest = seq
            return wrapped
        self._seen |= 1 << -ahead
        return False


class TokenBucket:
    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate, self.burst, self.tokens, self.stamp = rate, burst, burst, now

    def take(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


@dataclass(slots=True)
class LegacyFrame:
    """A frame whose MAC, seq and rate were checked: ready to be attested and buffered."""

    device: LegacyDevice
    kind: str  # "data", "hello", "config_ack", "command_ack"
    seq: int
    frame: bytes  # the decoded frame (header, payload, CRC, MAC): the evidence, kept as received
    payload: bytes  # its JSON payload


def _mac(key: bytes, body: bytes) -> bytes:
    return hmac.digest(key, body, "sha256")


class LegacyVerifier:
    """Checks raw frames (COBS-encoded, delimiters removed) from any serial or BLE link."""

    def __init__(self, registry: LegacyRegistry, *, rate: float = 50.0, burst: float = 100.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.registry = registry
        self.rate, self.burst = rate, burst
        self.clock = clock
        self.windows: dict[str, SeqWindow] = {}
        self._buckets: dict[str, TokenBucket] = {}

    def _key_of(self, device_id: bytes) -> bytes | None:
        device = self.registry.get(device_id.hex())
        return device.key_bytes if device else None

    def check(self, raw: bytes) -> LegacyFrame:
        """The checked frame, or a Rejection: corrupt, unsupported, unknown_device, bad_mac,
        replay (by seq), rate_limited, malformed; in that order, so that only authentic, fresh
        frames count against the device's rate."""
        try:
            frame = wire.cobs_decode(raw)
            frame_type, device_id, seq, payload = wire.decode_frame(frame, self._key_of, _mac)
        except wire.FrameError as e:
            device = _device_hint(raw)
            reason = {"corrupt": "corrupt", "unsupported": "unsupported", "unknown_device": "unknown_device",
                      "bad_mac": "bad_mac"}[e.reason]
            raise Rejection(reason, e.detail, device=device) from None
        did = device_id.hex()
        device = self.registry.get(did)
        kind = FRAME_KINDS.get(frame_type)
        if device is None:  # removed between the key lookup and now
            raise Rejection("unknown_device", f"device {did}", device=did)
        if kind is None:
            raise Rejection("unsupported", f"frame type {frame_type} is not sent by devices", device=did)
        # Forgeries are out (MAC, above); replays go next, before the rate limit, so a flood of
        # replayed frames costs the device none of its rate: only frames that passed both are charged.
        window = self.windows.get(did)
        if window is None:
            window = self.windows[did] = SeqWindow()
        why = window.check(seq)
        if why:
            raise Rejection("replay", why, device=did)
        now = self.clock()
        bucket = self._buckets.get(did)
        if bucket is None:
            bucket = self._buckets[did] = TokenBucket(self.rate, self.burst, now)
        if not bucket.take(now):
            raise Rejection("rate_limited", f"over {self.rate:g} frames/s", device=did)
        if kind == "data":
            try:
                reading = strict_json.loads(payload, "reading")
            except CodecError as e:
                raise Rejection("malformed", e.detail, device=did) from None
            if not isinstance(reading, dict):
                raise Rejection("malformed", "a reading is a JSON object", device=did)
        if window.accept(seq):
            log.warning("legacy device %s: seq wrapped past 2**32 - 1; re-pair it before it sends "
                        "another 2**31 frames (docs/legacy-devices.md, Sequence numbers)", did)
        return LegacyFrame(device, kind, seq, frame, payload)

    def remember(self, device_id: str, seq: int) -> None:
        """A seq accepted before a restart (from the records or the saved high-water marks)."""
        window = self.windows.get(device_id)
        if window is None or window.highest < 0 or seq_ahead(seq, window.highest) > 0:
            self.windows[device_id] = SeqWindow(seq)

    def high_water(self) -> dict[str, int]:
        return {d: w.highest for d, w in self.windows.items() if w.highest >= 0}


def _device_hint(raw: bytes) -> str | None:
    """The device id a damaged frame claims, for the log (it may be wrong: it is not checked)."""
    try:
        return binascii.hexlify(wire.cobs_decode(raw)[2:10]).decode() or None
    except wire.FrameError:
        return None
