"""The event API lets no one in who has no token, and publishers cannot pose as devices: the token
is checked before a byte of the body is read; an unknown project is answered as a bad token;
names no project can have are refused before any lookup; bodies and request heads have a time
limit and connections a cap; the API serves HTTPS, and will not listen beyond loopback without
it; event types the gateway makes itself are refused from publishers over HTTP and MQTT.

Real aiohttp servers on loopback (port 0), real clients (aiohttp, raw sockets for slow ones); the
applet runtime is a stand-in that records what reaches it."""
from __future__ import annotations

import asyncio
import datetime
import json
import os
import ssl
from pathlib import Path

import aiohttp
import psutil
import pytest

from gateway.applets.event_api import EventAPI
from gateway.applets.project import CronJob, Project, ProjectStore, Strategy
from gateway.applets.publishers import Publishers
from gateway.applets.runtime import EventResponse
from gateway.config import load_config
from gateway.errors import ConfigError
from gateway.layout import DataDir

PATH = "/srv-applet-mgr/v0/event/"


class Runtime:
    """What the API needs of the applet runtime: the deployed projects, and ``handle``."""

    def __init__(self, projects: list[Project]) -> None:
        self.projects = {p.name: p for p in projects}
        self.events = []  # every event that reached "the applets"

    async def handle(self, events):
        self.events.extend(events)
        return [EventResponse(e.project, e.event_id, e.publisher) for e in events]


