"""A cap on an HTTP server's connections, for the servers any LAN client may reach (the event
API, the dashboard): a flood of connections that never send a request must not take the
gateway's file descriptors or keep a real client out.

``ConnectionCap.factory`` wraps aiohttp's protocol factory for ``loop.create_server``: at most
``limit`` connections are held; at the cap a new one displaces the oldest that has not sent a
request head yet, or is answered 503 and closed. Closing connections without a complete request
head in time is aiohttp's ``keepalive_timeout`` (counted from the connection's start and between
requests); a TLS handshake that never completes leaves the count after ``handshake_s``.
"""
from __future__ import annotations

import asyncio
import logging
import ssl
import time
from typing import Callable

from gateway.errors import ConfigError

BUSY_RESPONSE = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


class QuietProtocolErrors(logging.Filter):
    """On aiohttp's ``aiohttp.server`` logger, which logs every malformed request with its
    traceback at ERROR: a client sending garbage would fill the journal. A malformed request (the
    client's fault, answered 400) becomes one WARNING line without traceback; and at most
    ``burst`` lines of that logger pass per ``period``, the rest counted in the next one."""

    def __init__(self, burst: int = 20, period: float = 10.0) -> None:
        super().__init__()
        self.burst, self.period = burst, period
        self._start, self._count, self._dropped = 0.0, 0, 0

    def filter(self, record: logging.LogRecord) -> bool:
        from aiohttp.http_exceptions import HttpProcessingError

        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            record.msg, record.args = "malformed HTTP request refused (%s): %s", (exc.code, str(exc.message)[:160])
            record.exc_info, record.exc_text, record.levelno, record.levelname = None, None, logging.WARNING, "WARNING"
        now = time.monotonic()
        if now - self._start > self.period:
            if self._dropped:
                record.msg = f"{record.msg} (and {self._dropped} more such lines in the last {self.period:.0f} s)"
            self._start, self._count, self._dropped = now, 0, 0
        self._count += 1
        if self._count > self.burst:
            self._dropped += 1
            return False
        return True


def quiet_protocol_errors() -> None:
    """Install ``QuietProtocolErrors`` once (each HTTP server calls this when it starts)."""
    logger = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, QuietProtocolErrors) for f in logger.filters):
        logger.addFilter(QuietProtocolErrors())


def tls_context(cert: str, key: str, section: str) -> ssl.SSLContext:
    """A server context for the PEM certificate chain and key of ``[section]``; ConfigError naming
    its settings if they do not load (so the start fails, not every connection)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as e:
        raise ConfigError(f"{section}.tls_cert / {section}.tls_key: cannot load {cert} and {key}: {e}") from None
    return context


class ConnectionCap:
    def __init__(self, limit: int, handshake_s: float | None = None, *,
                 on_refused: Callable[[], None] = lambda: None) -> None:
        self.limit = limit
        self.handshake_s = handshake_s  # with TLS: how long a handshake may take
        self.on_refused = on_refused
        self.open: dict[_Counted, None] = {}  # open, oldest first
        self.refused = 0  # connections answered 503 at the cap

    def factory(self, inner: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        """A protocol factory for ``create_server`` that counts what ``inner`` makes."""
        def connection() -> asyncio.Protocol:
            if len(self.open) >= self.limit:
                idle = next((c for c in self.open if c.idle()), None)
                if idle is None:
                    self.refused += 1
                    self.on_refused()
                    return _Refused()
                idle.abort()
            return _Counted(inner(), self.open, self.handshake_s)
        return connection

    def abort_all(self) -> None:
        """When the server stops: connections still in a TLS handshake or that never sent a request."""
        for connection in list(self.open):
            connection.abort()


async def close_server(server: asyncio.AbstractServer | None, runner, cap: ConnectionCap) -> None:
    """Stop a server made on ``cap.factory``: no new connections, aiohttp's closed by ``runner``
    (its AppRunner), then those still in a TLS handshake or that never sent a request."""
    if server is not None:
        server.close()
    if runner is not None:
        await runner.cleanup()
    cap.abort_all()
    if server is not None:
        await server.wait_closed()


class _Counted(asyncio.Protocol):
    """The inner protocol for one connection, kept in ``open`` while the connection is; ``idle``
    until the connection has sent a request head. A TLS connection whose handshake fails never
    reaches ``connection_made``: it leaves ``open`` once the handshake timeout has passed."""

    def __init__(self, inner: asyncio.Protocol, open: dict, handshake_s: float | None) -> None:
        self.inner, self.open = inner, open
        self.transport: asyncio.Transport | None = None
        self.head_seen = False
        self._tail = b""
        open[self] = None
        if handshake_s is not None:
            asyncio.get_running_loop().call_later(handshake_s + 1.0, self._handshake_over)

    def idle(self) -> bool:
        return self.transport is not None and not self.head_seen

    def abort(self) -> None:
        self.open.pop(self, None)
        if self.transport is not None:
            self.transport.abort()

    def _handshake_over(self) -> None:
        if self.transport is None:
            self.open.pop(self, None)

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if not self.head_seen:
            seen = self._tail + data
            self.head_seen, self._tail = b"\r\n\r\n" in seen, seen[-3:]
        self.inner.data_received(data)

    def eof_received(self):
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def connection_lost(self, exc) -> None:
        self.open.pop(self, None)
        self.inner.connection_lost(exc)


class _Refused(asyncio.Protocol):
    """A connection over the cap: 503, closed."""

    def connection_made(self, transport) -> None:
        transport.write(BUSY_RESPONSE)
        transport.close()
