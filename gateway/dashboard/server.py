"""The dashboard's HTTP server, run by `w3gate run` as a supervised task beside the event API.

Routes: ``GET /metrics`` (Prometheus text format, ``metrics.py``), ``GET /healthz`` (200 ``ok``:
the process answers), and the dashboard: ``/`` (the page) and ``/static/<file>`` (its script and
style, served from the package: no CDN, no build step), ``/api/snapshot`` (JSON, ``views.py``),
``/api/history/<device>`` (one device's recent points and GPS track, ``readings.py``),
``/api/events`` (server-sent events: a snapshot, then an update about once a second) and
``/api/proof/<seq>`` (a record's Merkle proof, as `w3gate proof` gives it). With a
``password_file`` every route but ``/healthz`` asks for the password (HTTP Basic, what a
Prometheus server's ``basic_auth`` sends and what a browser asks for), so a health check needs
no secret and tells nothing. With a certificate and key it serves HTTPS. Whether it may listen
beyond loopback is decided when the configuration loads (gateway/config.py), not here. Every
response carries a strict Content-Security-Policy: the page runs only its own script and is
never framed.

The live updates are made once a second for all streams together (``follow``), and only while
someone watches; at most ``MAX_STREAMS`` streams are open at once (more get 503), a stream whose
client takes no data for ``WRITE_TIMEOUT_S`` is ended, and every stream ends when the server
stops.

Port 0 picks a free port; ``port`` then holds the one picked and ``status()`` gives the URL that
``status.json`` reports, as the event API does.
"""
from __future__ import annotations

import asyncio
import gzip
import hashlib
import ipaddress
import json
import logging
from pathlib import Path
from typing import Any

from gateway.dashboard.access import REALM, Attempts, Login
from gateway.dashboard.metrics import metrics_registry
from gateway.dashboard.views import DashboardError, DashboardViews
from gateway.errors import ConfigError
from gateway.ingest.http import ConnectionCap, close_server, quiet_protocol_errors, tls_context

log = logging.getLogger("w3gate.dashboard")

PUBLIC_PATHS = frozenset({"/healthz"})  # answered without the password
IDLE_TIMEOUT_S = 30.0  # a keep-alive connection without a request for this long is closed
TICK_S = 1.0  # live updates: how often the views are refreshed and sent
MAX_CONNECTIONS = 64  # connections held at once; at the cap one that never sent a request makes room, else 503
MAX_STREAMS = 8  # server-sent event streams open at once; more are answered 503
WRITE_TIMEOUT_S = 10.0  # a stream whose client takes no data for this long is ended
KEEPALIVE_S = 15.0  # a comment line on an idle stream, so proxies and phones keep it open
STATIC = Path(__file__).with_name("static")
ASSETS = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
          "style.css": "text/css; charset=utf-8", "icon.svg": "image/svg+xml"}
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}
ERROR_STATUS = {"no_anchoring": 404, "not_sealed": 404, "no_record": 404, "tampered": 409, "busy": 503}


class Asset:
    """A static file read once from the package, with its gzip form and an ETag."""

    def __init__(self, body: bytes, content_type: str) -> None:
        self.body, self.content_type = body, content_type
        self.gzipped = gzip.compress(body, 9, mtime=0)
        self.etag = '"' + hashlib.sha256(body).hexdigest()[:16] + '"'


def load_assets(directory: Path = STATIC) -> dict[str, Asset]:
    """The page's files; ConfigError when the package lacks one (a broken install)."""
    try:
        return {name: Asset((directory / name).read_bytes(), kind) for name, kind in ASSETS.items()}
    except OSError as e:
        raise ConfigError(f"the dashboard's files are missing from the package: {e}") from None


def _json(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":"), allow_nan=False).encode()


def _sse(event: str, data: Any) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + _json(data) + b"\n\n"


