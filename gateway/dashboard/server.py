"""The dashboard's HTTP server, run by `w3gate run` as a supervised task beside the event API.

Routes so far: ``GET /metrics`` (Prometheus text format, ``metrics.py``) and ``GET /healthz``
(200 ``ok``: the process answers). The dashboard's pages join them in ``make_app``. With a
``password_file`` every route but ``/healthz`` asks for the password (HTTP Basic, what a
Prometheus server's ``basic_auth`` sends), so a health check needs no secret and tells nothing.
With a certificate and key it serves HTTPS. Whether it may listen beyond loopback is decided
when the configuration loads (gateway/config.py), not here.

Port 0 picks a free port; ``port`` then holds the one picked and ``status()`` gives the URL that
``status.json`` reports, as the event API does.
"""
from __future__ import annotations

import asyncio
import ipaddress
import logging
import ssl
from typing import Any

from gateway.dashboard.access import REALM, Login
from gateway.dashboard.metrics import metrics_registry
from gateway.errors import ConfigError

log = logging.getLogger("w3gate.dashboard")

PUBLIC_PATHS = frozenset({"/healthz"})  # answered without the password
IDLE_TIMEOUT_S = 30.0  # a keep-alive connection without a request for this long is closed


def tls_context(cert: str, key: str) -> ssl.SSLContext:
    """A server context for the PEM certificate chain and key; ConfigError if they do not load."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as e:
        raise ConfigError(f"dashboard.tls_cert / dashboard.tls_key: cannot load {cert} and {key}: {e}") from None
    return context


class DashboardServer:
    """``node``: the running ``Node`` (gateway/node.py), read at request time, never written."""

    def __init__(self, node: Any, *, tls_cert: str = "", tls_key: str = "", password_file: str = "") -> None:
        self.node = node
        self.registry = metrics_registry(node)
        # both read now, so a bad file stops the start rather than failing at every restart
        self.login = Login.from_file(password_file) if password_file else None
        self.tls = tls_context(tls_cert, tls_key) if tls_cert else None
        self.host: str | None = None
        self.port: int | None = None  # the port listened on (the one picked when 0 was asked)
        self._runner = None  # aiohttp's AppRunner while serving
        self._server: asyncio.AbstractServer | None = None

    @property
    def url(self) -> str | None:
        """Where it serves, e.g. ``http://127.0.0.1:8890``; None while it does not."""
        if self.port is None:
            return None
        try:
            host = f"[{self.host}]" if ipaddress.ip_address(self.host).version == 6 else self.host
        except ValueError:  # a name
            host = self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"

    def status(self) -> dict:
        """For ``status.json``: where the dashboard serves."""
        return {"url": self.url}

    async def serve(self, host: str, port: int, stop: asyncio.Event) -> None:
        """As a supervised task: listening until ``stop``, then closed (no shutdown step needed)."""
        try:
            await self.start(host, port)
            await stop.wait()
        finally:
            await self.stop()

    async def start(self, host: str, port: int) -> int:
        """Listen on ``host:port`` (0: a free port); returns the port."""
        from aiohttp import web  # loaded only when served

        self._runner = web.AppRunner(self.make_app(), access_log=None, keepalive_timeout=IDLE_TIMEOUT_S)
        await self._runner.setup()
        try:
            self._server = await asyncio.get_running_loop().create_server(
                self._runner.server, host, port, ssl=self.tls, reuse_address=True,
                ssl_handshake_timeout=IDLE_TIMEOUT_S if self.tls else None)
        except BaseException:
            await self._runner.cleanup()  # so a later attempt starts clean
            self._runner = None
            raise
        self.host, self.port = host, self._server.sockets[0].getsockname()[1]
        log.info("dashboard on %s (metrics at /metrics%s)", self.url, ", password required" if self.login else "")
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        if self._runner is not None:
            await self._runner.cleanup()  # closes the connections it holds
            self._runner = None
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        self.port = None

    def make_app(self):
        """The aiohttp application: the login in front of every route but ``PUBLIC_PATHS``."""
        from aiohttp import web

        @web.middleware
        async def require_login(request, handler):
            if self.login is None or request.path in PUBLIC_PATHS \
                    or self.login.check_basic(request.headers.get("Authorization")):
                return await handler(request)
            return web.Response(status=401, text="the dashboard's password is required\n",
                                headers={"WWW-Authenticate": f'Basic realm="{REALM}", charset="UTF-8"'})

        app = web.Application(middlewares=[require_login], client_max_size=64 * 1024)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        return app

    async def _metrics(self, request):
        from aiohttp import web
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        # on the event loop, like the counters it reads: one consistent moment, no locks
        return web.Response(body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, request):
        from aiohttp import web

        return web.Response(text="ok")
