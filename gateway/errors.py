"""Typed errors shared by every layer: each carries a machine-readable reason."""
from __future__ import annotations


class W3gateError(Exception):
    """Base class: ``reason`` is a short stable identifier, ``detail`` says what exactly."""

    reason = "error"

    def __init__(self, detail: str = "", *, reason: str | None = None) -> None:
        if reason is not None:
            self.reason = reason
        self.detail = detail
        super().__init__(f"{self.reason}: {detail}" if detail else self.reason)


class CodecError(W3gateError):
    """A payload that cannot be decoded (malformed, truncated, wrong type)."""

    reason = "malformed"


class ConfigError(W3gateError):
    """A configuration value that cannot be used."""

    reason = "bad_config"


# Why a device message was refused: counted per reason in status, and logged.
REASONS = (
    "oversized",  # payload larger than the configured limit
    "malformed",  # does not decode (protobuf, JSON, signature length ...)
    "unsupported",  # decodes, but is a package the gateway does not take (STATE)
    "unknown_device",  # IMEI not in the registry
    "bad_signature",  # does not verify against the device's key or address
    "stale",  # device timestamp older than the window
    "future",  # device timestamp too far ahead of the gateway clock
    "replay",  # a message with this digest was already accepted
    "nonce_reuse",  # the device repeated a recent nonce with other data
    "not_proposed",  # confirm from a device nobody proposed to own
    "wrong_owner",  # confirm naming an owner other than the proposer
    "buffer_full",  # verified, but the buffer refused it (full, policy "refuse")
    # legacy devices (serial, BLE: gateway/legacy/)
    "corrupt",  # a frame damaged on the line (framing, length, CRC)
    "bad_mac",  # an intact frame not made with the device's key (wrong key, forgery)
    "rate_limited",  # a device sending faster than its configured rate
    "internal",  # the gateway failed on this message (a bug): logged with its traceback, acknowledged
)


class Rejection(W3gateError):
    """A refused message: ``reason`` is one of REASONS, ``device`` the IMEI when known."""

    def __init__(self, reason: str, detail: str = "", *, device: str | None = None) -> None:
        assert reason in REASONS, reason
        self.device = device
        super().__init__(detail, reason=reason)

    @classmethod
    def internal(cls, error: BaseException, *, device: str | None = None) -> "Rejection":
        """A failure of ours on one message (a bug): counted as ``internal``, and carrying the
        error so that whoever logs it can show its traceback."""
        rejection = cls("internal", f"{type(error).__name__}: {error}", device=device)
        rejection.__cause__ = error
        return rejection
