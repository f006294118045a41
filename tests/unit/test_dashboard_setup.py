"""`w3gate dashboard setup` makes what the dashboard needs on the network: a certificate from the
gateway's own CA naming this host and a random password, both private, and the settings to use.
With them the gateway's configuration accepts a listen address beyond loopback, a browser that
trusts the CA reaches the pages over HTTPS with the password, and nobody else does."""
from __future__ import annotations

import asyncio
import base64
import json
import ssl
import stat
import urllib.error
import urllib.request
from types import SimpleNamespace

import pytest

from gateway.broker.certs import describe, load_cert
from gateway.config import load_config
from gateway.dashboard.server import DashboardServer
from tests.support.gateway import cli


def setup_json(data_dir, *args):
    return json.loads(cli("dashboard", "setup", "--json", *args, data_dir=data_dir).stdout)


def test_it_makes_a_private_certificate_from_the_gateways_ca_and_a_password(tmp_path):
    data = tmp_path / "data"
    made = setup_json(data, "--name", "gw.example.net")
    assert made["made"] == ["password", "certificate"]
    files = {k: data / "dashboard" / n for k, n in (("tls_cert", "tls.crt"), ("tls_key", "tls.key"),
                                                    ("password_file", "password"))}
    assert made["settings"] == {"listen": "0.0.0.0", "port": 8890, **{k: str(p) for k, p in files.items()}}
    for path in files.values():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((data / "dashboard").stat().st_mode) == 0o700
    assert files["password_file"].read_text() == made["password"] + "\n" and len(made["password"]) == 24
    names = made["certificate"]["names"]
    assert names[0] == "gw.example.net" and {"localhost", "127.0.0.1", "::1"} <= set(names)
    assert made["ca"] == str(data / "broker" / "ca.crt")
    assert made["certificate"]["issuer"] == describe(load_cert(data / "broker" / "ca.crt"))["subject"]


def test_a_second_run_keeps_both_unless_asked_and_never_shows_a_kept_password(tmp_path):
    data = tmp_path / "data"
    first = setup_json(data)
    again = setup_json(data)
    assert again["made"] == [] and again["password"] is None
    assert again["certificate"]["sha256"] == first["certificate"]["sha256"]
    renewed = setup_json(data, "--new-password")
    assert renewed["made"] == ["password"] and renewed["password"] != first["password"]
    assert setup_json(data, "--new-certificate")["certificate"]["sha256"] != first["certificate"]["sha256"]


def test_with_its_settings_the_dashboard_serves_https_beyond_loopback_to_whoever_has_the_password(tmp_path):
    made = setup_json(tmp_path / "data")
    env = {f"W3GATE_DASHBOARD_{k.upper()}": str(v) for k, v in made["settings"].items()}
    dashboard = load_config(env=env).dashboard  # 0.0.0.0 is accepted with these
    assert dashboard.listen == "0.0.0.0"
    server = DashboardServer(SimpleNamespace(), tls_cert=dashboard.tls_cert, tls_key=dashboard.tls_key,
                             password_file=dashboard.password_file)
    trusting = ssl.create_default_context(cafile=made["ca"])
    basic = "Basic " + base64.b64encode(f"me:{made['password']}".encode()).decode()

    def get(url, context, authorization=None):
        request = urllib.request.Request(url, headers={"Authorization": authorization} if authorization else {})
        try:
            with urllib.request.urlopen(request, timeout=5, context=context) as response:
                return response.status
        except urllib.error.HTTPError as e:
            return e.code

    async def go():
        stop = asyncio.Event()
        task = asyncio.create_task(server.serve("127.0.0.1", 0, stop))
        while server.port is None:
            await asyncio.sleep(0.01)
        url = server.status()["url"] + "/metrics"
        try:
            assert url.startswith("https://127.0.0.1:")
            assert await asyncio.to_thread(get, url, trusting, basic) == 200
            assert await asyncio.to_thread(get, url, trusting) == 401
            with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
                await asyncio.to_thread(get, url, ssl.create_default_context(), basic)  # a CA it never trusted
        finally:
            stop.set()
            await task

    asyncio.run(go())
