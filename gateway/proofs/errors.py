"""The proofs package's error: one type, with a ``reason`` the node's status and the CLI show."""
from __future__ import annotations

from gateway.errors import W3gateError


class AnchorError(W3gateError):
    """Anchoring cannot go on, or a proof cannot be given; ``reason`` says why."""

    reason = "anchor"
