"""[dashboard]: loopback by default; beyond loopback only over TLS and behind a login, refused
when the configuration loads; port 0 picks a free port and the one picked is reported; the
password (HTTP Basic) guards every route but /healthz."""
from __future__ import annotations

import asyncio
import base64
import urllib.error
import urllib.request
from types import SimpleNamespace

import pytest

from gateway.config import load_config
from gateway.dashboard.access import Login
from gateway.dashboard.server import DashboardServer
from gateway.errors import ConfigError

BEYOND_LOOPBACK = ("0.0.0.0", "192.168.1.20", "::", "w3gate.local")


@pytest.fixture
def files(tmp_path):
    """Stand-ins for the PEM files and a password file (the config checks only that they exist)."""
    cert, key, password = tmp_path / "d.crt", tmp_path / "d.key", tmp_path / "password"
    cert.write_text("cert")
    key.write_text("key")
    password.write_text("s3cret horse\n")
    password.chmod(0o600)
    return {"W3GATE_DASHBOARD_TLS_CERT": str(cert), "W3GATE_DASHBOARD_TLS_KEY": str(key),
            "W3GATE_DASHBOARD_PASSWORD_FILE": str(password)}


def test_by_default_the_dashboard_is_on_and_listens_on_loopback_only():
    dashboard = load_config(env={}).dashboard
    assert (dashboard.enabled, dashboard.listen, dashboard.port) == (True, "127.0.0.1", 8890)
    assert (dashboard.tls_cert, dashboard.tls_key, dashboard.password_file) == ("", "", "")


@pytest.mark.parametrize("listen", BEYOND_LOOPBACK)
def test_listening_beyond_loopback_without_tls_and_a_login_is_refused_naming_what_is_missing(listen, files):
    with pytest.raises(ConfigError, match=r"beyond loopback: set dashboard.tls_cert, dashboard.tls_key, "
                                          r"dashboard.password_file"):
        load_config(env={"W3GATE_DASHBOARD_LISTEN": listen})
    tls_only = {k: v for k, v in files.items() if "TLS" in k}
    with pytest.raises(ConfigError, match=r"environment variable W3GATE_DASHBOARD_LISTEN: .*set "
                                          r"dashboard.password_file \(HTTPS and a login\)"):
        load_config(env={"W3GATE_DASHBOARD_LISTEN": listen, **tls_only})
    login_only = {"W3GATE_DASHBOARD_PASSWORD_FILE": files["W3GATE_DASHBOARD_PASSWORD_FILE"]}
    with pytest.raises(ConfigError, match=r"set dashboard.tls_cert, dashboard.tls_key \(HTTPS"):
        load_config(env={"W3GATE_DASHBOARD_LISTEN": listen, **login_only})


@pytest.mark.parametrize("listen", BEYOND_LOOPBACK)
def test_beyond_loopback_is_allowed_with_tls_and_a_login_or_when_the_dashboard_is_off(listen, files):
    dashboard = load_config(env={"W3GATE_DASHBOARD_LISTEN": listen, **files}).dashboard
    assert dashboard.listen == listen and dashboard.password_file == files["W3GATE_DASHBOARD_PASSWORD_FILE"]
    off = load_config(env={"W3GATE_DASHBOARD_LISTEN": listen, "W3GATE_DASHBOARD_ENABLED": "false"}).dashboard
    assert off.listen == listen and not off.enabled


@pytest.mark.parametrize("listen", ("127.0.0.1", "127.0.0.2", "::1", "localhost"))
def test_loopback_needs_neither_tls_nor_a_login(listen):
    assert load_config(env={"W3GATE_DASHBOARD_LISTEN": listen}).dashboard.listen == listen


def test_the_tls_files_go_together_and_every_named_file_must_exist(tmp_path, files):
    with pytest.raises(ConfigError, match="dashboard.tls_cert and dashboard.tls_key go together"):
        load_config(env={"W3GATE_DASHBOARD_TLS_CERT": files["W3GATE_DASHBOARD_TLS_CERT"]})
    with pytest.raises(ConfigError, match="dashboard.tls_key: no file"):
        load_config(env={**files, "W3GATE_DASHBOARD_TLS_KEY": str(tmp_path / "missing.key")})
    with pytest.raises(ConfigError, match="dashboard.password_file: no file"):
        load_config(env={"W3GATE_DASHBOARD_PASSWORD_FILE": str(tmp_path / "missing")})


def test_port_zero_is_accepted_and_ports_outside_16_bits_are_refused_naming_the_key(tmp_path):
    assert load_config(env={"W3GATE_DASHBOARD_PORT": "0"}).dashboard.port == 0
    path = tmp_path / "w3gate.toml"
    for bad in ("-1", "65536", '"8890"'):
        path.write_text(f"[dashboard]\nport = {bad}\n")
        with pytest.raises(ConfigError, match=f"config file {path}: dashboard.port must be an integer from 0 to 65535"):
            load_config(path, env={})


def test_a_password_file_is_refused_when_empty_or_readable_by_every_account(tmp_path):
    password = tmp_path / "password"
    password.write_text("\n")
    password.chmod(0o600)
    with pytest.raises(ConfigError, match="password is empty"):
        Login.from_file(password)
    password.write_text("s3cret\n")
    password.chmod(0o644)
    with pytest.raises(ConfigError, match="can be read by every account"):
        Login.from_file(password)
    password.chmod(0o640)
    login = Login.from_file(password)
    assert login.check("s3cret") and not login.check("s3cret\n") and not login.check("")


