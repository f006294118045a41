"""W3bstream's event API, so clients of the upstream node work unchanged.

HTTP:  POST /srv-applet-mgr/v0/event/{project}?eventType=&eventID=&timestamp=<ms>
       Authorization: Bearer <publisher token> (or ?authorization=), body = the raw payload
MQTT:  <project>/push/<token>/<eventType>[/ts=<ms>&id=<eventID>], payload = the raw payload;
       the response is published on ack/<publisherKey> (QoS 0)

The response is upstream's ``EventRsp`` JSON, after the applets ran. Defaults are upstream's:
eventType DEFAULT, eventID ``<uuid>_w3b`` (lower-cased), a timestamp more than 1e6 ms away from
now (or none) replaced by now. Refusals run nothing:

- 401, one answer for a missing or wrong token, a project that is not deployed and a name no
  project can have (so projects cannot be enumerated). Over HTTP the token is checked before a
  byte of the body is read, and the connection is closed.
- 403 for an event type the gateway makes itself (``RESERVED_PREFIXES``: device events; the
  project's cron and chain-monitor event types): a publisher cannot pose as a device or a trigger.
- 413 for a body over the limit, 408 for a body not in within ``body_timeout_s``.

The HTTP server holds at most ``max_connections`` connections: at the cap a new one displaces the
oldest that has not sent a request head yet, or is answered 503 and closed. A connection without a
complete request head within ``body_timeout_s`` (idle keep-alive included) is closed. With a
certificate and key it serves HTTPS.

The same server answers ``GET /.well-known/did.json`` with the node's DID document (did:io of
its key), so a verifier can resolve the gateway an anchor names.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from typing import Callable
from urllib.parse import parse_qs

from gateway.applets.project import NAME, Project
from gateway.applets.publishers import Publishers
from gateway.applets.runtime import AppletRuntime, Event
from gateway.codec.record import FAMILY_EVENTS
from gateway.ingest.http import ConnectionCap, close_server, quiet_protocol_errors, tls_context
from gateway.status import RejectLog

log = logging.getLogger("w3gate.api")

ROUTE = "/srv-applet-mgr/v0/event/{project}"
TIMESTAMP_SLACK_MS = 1_000_000
MAX_MQTT_EVENTS_RUNNING = 1000  # events over MQTT waiting for their applets; more are refused
# Device events (PEBBLE_DATA, LEGACY_HELLO ...: FAMILY_EVENTS) by their family's prefix, any case;
# besides, each project's cron and monitor event types (MONITOR_DEFAULT: triggers.py's default).
RESERVED_PREFIXES = tuple(sorted({e.split("_")[0] + "_" for events in FAMILY_EVENTS.values() for e in events}))
MONITOR_DEFAULT = "MONITOR_DEFAULT"
UNAUTHORIZED = {"error": "InvalidEventToken: a publisher token of this project is required"}


def reserved_event_type(project: Project, event_type: str) -> bool:
    """Whether ``event_type`` is one the gateway makes itself for ``project``."""
    return (event_type.upper().startswith(RESERVED_PREFIXES)
            or any(job.event == event_type for job in project.cron)
            or any(m.get("event", MONITOR_DEFAULT) == event_type for m in project.monitors))


@dataclass
class Reply:
    status: int
    body: dict


class EventAPI:
    def __init__(self, runtime: AppletRuntime, publishers: Publishers, *, max_bytes: int = 256 * 1024,
                 did_document: Callable[[], dict | None] | None = None,
                 publish: Callable[[str, bytes], None] = lambda topic, payload: None,
                 reject_log: RejectLog | None = None, body_timeout_s: float = 10.0,
                 max_connections: int = 64, tls_cert: str = "", tls_key: str = "") -> None:
        self.runtime = runtime
        self.publish = publish  # QoS 0, for the replies to events published over MQTT
        self.reject_log = reject_log or RejectLog()
        self._mqtt_tasks: set[asyncio.Task] = set()
        self.did_document = did_document  # the node's DID document, served at /.well-known/did.json
        self.publishers = publishers
        self.max_bytes = max_bytes
        self.body_timeout_s = body_timeout_s
        self.max_connections = max_connections
        self.tls = tls_context(tls_cert, tls_key, "api") if tls_cert else None  # fails now, not at every restart
        self.counters = {"accepted": 0, "unauthorized": 0, "reserved": 0, "too_large": 0, "too_slow": 0,
                         "busy": 0, "connections_refused": 0, "internal": 0}
        self._runner = None  # aiohttp's AppRunner while the HTTP API serves
        self._server: asyncio.AbstractServer | None = None
        self.connections = ConnectionCap(max_connections, self.body_timeout_s if self.tls else None,
                                         on_refused=self._refused)
        self.port: int | None = None

    def authorize(self, project: str, token: str | None, event_type: str) -> tuple[str | None, Reply | None]:
        """(publisher key, None), or (None, the refusal): one answer for a bad token, an unknown
        project and an impossible name; then a reserved event type is refused."""
        deployed = self.runtime.projects.get(project) if NAME.fullmatch(project) else None
        publisher = self.publishers.authenticate(project, token) if token and deployed else None
        if publisher is None:
            self.counters["unauthorized"] += 1
            return None, Reply(401, UNAUTHORIZED)
        if reserved_event_type(deployed, event_type):
            self.counters["reserved"] += 1
            return None, Reply(403, {"error": f"InvalidEventType: {event_type[:64]!r} is reserved: the gateway "
                                              "makes it itself (device, cron and chain-monitor events)"})
        return publisher, None

    async def submit(self, project: str, token: str | None, payload: bytes, *, event_type: str | None = None,
                     event_id: str | None = None, timestamp_ms: int | None = None) -> Reply:
        publisher, refusal = self.authorize(project, token, event_type or "DEFAULT")
        if refusal is not None:
            return refusal
        return await self._run(project, publisher, payload, event_type=event_type, event_id=event_id,
                               timestamp_ms=timestamp_ms)

    async def _run(self, project: str, publisher: str, payload: bytes, *, event_type: str | None,
                   event_id: str | None, timestamp_ms: int | None) -> Reply:
        if len(payload) > self.max_bytes:
            self.counters["too_large"] += 1
            return Reply(413, {"error": f"the payload is {len(payload)} bytes, the limit is {self.max_bytes}"})
        now = int(time.time() * 1000)
        if not timestamp_ms or abs(timestamp_ms - now) > TIMESTAMP_SLACK_MS:
            timestamp_ms = now
        event = Event(project, payload, event_type=event_type or "DEFAULT", event_id=event_id or "",
                      publisher=publisher, timestamp_ms=timestamp_ms, trust="publisher-token")
        try:
            (response,) = await self.runtime.handle([event])
        except Exception:  # noqa: BLE001 - the client gets a reason, the API keeps serving
            self.counters["internal"] += 1
            log.exception("event %s of project %s failed inside the gateway", event.event_id, project)
            return Reply(500, {"error": "internal: the gateway failed on this event (logged)"})
        self.counters["accepted"] += 1
        return Reply(200, response.to_json())

    # -- MQTT ---------------------------------------------------------------------------------------

    def on_mqtt(self, topic: str, payload: bytes) -> None:
        """An event published over MQTT: run it in a task of its own and answer on
        ``ack/<publisherKey>``; a flood beyond ``MAX_MQTT_EVENTS_RUNNING`` is refused, not queued."""
        if len(self._mqtt_tasks) >= MAX_MQTT_EVENTS_RUNNING:
            self.counters["busy"] += 1
            self.reject_log("event_busy", None, topic.split("/")[0] + "/push/…", "too many MQTT events running")
            return
        task = asyncio.get_running_loop().create_task(self._mqtt_event(topic, payload))
        self._mqtt_tasks.add(task)
        task.add_done_callback(self._mqtt_tasks.discard)

    async def drain_mqtt(self) -> None:
        """Wait for the MQTT events still running."""
        if self._mqtt_tasks:
            await asyncio.gather(*self._mqtt_tasks, return_exceptions=True)

    async def _mqtt_event(self, topic: str, payload: bytes) -> None:
        where = topic.split("/")[0] + "/push/…"  # never the token
        try:
            ack_topic, reply = await self.submit_mqtt(topic, payload)
        except Exception as e:  # noqa: BLE001 - a task of its own: nothing else would see it
            self.counters["internal"] += 1
            self.reject_log.internal(e, None, where)
            return
        if ack_topic is None:  # counted above; logged without the token, rate-limited
            self.reject_log(f"event_{reply.status}", None, where, str(reply.body.get("error")))
            return
        self.publish(ack_topic, json.dumps(reply.body).encode())

    async def submit_mqtt(self, topic: str, payload: bytes) -> tuple[str | None, Reply]:
        """Handle ``<project>/push/<token>/<eventType>[/<query>]``: (ack topic or None, reply)."""
        parts = topic.split("/")
        if len(parts) not in (4, 5) or parts[1] != "push":
            return None, Reply(400, {"error": f"not an event topic: {topic}"})
        project, token, event_type = parts[0], parts[2], parts[3]
        query = parse_qs(parts[4]) if len(parts) == 5 else {}
        try:
            ts = int(query["ts"][0]) if "ts" in query else None
        except ValueError:
            ts = None
        reply = await self.submit(project, token, payload, event_type=event_type,
                                  event_id=query.get("id", [""])[0] or None, timestamp_ms=ts)
        publisher = reply.body.get("publisherKey") if reply.status == 200 else None
        return (f"ack/{publisher}" if publisher else None), reply

    # -- HTTP ---------------------------------------------------------------------------------------

    async def serve(self, host: str, port: int, stop: asyncio.Event) -> None:
        """The HTTP API as a supervised task: listening until ``stop`` (``stop_http`` closes it)."""
        if self.port is None:
            await self.start_http(host, port)
        await stop.wait()

    async def start_http(self, host: str, port: int) -> int:
        quiet_protocol_errors()  # a client sending garbage gets 400s, not the journal full of tracebacks
        from aiohttp import web  # 13 MB of memory: loaded only when the HTTP API is on

        app = web.Application(client_max_size=self.max_bytes + 1)
        app.router.add_post(ROUTE, self._http_event)
        app.router.add_get("/.well-known/did.json", self._http_did)
        # keepalive_timeout: aiohttp closes a connection without a complete request head after it
        # (from the connection's start, and between requests); no lingering over unread bodies
        self._runner = web.AppRunner(app, access_log=None, keepalive_timeout=self.body_timeout_s,
                                     lingering_time=0)
        await self._runner.setup()
        try:
            self._server = await asyncio.get_running_loop().create_server(
                self.connections.factory(self._runner.server), host, port, ssl=self.tls, reuse_address=True,
                ssl_handshake_timeout=self.body_timeout_s if self.tls else None)
        except BaseException:
            await self._runner.cleanup()  # so a later attempt starts clean
            self._runner = None
            raise
        self.port = self._server.sockets[0].getsockname()[1]  # the port picked when 0 was asked
        log.info("event API on %s://%s:%d%s", "https" if self.tls else "http", host, self.port,
                 ROUTE.format(project="<project>"))
        return self.port

    async def stop_http(self) -> None:
        await close_server(self._server, self._runner, self.connections)
        self._server = self._runner = None

    def _refused(self) -> None:
        self.counters["connections_refused"] += 1

    async def _http_did(self, request):
        from aiohttp import web

        document = self.did_document() if self.did_document else None
        if document is None:
            return web.json_response({"error": "this node has no key (w3gate key new)"}, status=404)
        return web.json_response(document, content_type="application/did+json")

    async def _http_event(self, request):
        from aiohttp import web

        def answer(reply: Reply, *, close: bool = False):
            response = web.json_response(reply.body, status=reply.status)
            if close:  # the body was not read: nothing more comes from this connection
                response.force_close()
            return response

        project = request.match_info["project"]
        token = request.headers.get("Authorization") or request.query.get("authorization")
        event_type = request.query.get("eventType")
        try:
            publisher, refusal = self.authorize(project, token, event_type or "DEFAULT")
            if refusal is not None:
                return answer(refusal, close=True)
            if (request.content_length or 0) > self.max_bytes:
                self.counters["too_large"] += 1
                return answer(Reply(413, {"error": f"the payload is {request.content_length} bytes, "
                                                   f"the limit is {self.max_bytes}"}), close=True)
            try:
                body = await asyncio.wait_for(request.read(), self.body_timeout_s)
            except web.HTTPRequestEntityTooLarge:
                self.counters["too_large"] += 1
                return answer(Reply(413, {"error": f"the payload is over the limit of {self.max_bytes} bytes"}),
                              close=True)
            except ConnectionError:  # the client went away
                return answer(Reply(400, {"error": "the connection was lost"}), close=True)
            except asyncio.TimeoutError:
                self.counters["too_slow"] += 1
                return answer(Reply(408, {"error": f"the body did not arrive within {self.body_timeout_s:g} s"}),
                              close=True)
            try:
                ts = int(request.query["timestamp"]) if "timestamp" in request.query else None
            except ValueError:
                ts = None
            reply = await self._run(project, publisher, body, event_type=event_type,
                                    event_id=request.query.get("eventID"), timestamp_ms=ts)
        except Exception as e:  # noqa: BLE001 - counted and logged once; the client gets a reason
            self.counters["internal"] += 1
            self.reject_log.internal(e, None, project[:64] + " (HTTP)")
            reply = Reply(500, {"error": "internal: the gateway failed on this event (logged)"})
        return answer(reply)
