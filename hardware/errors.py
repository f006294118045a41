"""The rig's own error: what an emulated device cannot do, with a stable reason.

Shaped like the gateway's ``W3gateError`` (``reason``, ``detail``) so a command shows both the
same way, but not derived from it: the rig shares only wire formats with the gateway, so that a
bug on one side cannot hide on the other.
"""
from __future__ import annotations


class EmulatorError(Exception):
    """``reason`` is a short stable identifier, ``detail`` says what exactly."""

    reason = "emulator"

    def __init__(self, detail: str = "", *, reason: str | None = None) -> None:
        if reason is not None:
            self.reason = reason
        self.detail = detail
        super().__init__(f"{self.reason}: {detail}" if detail else self.reason)