def _basic(password: str, user: str = "prometheus") -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def _get(url: str, authorization: str | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers={"Authorization": authorization} if authorization else {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _serve_and_get(server: DashboardServer, requests: list[tuple[str, str | None]]) -> tuple[dict, list]:
    """Start ``server`` on port 0, make ``requests`` (path, Authorization) from a thread, stop it."""
    async def go():
        stop = asyncio.Event()
        task = asyncio.create_task(server.serve("127.0.0.1", 0, stop))
        while server.port is None:
            await asyncio.sleep(0.01)
        status = server.status()
        answers = [await asyncio.to_thread(_get, status["url"] + path, auth) for path, auth in requests]
        stop.set()
        await task
        return status, answers

    return asyncio.run(go())


def test_port_zero_listens_on_a_free_port_and_reports_the_one_picked():
    server = DashboardServer(SimpleNamespace())
    status, answers = _serve_and_get(server, [("/healthz", None)])
    port = int(status["url"].rsplit(":", 1)[1])
    assert status["url"] == f"http://127.0.0.1:{port}" and port > 0
    assert answers == [(200, b"ok")]
    assert server.status() == {"url": None}  # stopped: it serves nowhere


def test_with_a_password_file_every_route_but_healthz_asks_for_the_password(tmp_path):
    password = tmp_path / "password"
    password.write_text("s3cret horse\n")
    password.chmod(0o600)
    server = DashboardServer(SimpleNamespace(), password_file=str(password))
    _, answers = _serve_and_get(server, [("/metrics", None), ("/metrics", _basic("wrong")),
                                         ("/metrics", "Basic !!notbase64"), ("/metrics", _basic("s3cret horse")),
                                         ("/healthz", None)])
    assert [code for code, _ in answers] == [401, 401, 401, 200, 200]
    assert b"process_cpu_seconds_total" in answers[3][1]  # the metrics, once the password is given


def test_after_five_wrong_passwords_an_address_is_told_to_wait_and_not_even_checked(tmp_path):
    password = tmp_path / "password"
    password.write_text("s3cret horse\n")
    password.chmod(0o600)
    server = DashboardServer(SimpleNamespace(), password_file=str(password))
    _, answers = _serve_and_get(server, [("/metrics", None)] * 3 + [("/metrics", _basic(f"guess {i}")) for i in range(5)]
                                + [("/metrics", _basic("guess 6")), ("/metrics", _basic("s3cret horse")),
                                   ("/healthz", None)])
    codes = [code for code, _ in answers]
    assert codes == [401] * 8 + [429, 429, 200]  # asking without a password is free; /healthz never waits
    assert answers[-2][1].startswith(b"too many wrong passwords: try again in ")
    assert server.attempts.refused == 2


def test_a_flood_of_idle_connections_neither_keeps_a_browser_out_nor_holds_more_than_the_cap():
    from gateway.dashboard.server import MAX_CONNECTIONS

    server = DashboardServer(SimpleNamespace())

    async def go():
        stop = asyncio.Event()
        task = asyncio.create_task(server.serve("127.0.0.1", 0, stop))
        while server.port is None:
            await asyncio.sleep(0.01)
        idle = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(200)]  # never a request
        await asyncio.sleep(0.2)
        held = len(server.connections.open)
        answer = await asyncio.to_thread(_get, server.status()["url"] + "/healthz")
        for _, writer in idle:
            writer.close()
        stop.set()
        await task
        return held, answer

    held, answer = asyncio.run(go())
    assert held <= MAX_CONNECTIONS
    assert answer == (200, b"ok")


def test_a_certificate_that_does_not_load_stops_the_start_naming_the_settings(tmp_path):
    bad = tmp_path / "d.crt"
    bad.write_text("-----BEGIN CERTIFICATE-----\nnot a certificate\n-----END CERTIFICATE-----\n")
    with pytest.raises(ConfigError, match=r"dashboard.tls_cert / dashboard.tls_key: cannot load"):
        DashboardServer(SimpleNamespace(), tls_cert=str(bad), tls_key=str(bad))


def test_garbage_requests_get_400_and_leave_a_few_log_lines_without_tracebacks(caplog):
    import logging
    import os

    from gateway.ingest.http import QuietProtocolErrors, quiet_protocol_errors

    quiet_protocol_errors()
    for f in logging.getLogger("aiohttp.server").filters:  # a new window: earlier tests' garbage forgotten
        if isinstance(f, QuietProtocolErrors):
            f._start = 0.0
    server = DashboardServer(SimpleNamespace())

    async def send(port: int, data: bytes) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(data)
        answer = await asyncio.wait_for(reader.read(12), 5)
        writer.close()
        return answer

    async def go():
        stop = asyncio.Event()
        task = asyncio.create_task(server.serve("127.0.0.1", 0, stop))
        while server.port is None:
            await asyncio.sleep(0.01)
        answers = [await send(server.port, garbage) for garbage in
                   [os.urandom(200) for _ in range(100)] + [b"GET / HTTP/1.1\r\nX: " + b"a" * 9000 + b"\r\n\r\n"] * 100]
        healthy = await asyncio.to_thread(_get, server.status()["url"] + "/healthz")
        stop.set()
        await task
        return answers, healthy

    with caplog.at_level(logging.INFO, logger="aiohttp.server"):
        answers, healthy = asyncio.run(go())
    assert {a for a in answers} <= {b"HTTP/1.0 400", b"HTTP/1.1 400", b""}
    assert healthy == (200, b"ok")
    lines = [r for r in caplog.records if r.name == "aiohttp.server"]
    assert 0 < len(lines) <= 20  # a burst per 10 s, not one per request
    assert all(r.exc_info is None and r.levelno == logging.WARNING for r in lines)
    assert lines[0].getMessage().startswith("malformed HTTP request refused (400): ")
