"""Who may see the dashboard: one password, kept in a file (``[dashboard] password_file``).

The password is checked here, for HTTP Basic (what a Prometheus server sends) and for whatever
else asks for it later (a login form), so there is one rule and one comparison. The file's first
line is the password, as with the node key's passphrase file; it is read once, when the server
is made, so a bad file stops the start instead of every request failing.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import stat
import time
from collections import OrderedDict
from pathlib import Path
from typing import Callable

from gateway.errors import ConfigError

REALM = "w3gate"


class Login:
    """The dashboard's password; ``check`` compares in constant time (a digest of each side, so
    not even the length leaks)."""

    def __init__(self, password: str) -> None:
        if not password:
            raise ConfigError("dashboard.password_file: the password is empty")
        self._digest = hashlib.sha256(password.encode()).digest()

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "Login":
        """The password on the first line of ``path``; ConfigError when the file cannot be read,
        is empty, or any account may read it (a password everyone can read protects nothing)."""
        path = Path(path).expanduser()
        try:
            mode = path.stat().st_mode
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"dashboard.password_file: cannot read {path}: {e}") from None
        if mode & stat.S_IROTH:
            raise ConfigError(f"dashboard.password_file: {path} can be read by every account: chmod o-r {path}")
        lines = text.splitlines()
        return cls(lines[0] if lines else "")

    def check(self, password: str) -> bool:
        """Whether ``password`` is the dashboard's password."""
        return hmac.compare_digest(hashlib.sha256(password.encode()).digest(), self._digest)

    def check_basic(self, authorization: str | None) -> bool:
        """Whether an ``Authorization: Basic ...`` header carries the password (any user name)."""
        scheme, _, encoded = (authorization or "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return False
        _user, sep, password = decoded.partition(":")
        return bool(sep) and self.check(password)


class Attempts:
    """Wrong passwords per client address, so a LAN client cannot try passwords at line rate.

    After ``free`` wrong passwords an address must wait before its next try: ``first_wait_s``,
    doubling with each further wrong one up to ``max_wait_s``. A right password forgets the
    address. At most ``max_tracked`` addresses are remembered (the least recently seen are
    forgotten), so a flood of addresses costs bounded memory."""

    def __init__(self, *, free: int = 5, first_wait_s: float = 1.0, max_wait_s: float = 300.0,
                 max_tracked: int = 4096, clock: Callable[[], float] = time.monotonic) -> None:
        self.free, self.first_wait_s, self.max_wait_s = free, first_wait_s, max_wait_s
        self.max_tracked = max_tracked
        self.clock = clock
        self._failures: OrderedDict[str, tuple[int, float]] = OrderedDict()  # address -> (count, last failure)
        self.refused = 0  # tries refused for waiting, for the metrics

    def wait_s(self, address: str) -> float:
        """Seconds ``address`` must still wait before it may try a password; 0 when it may."""
        count, last = self._failures.get(address, (0, 0.0))
        if count < self.free:
            return 0.0
        wait = min(self.max_wait_s, self.first_wait_s * 2 ** (count - self.free))
        return max(0.0, last + wait - self.clock())

    def failed(self, address: str) -> None:
        count, _ = self._failures.pop(address, (0, 0.0))
        self._failures[address] = (count + 1, self.clock())
        while len(self._failures) > self.max_tracked:
            self._failures.popitem(last=False)

    def succeeded(self, address: str) -> None:
        self._failures.pop(address, None)
