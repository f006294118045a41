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
