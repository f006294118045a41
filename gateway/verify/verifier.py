"""Decides whether a device message is trusted: registered device, valid signature, fresh, not a
replay. Every refusal is a ``Rejection`` (gateway/errors.py) with one of its reasons; nothing else escapes.

Cheap checks run first (size, decoding, registry, timestamp window, replay); the signature costs
one verification per message once a device's key is known, since the key recovered from its
first message is cached (two recoveries, once per device and process).
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Callable

from gateway.codec import pebble
from gateway.errors import CodecError, Rejection
from gateway.verify.registry import Device, Registry
from gateway.verify.replay import ReplayGuard
from gateway.verify.secp256k1 import Key, recover

@dataclass(slots=True)
class Accepted:
    """A verified message, ready to be buffered."""

    device: Device
    kind: str  # "data", "config", "confirm" (protobuf era) or "data" with wire "json" (G1)
    wire: str  # "protobuf" or "json"
    timestamp: int  # device time, unix seconds (signed)
    digest: bytes  # sha256 of the signed preimage
    content: object  # the decoded body, or a protobuf reading's SensorData bytes until asked for
    payload: bytes  # exactly as received

    @property
    def body(self) -> object:
        """SensorData | SensorConfig | ConfirmPackage | G1Message.

        A reading is decoded to units only when someone asks: the data path stores the payload
        as received and never needs the values, and decoding costs as much as the checks."""
        if isinstance(self.content, bytes):
            profile = pebble.PROFILES.get(self.device.profile)
            self.content = pebble.decode_sensor_data(self.content,
                                                     temperature_hint=profile.temperature if profile else None)
        return self.content


@dataclass(slots=True)
class Admitted:
    """A message that passed every check but its signature."""

    device: Device
    kind: str
    wire: str
    timestamp: int
    digest: bytes
    content: object
    payload: bytes
    signature: bytes
    nonce: str | None
    key: Key  # the device's key, cached or just learned
    replay_key: bytes


@dataclass(frozen=True)
class Policy:
    max_payload: int = 1024  # bytes; a real BinPackage is under 600
    max_age_s: float = 600.0  # oldest accepted device timestamp, relative to the gateway clock
    max_future_s: float = 120.0  # how far ahead a device clock may run
    nonce_memory: int = 64  # recent nonces remembered per device


class Verifier:
    def __init__(self, registry: Registry, policy: Policy = Policy(), *,
                 clock: Callable[[], float] = time.time) -> None:
        self.registry = registry
        self.policy = policy
        self.clock = clock
        self.replay = ReplayGuard(policy.max_age_s + policy.max_future_s, nonce_memory=policy.nonce_memory)
        self._keys: dict[str, Key] = {}
        self._inflight: set[bytes] = set()

    # -- entry points --------------------------------------------------------------------------

    def data(self, imei: str, payload: bytes) -> Accepted:
        """A message from ``device/<IMEI>/data``: a DATA or CONFIG BinPackage, or G1 JSON."""
        return self.check(self.admit("data", imei, payload))

    def confirm(self, imei: str, payload: bytes) -> Accepted:
        """A ``ConfirmPackage`` from ``device/<IMEI>/confirm``: the device accepts its proposer."""
        return self.check(self.admit("confirm", imei, payload))

    def check(self, admitted: "Admitted") -> Accepted:
        """Verify the signature here and now (``admit`` then ``conclude``)."""
        return self.conclude(admitted, admitted.key.verify(admitted.digest, admitted.signature))

    def admit(self, channel: str, imei: str, payload: bytes) -> "Admitted":
        """Every check but the signature itself, which the caller may run elsewhere (on another
        thread: libsecp256k1 releases the GIL) before calling ``conclude`` in arrival order."""
        self._check_size(imei, payload)
        if channel == "confirm":
            package = _decode(pebble.decode_confirm, imei, payload)
            device, digest = self._admit(imei, package.timestamp, package.preimage)
            return self._admitted(device, "confirm", "protobuf", package.timestamp, digest, package, payload,
                                  package.signature, None)
        if payload[:1] == b"{":
            message = _decode(pebble.decode_g1, imei, payload)
            device, digest = self._admit(imei, message.timestamp, message.text)
            if message.public_key is not None and imei not in self._keys:
                key = _parse_key(message.public_key, imei, "eccPubkey")
                if key.address != device.address:
                    raise Rejection("bad_signature", f"eccPubkey belongs to {key.address}, not {device.address}",
                                    device=imei)
                self._keys[imei] = key
            return self._admitted(device, "data", "json", message.timestamp, digest, message, payload,
                                  message.signature, message.random)
        package = _decode(pebble.decode_binpackage, imei, payload)
        if package.type == pebble.PackageType.STATE:
            raise Rejection("unsupported", "STATE packages are never sent by released firmware",
                            device=imei)
        device, digest = self._admit(imei, package.timestamp, package.preimage)
        try:
            if package.type == pebble.PackageType.DATA:
                body, kind, nonce = package.data, "data", pebble.check_sensor_data(package.data)
            else:
                body, kind, nonce = pebble.decode_sensor_config(package.data), "config", None
        except CodecError as e:
            raise Rejection("malformed", e.detail, device=imei) from None
        return self._admitted(device, kind, "protobuf", package.timestamp, digest, body, payload,
                              package.signature, nonce)

    def conclude(self, a: "Admitted", valid: bool) -> Accepted:
        """Judge an admitted message once its signature was checked; must run in arrival order."""
        imei = a.device.imei
        self._inflight.discard(a.replay_key)
        if not valid:
            raise Rejection("bad_signature", f"signature does not verify for {a.device.address}", device=imei)
        if a.kind == "confirm":
            if not a.device.owner:
                raise Rejection("not_proposed", "no owner has proposed this device", device=imei)
            if a.content.owner_address.lower() != a.device.owner.lower():
                raise Rejection("wrong_owner", f"confirm names {a.content.owner_address}, proposer is {a.device.owner}",
                                device=imei)
        if a.nonce and self.replay.nonce_seen(imei, a.nonce):
            raise Rejection("nonce_reuse", f"nonce {a.nonce} was used by a recent message", device=imei)
        self.replay.remember(imei, a.timestamp, a.digest, a.nonce)
        return Accepted(a.device, a.kind, a.wire, a.timestamp, a.digest, a.content, a.payload)

    def _admitted(self, device: Device, kind: str, wire: str, timestamp: int, digest: bytes, body: object,
                  payload: bytes, signature: bytes, nonce: str | None) -> "Admitted":
        key = self._keys.get(device.imei)
        if key is None or key.address != device.address:
            key = self._learn_key(device, digest, signature)
        replay_key = self.replay.key(device.imei, digest)
        self._inflight.add(replay_key)  # an identical copy arriving before we conclude is a replay too
        return Admitted(device, kind, wire, timestamp, digest, body, payload, signature, nonce, key, replay_key)

    def forget_keys(self) -> None:
        """Drop cached keys (after the registry changed)."""
        self._keys.clear()

    # -- checks --------------------------------------------------------------------------------

    def _admit(self, imei: str, timestamp: int, preimage: bytes) -> tuple[Device, bytes]:
        """The checks every signed message passes before its signature: registered, fresh, new."""
        device = self._device(imei)
        self._check_time(imei, timestamp)
        digest = hashlib.sha256(preimage).digest()
        self._check_replay(imei, timestamp, digest)
        return device, digest

    def _check_size(self, imei: str, payload: bytes) -> None:
        if len(payload) > self.policy.max_payload:
            raise Rejection("oversized", f"{len(payload)} bytes, limit {self.policy.max_payload}", device=imei)
        if not payload:
            raise Rejection("malformed", "empty payload", device=imei)

    def _device(self, imei: str) -> Device:
        device = self.registry.get(imei)
        if device is None:
            raise Rejection("unknown_device", f"IMEI {imei} is not registered", device=imei)
        return device

    def _check_time(self, imei: str, timestamp: int) -> None:
        now = self.clock()
        if timestamp < now - self.policy.max_age_s:
            raise Rejection("stale", f"device time {timestamp} is {now - timestamp:.0f} s old, "
                            f"window {self.policy.max_age_s:.0f} s", device=imei)
        if timestamp > now + self.policy.max_future_s:
            raise Rejection("future", f"device time {timestamp} is {timestamp - now:.0f} s ahead, "
                            f"limit {self.policy.max_future_s:.0f} s", device=imei)

    def _check_replay(self, imei: str, timestamp: int, digest: bytes) -> None:
        if self.replay.seen(imei, timestamp, digest) or self.replay.key(imei, digest) in self._inflight:
            raise Rejection("replay", f"message {digest.hex()[:16]} was already accepted", device=imei)

    def _learn_key(self, device: Device, digest: bytes, signature: bytes) -> Key:
        if device.public_key:
            try:
                raw = bytes.fromhex(device.public_key)
            except ValueError:
                raw = b""
            key = _parse_key(raw, device.imei, "the registered public key")
        else:
            for _, candidate in recover(digest, signature):
                if candidate.address == device.address:
                    key = candidate
                    break
            else:
                raise Rejection("bad_signature", f"signature does not recover to {device.address}",
                                device=device.imei)
        self._keys[device.imei] = key
        return key


def _decode(decoder: Callable, imei: str, payload: bytes):
    try:
        return decoder(payload)
    except CodecError as e:
        raise Rejection("malformed", e.detail, device=imei) from None


def _parse_key(raw: bytes, imei: str, what: str) -> Key:
    """A public key that is not a point on secp256k1 is the sender's fault, not ours."""
    try:
        return Key(raw)
    except ValueError:
        raise Rejection("malformed", f"{what} is not a point on secp256k1", device=imei) from None