class Gateway:
    """An EventAPI serving on a random loopback port, with project "events" (a cron job REPORT, a
    monitor TRANSFER, another without an event) and one publisher, sensor-7."""

    def __init__(self, tmp_path: Path, **options) -> None:
        store = ProjectStore(DataDir(tmp_path / "data"))
        project = Project("events", {"probe": "0" * 64}, [Strategy("DEFAULT", "probe")],
                          cron=[CronJob("* * * * *", "REPORT")],
                          monitors=[{"kind": "contract_log", "address": "0x" + "1" * 40, "event": "TRANSFER"},
                                    {"kind": "chain_height", "height": 5}])
        files = store.files(project.name)
        files.dir.mkdir(parents=True)
        files.definition.write_text(json.dumps(project.to_json()))
        self.publishers = Publishers(store)
        self.token = self.publishers.add("events", "sensor-7")
        self.lookups: list[str] = []  # projects whose publishers were looked up
        authenticate = self.publishers.authenticate
        self.publishers.authenticate = lambda name, token: self.lookups.append(name) or authenticate(name, token)
        self.runtime = Runtime([project])
        self.api = EventAPI(self.runtime, self.publishers, max_bytes=1000, **options)

    async def __aenter__(self) -> "Gateway":
        self.port = await self.api.start_http("127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.port}{PATH}"
        return self

    async def __aexit__(self, *exc) -> None:
        await self.api.stop_http()

    async def post(self, url: str, body: bytes = b"{}", token: str | None = None, **kw) -> tuple[int, dict]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with aiohttp.ClientSession() as session:
            async with session.post(url, data=body, headers=headers, **kw) as response:
                text = await response.text()
                return response.status, json.loads(text) if text.startswith("{") else text


async def _raw(port: int, data: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    return reader, writer


async def _answer(reader: asyncio.StreamReader, timeout: float = 10.0) -> bytes:
    """Everything the server sends until it closes the connection."""
    return await asyncio.wait_for(reader.read(), timeout)


async def _ended(reader: asyncio.StreamReader) -> bool:
    """Whether the server ended the connection (closed or reset) without a byte of answer."""
    try:
        return await reader.read() == b""
    except ConnectionError:
        return True


def _head(project: str = "events", token: str | None = None, length: int = 100_000, query: str = "") -> bytes:
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    return (f"POST {PATH}{project}{query} HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: {length}\r\n\r\n").encode()


def test_a_request_without_a_valid_token_is_answered_401_without_its_body_being_read_and_closed(tmp_path):
    async def go():
        async with Gateway(tmp_path) as gw:
            # announces 100 kB and sends none of it: the answer comes at once and the connection ends
            answers = []
            for token in (None, "w3b_wrong"):
                reader, writer = await _raw(gw.port, _head(token=token, length=900))
                answers.append(await _answer(reader))
                writer.close()
            return answers, gw.api.counters, gw.runtime.events

    answers, counters, events = asyncio.run(go())
    for answer in answers:
        head, body = answer.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 401") and b"Connection: close" in head
        assert json.loads(body) == {"error": "InvalidEventToken: a publisher token of this project is required"}
    assert counters["unauthorized"] == 2 and events == []


def test_an_unknown_project_is_answered_exactly_as_a_bad_token(tmp_path):
    async def go():
        async with Gateway(tmp_path) as gw:
            return [await gw.post(gw.url + "events", token="w3b_wrong"),
                    await gw.post(gw.url + "events"),
                    await gw.post(gw.url + "nowhere", token=gw.token),
                    await gw.post(gw.url + "nowhere", token="w3b_wrong"),
                    await gw.post(gw.url + "events", token=gw.token)], gw.api.counters

    (*refused, good), counters = asyncio.run(go())
    assert refused == [refused[0]] * 4 and refused[0][0] == 401
    assert good[0] == 200 and good[1]["publisherKey"] == "sensor-7"
    assert counters["unauthorized"] == 4 and counters["accepted"] == 1 and "not_found" not in counters


@pytest.mark.parametrize("name", ["events%0A", "events%0D%0A", "events%00", "..", ".events", "-events",
                                  "e" * 65, "ev%20ents", "%C3%A9vents", "events%2F..%2F..%2Fetc"])
def test_names_no_project_can_have_are_refused_before_any_lookup(tmp_path, name):
    async def go():
        async with Gateway(tmp_path) as gw:
            status, body = await gw.post(gw.url + name, token=gw.token)
            raw = name.replace("%0A", "\n").replace("%0D", "\r").replace("%00", "\0").replace("%2F", "/")
            mqtt = await gw.api.submit(raw, gw.token, b"{}")  # MQTT topics reach submit unescaped
            return status, body, mqtt, gw.lookups, gw.runtime.events

    status, body, mqtt, lookups, events = asyncio.run(go())
    assert status in (401, 404) and mqtt.status == 401  # 404: aiohttp's router refused it first
    assert lookups == [] and events == []


def test_a_body_that_does_not_arrive_in_time_is_answered_408_and_the_connection_closed(tmp_path):
    async def go():
        async with Gateway(tmp_path, body_timeout_s=0.5) as gw:
            reader, writer = await _raw(gw.port, _head(token=gw.token, length=500) + b'{"half')
            answer = await _answer(reader)
            writer.close()
            return answer, gw.api.counters, gw.runtime.events

    answer, counters, events = asyncio.run(go())
    assert answer.startswith(b"HTTP/1.1 408") and counters["too_slow"] == 1 and events == []


def test_a_body_over_the_limit_is_refused_by_its_announced_length_without_being_read(tmp_path):
    async def go():
        async with Gateway(tmp_path) as gw:
            reader, writer = await _raw(gw.port, _head(token=gw.token, length=10_000_000))
            answer = await _answer(reader)
            writer.close()
            return answer, gw.api.counters

    answer, counters = asyncio.run(go())
    assert answer.startswith(b"HTTP/1.1 413") and counters["too_large"] == 1


def test_300_slow_connections_neither_keep_a_publisher_out_nor_stay_open(tmp_path):
    """Slow-loris: 300 connections sending a request head a byte at a time. The cap keeps the
    server's connections (and file descriptors) bounded; the newest displace the oldest that have
    not sent a head; a publisher's request gets through while they are held; all of them are
    closed within the time limit."""
    process = psutil.Process(os.getpid())

    async def go():
        async with Gateway(tmp_path, body_timeout_s=2.0, max_connections=64) as gw:
            baseline = process.memory_info().rss
            slow = [await _raw(gw.port, b"POST " + PATH.encode()) for _ in range(300)]
            for _ in range(3):  # trickle
                for _, writer in slow:
                    if not writer.is_closing():
                        try:
                            writer.write(b"e")
                        except ConnectionError:  # displaced already
                            writer.close()
                await asyncio.sleep(0.05)
            held = len(gw.api.connections.open)
            during = process.memory_info().rss
            good = await gw.post(gw.url + "events", token=gw.token)
            closed = await asyncio.wait_for(asyncio.gather(*(_ended(reader) for reader, _ in slow)), 10)
            for _, writer in slow:
                writer.close()
            after = len(gw.api.connections.open)
            return good, held, closed, after, baseline, during

    good, held, closed, after, baseline, during = asyncio.run(go())
    print(f"RSS baseline {baseline / 2**20:.1f} MB, with 300 slow connections {during / 2**20:.1f} MB "
          f"(this process also holds the 300 client sockets)")
    assert good[0] == 200 and good[1]["publisherKey"] == "sensor-7"
    assert held <= 64
    assert closed == [True] * 300  # every slow connection ended by the server, none answered
    assert after == 0


def test_at_the_cap_with_every_connection_busy_a_new_one_is_answered_503(tmp_path):
    async def go():
        async with Gateway(tmp_path, body_timeout_s=1.0, max_connections=4) as gw:
            # four publishers with slow bodies: each has sent its request head, none can be displaced
            busy = [await _raw(gw.port, _head(token=gw.token, length=50) + b"{") for _ in range(4)]
            await asyncio.sleep(0.1)
            reader, writer = await _raw(gw.port, b"")
            refused = await _answer(reader)
            writer.close()
            timed_out = [await _answer(reader) for reader, _ in busy]
            for _, writer in busy:
                writer.close()
            good = await gw.post(gw.url + "events", token=gw.token)
            return refused, timed_out, good, gw.api.counters

    refused, timed_out, good, counters = asyncio.run(go())
    assert refused.startswith(b"HTTP/1.1 503") and counters["connections_refused"] == 1
    assert all(answer.startswith(b"HTTP/1.1 408") for answer in timed_out)
    assert good[0] == 200


@pytest.mark.parametrize("event_type", ["PEBBLE_DATA", "PEBBLE_CONFIG", "PEBBLE_CONFIRM", "LEGACY_DATA",
                                        "LEGACY_HELLO", "LEGACY_CONFIG", "pebble_data", "PEBBLE_ANYTHING",
                                        "REPORT", "TRANSFER", "MONITOR_DEFAULT"])
def test_event_types_the_gateway_makes_are_refused_from_publishers_over_http_and_mqtt(tmp_path, event_type):
    async def go():
        async with Gateway(tmp_path) as gw:
            http = await gw.post(gw.url + f"events?eventType={event_type}", token=gw.token)
            topic, mqtt = await gw.api.submit_mqtt(f"events/push/{gw.token}/{event_type}", b"{}")
            return http, topic, mqtt, gw.api.counters, gw.runtime.events

    http, topic, mqtt, counters, events = asyncio.run(go())
    assert http[0] == 403 and "reserved" in http[1]["error"] and event_type in http[1]["error"]
    assert topic is None and mqtt.status == 403  # no ack; the refusal is logged by on_mqtt
    assert counters["reserved"] == 2 and events == []


def test_other_event_types_still_reach_the_applets(tmp_path):
    async def go():
        async with Gateway(tmp_path) as gw:
            http = await gw.post(gw.url + "events?eventType=COUNT", token=gw.token)
            topic, mqtt = await gw.api.submit_mqtt(f"events/push/{gw.token}/REPORTS", b"{}")
            default = await gw.post(gw.url + "events", token=gw.token)
            return http, topic, mqtt, default, [e.event_type for e in gw.runtime.events]

    http, topic, mqtt, default, events = asyncio.run(go())
    assert http[0] == 200 and mqtt.status == 200 and topic == "ack/sensor-7" and default[0] == 200
    assert events == ["COUNT", "REPORTS", "DEFAULT"]


def _self_signed(tmp_path: Path) -> tuple[str, str]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "api.crt", tmp_path / "api.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path)


def test_with_a_certificate_the_api_serves_https_only(tmp_path):
    cert, key = _self_signed(tmp_path)

    async def go():
        async with Gateway(tmp_path, tls_cert=cert, tls_key=key) as gw:
            trust = ssl.create_default_context(cafile=cert)
            url = f"https://localhost:{gw.port}{PATH}events"
            good = await gw.post(url, token=gw.token, ssl=trust)
            refused = await gw.post(url, token="w3b_wrong", ssl=trust)
            with pytest.raises(aiohttp.ClientError):
                await gw.post(gw.url + "events", token=gw.token)  # plain HTTP: no answer
            return good, refused

    good, refused = asyncio.run(go())
    assert good[0] == 200 and good[1]["publisherKey"] == "sensor-7" and refused[0] == 401


def test_a_key_that_does_not_load_stops_the_start_with_a_config_error(tmp_path):
    cert, _ = _self_signed(tmp_path)
    with pytest.raises(ConfigError, match="api.tls_cert"):
        Gateway(tmp_path, tls_cert=cert, tls_key=cert)


def test_the_api_listens_beyond_loopback_only_with_tls(tmp_path):
    cert, key = _self_signed(tmp_path)
    for listen in ("0.0.0.0", "192.168.1.20", "::", "gateway.local"):
        with pytest.raises(ConfigError, match="beyond loopback.*api.tls_cert and api.tls_key"):
            load_config(env={"W3GATE_API_LISTEN": listen})
        config = load_config(env={"W3GATE_API_LISTEN": listen, "W3GATE_API_TLS_CERT": cert,
                                  "W3GATE_API_TLS_KEY": key})
        assert (config.api.tls_cert, config.api.tls_key) == (cert, key)
        assert load_config(env={"W3GATE_API_LISTEN": listen, "W3GATE_API_ENABLED": "false"}).api.listen == listen
    for listen in ("127.0.0.1", "127.0.0.2", "::1", "localhost"):
        assert load_config(env={"W3GATE_API_LISTEN": listen}).api.tls_cert == ""
    with pytest.raises(ConfigError, match="go together"):
        load_config(env={"W3GATE_API_TLS_CERT": cert})
    with pytest.raises(ConfigError, match="no file"):
        load_config(env={"W3GATE_API_TLS_CERT": cert, "W3GATE_API_TLS_KEY": str(tmp_path / "missing.key")})