class DashboardServer:
    """``node``: the running ``Node`` (gateway/node.py), read at request time, never written."""

    def __init__(self, node: Any, *, tls_cert: str = "", tls_key: str = "", password_file: str = "") -> None:
        self.node = node
        self.registry = metrics_registry(node)
        # both read now, so a bad file stops the start rather than failing at every restart
        self.login = Login.from_file(password_file) if password_file else None
        self.attempts = Attempts()  # wrong passwords per client address
        self.tls = tls_context(tls_cert, tls_key, "dashboard") if tls_cert else None
        self.connections = ConnectionCap(MAX_CONNECTIONS, IDLE_TIMEOUT_S if self.tls else None)
        self.views = DashboardViews(node)
        self.assets = load_assets()
        self.host: str | None = None
        self.port: int | None = None  # the port listened on (the one picked when 0 was asked)
        self.streams = 0  # server-sent event streams open now
        self._runner = None  # aiohttp's AppRunner while serving
        self._server: asyncio.AbstractServer | None = None
        self._closing = False  # set while stopping: streams end, no new one starts
        self._update = b""  # the latest live update, encoded once for every stream
        self._version = 0  # counts updates; a stream sends the latest when it is behind
        self._changed = asyncio.Event()  # set (and replaced) at each update, and when stopping

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
        """As a supervised task: listening and following the node until ``stop``, then closed (no
        shutdown step needed)."""
        try:
            await self.start(host, port)
            await self.follow(stop)
        finally:
            await self.stop()

    async def follow(self, stop: asyncio.Event) -> None:
        """Once a second: refresh the views (new readings, log tails, the machine's figures) and,
        while streams are open, make one update for all of them."""
        loop = asyncio.get_running_loop()
        after = self.views.readings.last_seq
        failed: set[str] = set()
        while not stop.is_set():
            began = loop.time()
            try:
                new = await self.views.tick()
                self.views.trouble = None
            except Exception as e:  # the pages go stale, /metrics and /healthz go on
                new, self.views.trouble = {}, f"the pages' figures could not be refreshed: {type(e).__name__}: {e}"
                if type(e).__name__ not in failed:  # the traceback once per kind; the page says it meanwhile
                    failed.add(type(e).__name__)
                    log.exception("dashboard: the pages' figures could not be refreshed (tried again every second)")
            upto = self.views.readings.last_seq
            if self.streams:
                try:
                    self._publish(_sse("update", {"state": self.views.snapshot(), "new": new,
                                                  "after": after, "upto": upto}))
                except Exception:  # a bug in a view: the streams wait for the next update
                    if "update" not in failed:
                        failed.add("update")
                        log.exception("dashboard: the live update could not be made")
            after = upto
            try:
                await asyncio.wait_for(stop.wait(), max(0.05, TICK_S - (loop.time() - began)))
            except TimeoutError:
                pass

    def _publish(self, update: bytes) -> None:
        self._update = update
        self._version += 1
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def start(self, host: str, port: int) -> int:
        """Listen on ``host:port`` (0: a free port); returns the port."""
        quiet_protocol_errors()  # a client sending garbage gets 400s, not the journal full of tracebacks
        from aiohttp import web  # loaded only when served

        self._runner = web.AppRunner(self.make_app(), access_log=None, keepalive_timeout=IDLE_TIMEOUT_S)
        await self._runner.setup()
        try:
            self._server = await asyncio.get_running_loop().create_server(
                self.connections.factory(self._runner.server), host, port, ssl=self.tls, reuse_address=True,
                ssl_handshake_timeout=IDLE_TIMEOUT_S if self.tls else None)
        except BaseException:
            await self._runner.cleanup()  # so a later attempt starts clean
            self._runner = None
            raise
        self.host, self.port = host, self._server.sockets[0].getsockname()[1]
        self._closing, self._changed = False, asyncio.Event()
        log.info("dashboard on %s (metrics at /metrics%s)", self.url, ", password required" if self.login else "")
        return self.port

    async def stop(self) -> None:
        self._closing = True
        self._changed.set()  # every open stream wakes, sees it and ends
        await close_server(self._server, self._runner, self.connections)
        self._server = self._runner = None
        self.port = None

    def make_app(self):
        """The aiohttp application: the login in front of every route but ``PUBLIC_PATHS``."""
        from aiohttp import web

        @web.middleware
        async def require_login(request, handler):
            if self.login is None or request.path in PUBLIC_PATHS:
                return await handler(request)
            who = request.remote or "?"
            wait = self.attempts.wait_s(who)
            if wait > 0:  # too many wrong passwords from there: not even checked
                self.attempts.refused += 1
                return web.Response(status=429, text=f"too many wrong passwords: try again in {wait:.0f} s\n",
                                    headers={"Retry-After": str(max(1, round(wait)))})
            authorization = request.headers.get("Authorization")
            if self.login.check_basic(authorization):
                self.attempts.succeeded(who)
                return await handler(request)
            if authorization:  # a browser's first request carries none: only a wrong password counts
                self.attempts.failed(who)
            return web.Response(status=401, text="the dashboard's password is required\n",
                                headers={"WWW-Authenticate": f'Basic realm="{REALM}", charset="UTF-8"'})

        async def secure(request, response) -> None:  # every response, errors and streams included
            response.headers.update(SECURITY_HEADERS)

        app = web.Application(middlewares=[require_login], client_max_size=64 * 1024)
        app.on_response_prepare.append(secure)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/", self._page)
        app.router.add_get("/static/{name}", self._static)
        app.router.add_get("/api/snapshot", self._snapshot)
        app.router.add_get("/api/history/{device}", self._history)
        app.router.add_get("/api/events", self._events)
        app.router.add_get("/api/proof/{seq}", self._proof)
        return app

    # -- the dashboard ---------------------------------------------------------------------------

    def _asset(self, request, name: str):
        from aiohttp import web

        asset = self.assets[name]
        headers = {"ETag": asset.etag, "Cache-Control": "no-cache", "Vary": "Accept-Encoding",
                   "Content-Type": asset.content_type}
        if request.headers.get("If-None-Match") == asset.etag:
            return web.Response(status=304, headers=headers)
        if "gzip" in request.headers.get("Accept-Encoding", ""):
            return web.Response(body=asset.gzipped, headers={**headers, "Content-Encoding": "gzip"})
        return web.Response(body=asset.body, headers=headers)

    async def _page(self, request):
        return self._asset(request, "index.html")

    async def _static(self, request):
        from aiohttp import web

        name = request.match_info["name"]
        if name not in self.assets or name == "index.html":
            raise web.HTTPNotFound()
        return self._asset(request, name)

    @staticmethod
    def _api(data: Any, status: int = 200):
        from aiohttp import web

        return web.Response(body=_json(data), status=status,
                            headers={"Content-Type": "application/json", "Cache-Control": "no-store"})

    async def _snapshot(self, request):
        return self._api(self.views.snapshot())

    async def _history(self, request):
        history = self.views.history(request.match_info["device"])
        if history is None:
            return self._api({"error": "unknown_device", "detail": "no recent readings from this device"}, 404)
        return self._api(history)

    async def _proof(self, request):
        text = request.match_info["seq"]
        if not (text.isdigit() and len(text) <= 15):
            return self._api({"error": "bad_request", "detail": "a record's seq is a positive integer"}, 400)
        try:
            return self._api(await self.views.proof(int(text)))
        except DashboardError as e:
            return self._api({"error": e.reason, "detail": e.detail}, ERROR_STATUS.get(e.reason, 500))

    async def _events(self, request):
        """Server-sent events: ``snapshot`` at once (the state), then ``update`` about once a second
        (the state, the new points and positions by device, and the seq range they cover)."""
        from aiohttp import web

        if self._closing or self.streams >= MAX_STREAMS:
            return self._api({"error": "busy", "detail": f"at most {MAX_STREAMS} live pages at once"}, 503)
        self.streams += 1
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store",
                                               "X-Accel-Buffering": "no"})
        try:
            await response.prepare(request)
            version = self._version
            await self._send(response, _sse("snapshot", {"state": self.views.snapshot(),
                                                         "upto": self.views.readings.last_seq}))
            while True:
                changed = self._changed
                if self._closing:
                    return response
                if self._version != version:  # behind (an update came while it was writing): the latest
                    version = self._version
                    await self._send(response, self._update)
                    continue
                try:
                    await asyncio.wait_for(changed.wait(), KEEPALIVE_S)
                except TimeoutError:
                    await self._send(response, b": keep-alive\n\n")
        except (ConnectionError, TimeoutError):
            return response  # the client left or stalled: the stream ends here
        finally:
            self.streams -= 1

    @staticmethod
    async def _send(response, data: bytes) -> None:
        await asyncio.wait_for(response.write(data), WRITE_TIMEOUT_S)

    async def _metrics(self, request):
        from aiohttp import web
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        # on the event loop, like the counters it reads: one consistent moment, no locks
        return web.Response(body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, request):
        from aiohttp import web

        return web.Response(text="ok")
