"""The service side of systemd's notification protocol (sd_notify(3)): READY, STATUS, WATCHDOG,
STOPPING, as datagrams to ``$NOTIFY_SOCKET``.

Why our own and not a library: the protocol is one ``sendto`` of ``KEY=value`` lines on an
AF_UNIX datagram socket. ``systemd-python`` and ``cysystemd`` need libsystemd's headers and a C
build on the Pi (there are no aarch64 wheels to rely on); ``sdnotify`` (last release 2017) swallows
every error, so a watchdog that cannot reach systemd would go unseen until systemd kills the
gateway. Here the lifecycle messages never raise (a gateway outside systemd, or one whose notify
socket went away, keeps running), while ``watchdog()`` raises ``NotifyError``, so the periodic step
that calls it shows ``degraded   watchdog: ...`` in ``w3gate status`` before systemd acts.

Without ``$NOTIFY_SOCKET`` (not started by systemd, or ``Type=`` other than notify) every call is
a no-op. The watchdog is armed only when systemd set ``$WATCHDOG_USEC`` for this very process
(``$WATCHDOG_PID``, when set, must be ours: a child that inherited the variables does not ping).
The ping belongs on the event loop (the gateway's housekeeping step, every second): a thread would
keep pinging while the loop is wedged, which is exactly what the watchdog is there to catch.
"""
from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

from gateway.errors import W3gateError

log = logging.getLogger("w3gate.service")


class NotifyError(W3gateError):
    """A notification systemd should have had and did not get (the socket is gone or full)."""

    reason = "notify"


def socket_address(value: str) -> str | bytes:
    """The address ``$NOTIFY_SOCKET`` names: a path, or an abstract name (``@name``: a leading NUL).
    NotifyError for anything else (``vsock:`` addresses of VM managers are not ours to reach)."""
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    raise NotifyError(f"NOTIFY_SOCKET {value!r} is neither a path nor an abstract name (@name)")


class Notifier:
    """The notifications of one service process. Built from the environment at start; cheap to
    call when systemd is not there (``enabled`` is False and nothing is sent)."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        self.address: str | bytes | None = None
        self.watchdog_usec = 0
        self._sock: socket.socket | None = None
        self._failing: str | None = None  # the last send error, logged once until a send succeeds
        raw = env.get("NOTIFY_SOCKET", "")
        if raw:
            try:
                self.address = socket_address(raw)
            except NotifyError as e:
                log.warning("%s: not notifying systemd", e)
        usec, pid = env.get("WATCHDOG_USEC", ""), env.get("WATCHDOG_PID", "")
        if self.address is not None and usec.isdigit() and (not pid or pid == str(os.getpid())):
            self.watchdog_usec = int(usec)

    @property
    def enabled(self) -> bool:
        """True when systemd listens for our notifications."""
        return self.address is not None

    @property
    def watchdog_enabled(self) -> bool:
        """True when systemd expects ``WATCHDOG=1`` from us (``WatchdogSec=`` is set)."""
        return self.watchdog_usec > 0

    def send(self, *fields: str) -> None:
        """Send ``KEY=value`` fields as one datagram; NotifyError when it could not be sent.
        Newlines in a value would start a new field, so STATUS texts are flattened by callers."""
        if self.address is None:
            return
        data = "\n".join(fields).encode()
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
                                           | socket.SOCK_NONBLOCK)
            self._sock.sendto(data, self.address)
        except OSError as e:  # ENOENT/ECONNREFUSED: systemd's socket gone; EAGAIN: its queue full
            why = f"cannot notify systemd at {os.environ.get('NOTIFY_SOCKET') or self.address!r}: {e.strerror or e}"
            if why != self._failing:
                log.warning("%s", why)
                self._failing = why
            raise NotifyError(why) from None
        if self._failing is not None:
            log.info("systemd notifications reach it again")
            self._failing = None

    def _quiet(self, *fields: str) -> bool:
        """``send`` for the lifecycle messages: a failure is logged (once), never raised."""
        try:
            self.send(*fields)
        except NotifyError:
            return False
        return self.enabled

    def ready(self, status: str | None = None) -> bool:
        """READY=1: the service is up (systemd then starts what is ordered after it, and starts the
        watchdog). True when it was sent."""
        return self._quiet("READY=1", *([f"STATUS={_line(status)}"] if status else []))

    def status(self, text: str) -> bool:
        """STATUS=: one line shown by ``systemctl status``."""
        return self._quiet(f"STATUS={_line(text)}")

    def stopping(self, status: str | None = None) -> bool:
        """STOPPING=1: shutdown has begun (systemd stops expecting watchdog pings)."""
        return self._quiet("STOPPING=1", *([f"STATUS={_line(status)}"] if status else []))

    def extend_timeout(self, seconds: float) -> bool:
        """EXTEND_TIMEOUT_USEC=: more time to start or stop (a long start on a large backlog)."""
        return self._quiet(f"EXTEND_TIMEOUT_USEC={max(1, int(seconds * 1_000_000))}")

    def watchdog(self) -> None:
        """WATCHDOG=1, when systemd watches us: call it from the event loop's periodic housekeeping.
        Raises NotifyError when the ping did not go out (the step shows degraded)."""
        if self.watchdog_usec:
            self.send("WATCHDOG=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _line(text: str) -> str:
    return " ".join(str(text).split())[:400]
