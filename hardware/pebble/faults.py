"""Fault injection: what a gateway must refuse, mixed into a fleet's traffic on purpose.

Each DATA message independently becomes at most one fault, with the configured probabilities
(``FaultPlan.parse("bad_signature=0.05,replay=0.02")``). Every fault is built from the device's
own message machinery, so the only thing wrong with it is the fault:

=============== ============================================================ ================
kind            what is sent                                                 gateway reason
=============== ============================================================ ================
bad_signature   a fresh message with one signature byte flipped              bad_signature
replay          an earlier clean payload of this device, byte for byte       replay
skew            a fresh message stamped an hour early or late                stale / future
garbage         random bytes that no decoder takes                           malformed
oversized       2-4 KB of random bytes                                       oversized
nonce_reuse     fresh data reusing an earlier nonce of this device           nonce_reuse
unknown_device  a fresh message under an IMEI nobody registered              unknown_device
leading_zero    not drawn per message: enables the Riverrock <= 1.0.13       bad_signature
                leading-zero defect on low-S devices (docs/pebble-wire.md,
                "Signatures"), which then garbles the ~1 in 85 signatures
                that have a zero byte
=============== ============================================================ ================
"""
from __future__ import annotations

import random
import time
from collections import Counter, deque
from dataclasses import dataclass, field, replace
from typing import Mapping

from hardware.errors import EmulatorError
from hardware.pebble import encoding
from hardware.pebble.device import Message, PebbleDevice
from hardware.pebble.keystore import STRANGER_TAC, make_imei

PER_MESSAGE = ("bad_signature", "replay", "skew", "garbage", "oversized", "nonce_reuse", "unknown_device")
KINDS = PER_MESSAGE + ("leading_zero",)
SKEW_S = 3600
HISTORY = 16  # clean messages remembered per device, for replay and nonce_reuse


class FaultSpecError(EmulatorError):
    reason = "bad_faults"


@dataclass(frozen=True)
class FaultPlan:
    """Per-message probabilities by kind, plus the leading-zero switch."""

    rates: Mapping[str, float] = field(default_factory=dict)
    leading_zero: bool = False

    @classmethod
    def parse(cls, spec: str | None) -> "FaultPlan":
        """"kind=p,kind=p" (p in 0..1, summing to at most 1); "leading_zero" alone switches the
        defect on. Empty or "none" means no faults."""
        rates: dict[str, float] = {}
        leading_zero = False
        for item in (spec or "").replace(" ", "").split(","):
            if not item or item == "none":
                continue
            kind, _, value = item.partition("=")
            if kind not in KINDS:
                raise FaultSpecError(f"unknown fault {kind!r}; known: {', '.join(KINDS)}")
            try:
                p = float(value) if value else 1.0
            except ValueError:
                raise FaultSpecError(f"{kind}: {value!r} is not a probability") from None
            if not 0.0 <= p <= 1.0:
                raise FaultSpecError(f"{kind}: probability {p} is outside 0..1")
            if kind == "leading_zero":
                leading_zero = p > 0
            elif p > 0:
                rates[kind] = p
        if sum(rates.values()) > 1.0 + 1e-9:
            raise FaultSpecError(f"fault probabilities add up to {sum(rates.values()):.3f}, more than 1")
        return cls(rates, leading_zero)

    def __str__(self) -> str:
        parts = [f"{k}={v:g}" for k, v in self.rates.items()]
        if self.leading_zero:
            parts.append("leading_zero")
        return ",".join(parts) or "none"


class FaultInjector:
    """Draws a fault (or none) per DATA message and builds it; ``counts`` has one entry per
    injected kind plus "clean" for messages sent as the firmware would."""

    def __init__(self, plan: FaultPlan | str | None = None, *, seed: int | str | None = None) -> None:
        self.plan = plan if isinstance(plan, FaultPlan) else FaultPlan.parse(plan)
        self.rng = random.Random(seed)
        self.counts: Counter[str] = Counter()
        self._history: dict[str, deque[Message]] = {}

    def prepare(self, device: PebbleDevice) -> None:
        """Apply device-wide faults (the leading-zero defect)."""
        device.leading_zero_defect = self.plan.leading_zero

    def choose(self) -> str | None:
        u, acc = self.rng.random(), 0.0
        for kind, p in self.plan.rates.items():
            acc += p
            if u < acc:
                return kind
        return None

    def next_data(self, device: PebbleDevice, now: float | None = None) -> Message:
        """The device's next DATA message, possibly turned into a fault."""
        now = time.time() if now is None else now
        kind = self.choose()
        message = self.make(kind, device, now) if kind else None
        if message is None:
            message = device.data_message(now)
            if message.fault is None:
                self._history.setdefault(device.imei, deque(maxlen=HISTORY)).append(message)
        self.counts[message.fault or "clean"] += 1
        return message

    def make(self, kind: str, device: PebbleDevice, now: float | None = None) -> Message | None:
        """Build one fault of ``kind`` now; None when it needs history the device lacks yet."""
        now = time.time() if now is None else now
        rng = self.rng
        history = self._history.get(device.imei)
        if kind == "bad_signature":
            return _with_bad_signature(device.data_message(now), rng)
        if kind == "replay":
            if not history:
                return None
            return replace(history[-1], fault="replay")
        if kind == "skew":
            offset = SKEW_S * rng.choice((-1, 1))
            return replace(device.data_message(now, timestamp=int(now) + offset), fault="skew")
        if kind == "garbage":
            # first byte: a protobuf tag with an invalid wire type (6 or 7), never "{"
            body = bytes([rng.choice((6, 7)) | (rng.randrange(16) << 3)])
            body += rng.randbytes(rng.randint(20, 200))
            return Message(device.imei, device.data_topic, body, "data", device.profile.name, fault="garbage")
        if kind == "oversized":
            body = rng.randbytes(rng.randint(2048, 4096))
            return Message(device.imei, device.data_topic, body, "data", device.profile.name, fault="oversized")
        if kind == "nonce_reuse":
            if not history:
                return None
            earlier = history[-1].nonce
            return replace(device.data_message(now, nonce=earlier), fault="nonce_reuse")
        if kind == "unknown_device":
            stranger = make_imei(STRANGER_TAC, rng.randrange(1_000_000))
            message = device.data_message(now)
            topic = message.topic.replace(device.imei, stranger)
            return replace(message, imei=stranger, topic=topic, fault="unknown_device")
        raise FaultSpecError(f"{kind!r} is not a per-message fault; known: {', '.join(PER_MESSAGE)}")


def _with_bad_signature(message: Message, rng: random.Random) -> Message:
    """The same message with one signature byte changed."""
    index, flip = rng.randrange(64), rng.randrange(1, 256)
    if message.payload[:1] == b"{":
        text, signature = encoding.split_g1(message.payload)
        sig = bytearray(signature)
        sig[index] ^= flip
        payload = encoding.encode_g1(text, bytes(sig))
    else:
        sig = bytearray(encoding.signature_of(message.payload))
        sig[index] ^= flip
        payload = encoding.with_signature(message.payload, bytes(sig))
    return replace(message, payload=payload, fault="bad_signature")
