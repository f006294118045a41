"""Who may do what on the managed broker (gateway/broker/access.py, docs/broker.md): the rules
w3gate writes for each identity, the password hashes mosquitto checks, and a sync that changes
the files only when something changed. (Real mosquitto enforcing them: tests/hil/test_broker_security.py.)"""
from __future__ import annotations

import base64
import hashlib
import os
import stat

import pytest

from gateway.broker import access
from gateway.broker.conf import managed_conf
from gateway.config import load_config
from gateway.layout import BrokerFiles


def test_a_password_hash_is_mosquittos_pbkdf2_sha512_form():
    salt = bytes(range(12))
    hashed = access.password_hash("s3cret", salt=salt)
    kind, iterations, salt_b64, digest_b64 = hashed.split("$")[1:]
    assert (kind, iterations, base64.b64decode(salt_b64)) == ("7", "101", salt)
    assert base64.b64decode(digest_b64) == hashlib.pbkdf2_hmac("sha512", b"s3cret", salt, 101)
    assert access.password_hash("s3cret") != access.password_hash("s3cret")  # a new salt each time


def test_a_pebble_may_write_only_its_own_topics_and_read_only_its_downlinks():
    acl = access.render_acl([access.pebble_identity("350916067070535")])
    assert acl.split("\n\n")[1].splitlines() == [
        "user 350916067070535",
        "topic write device/350916067070535/data",
        "topic write device/350916067070535/confirm",
        "topic write device/350916067070535/query",
        "topic read backend/350916067070535/#",
    ]
    g1 = access.pebble_identity("351358815439952", g1=True)
    assert g1.username == "nrf-351358815439952" and "device/nrf-351358815439952/data" in g1.write
    assert "pattern" not in acl and "#" not in "".join(access.pebble_identity("1").write)


def test_a_publisher_writes_its_projects_push_topics_and_reads_its_own_acks():
    ident = access.publisher_identity("events", "sensor-7", access.password_hash("w3b_token"))
    assert ident.username == "events.sensor-7"
    assert ident.write == ("events/push/#",) and ident.read == ("ack/sensor-7",)
    assert access.render_passwd([ident]).startswith("events.sensor-7:$7$101$")


def test_the_gateway_reads_everything_and_its_command_line_only_sends_downlinks():
    gateway, cli = access.gateway_identities("secret")
    assert (gateway.username, gateway.readwrite) == ("w3gate", ("#",))
    assert (cli.username, cli.write, cli.read, cli.readwrite) == ("w3gate-cli", ("backend/#",), (), ())


@pytest.mark.parametrize("name", ["", "has space", "a:b", "dev#", "dev+", "nul\x00", "tab\t"])
def test_an_identity_name_that_would_break_the_files_is_refused(tmp_path, name):
    with pytest.raises(access.BrokerError):
        access.sync(BrokerFiles(tmp_path / "broker"), [access.Identity(name)])


def test_a_repeated_identity_is_refused(tmp_path):
    with pytest.raises(access.BrokerError, match="repeated"):
        access.sync(BrokerFiles(tmp_path), [access.pebble_identity("1"), access.pebble_identity("1")])


def test_sync_writes_private_files_and_reports_only_real_changes(tmp_path):
    files = BrokerFiles(tmp_path / "broker")
    idents = [*access.gateway_identities("secret"), access.pebble_identity("350916067070535")]
    assert access.sync(files, idents) is True
    assert access.sync(files, idents) is False  # same identities: nothing rewritten, no reload
    for path in (files.passwd, files.acl):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(files.dir).st_mode) == 0o700
    assert access.sync(files, idents[:2]) is True and "350916067070535" not in files.acl.read_text()


def test_reload_never_signals_a_process_that_is_not_mosquitto(tmp_path):
    files = BrokerFiles(tmp_path)
    files.pid.write_text(f"{os.getpid()}\n")  # this test process: not mosquitto
    assert access.reload(files) is False
    files.pid.write_text("garbage")
    assert access.reload(files) is False


def test_the_gateway_logs_in_with_its_managed_identity_unless_configured_otherwise(tmp_path):
    files = BrokerFiles(tmp_path)
    assert access.link_credentials("", "", files) is None  # no managed broker: anonymous, as before
    secret = access.gateway_secret(files, create=True)
    assert access.link_credentials("", "", files) == ("w3gate", secret)
    assert access.link_credentials("", "", files, user=access.CLI_USER) == ("w3gate-cli", secret)
    assert access.link_credentials("me", "pw", files) == ("me", "pw")
    assert stat.S_IMODE(os.stat(files.gateway_secret).st_mode) == 0o600


def test_the_managed_conf_has_no_anonymous_listener_and_every_listener_names_clients_by_user(tmp_path):
    config = load_config(env={}, data_dir=tmp_path)
    conf = managed_conf(config.layout.broker, config.broker)
    listeners = conf.split("\nlistener ")[1:]
    assert len(listeners) == 3 and "allow_anonymous true" not in conf
    for block in listeners:
        assert "allow_anonymous false" in block and "use_username_as_clientid true" in block
    local, devices, clients = listeners
    assert local.startswith("1883 127.0.0.1") and "certfile" not in local
    assert "require_certificate true" in devices and "use_identity_as_username true" in devices
    assert "password_file" in clients and "certfile" in clients
    assert "max_packet_size 65536" in conf and "per_listener_settings true" in conf
    assert str(tmp_path.resolve()) in conf  # absolute paths: mosquitto resolves from its own cwd


def test_a_server_certificate_the_user_supplies_is_checked_then_kept_as_given(tmp_path):
    from gateway.broker import certs

    theirs = BrokerFiles(tmp_path / "their-ca")  # their own CA, as an organisation would have
    issued = certs.issue_server(theirs, ["broker.example.org"])
    files = BrokerFiles(tmp_path / "broker")
    installed = certs.install_server(files, theirs.server_cert, theirs.server_key)
    assert installed == issued and files.server_cert.read_bytes() == theirs.server_cert.read_bytes()
    assert certs.describe(installed)["names"] == ["broker.example.org"]
    assert stat.S_IMODE(os.stat(files.server_key).st_mode) == 0o600
    other = BrokerFiles(tmp_path / "other")
    certs.issue_server(other, ["elsewhere"])
    with pytest.raises(certs.CertError, match="is not the key of"):
        certs.install_server(files, theirs.server_cert, other.server_key)
    with pytest.raises(certs.CertError, match="cannot use"):
        certs.install_server(files, tmp_path / "missing.crt", theirs.server_key)


def test_client_certificates_name_their_identity_and_refuse_names_that_would_break_the_rules(tmp_path):
    from cryptography import x509

    from gateway.broker import certs

    files = BrokerFiles(tmp_path / "broker")
    bundle = certs.issue_client(files, "nrf-351358815439952")
    cert = x509.load_pem_x509_certificate(bundle.cert.read_bytes())
    assert cert.subject.rfc4514_string() == "CN=nrf-351358815439952"
    assert cert.issuer == x509.load_pem_x509_certificate(files.ca_cert.read_bytes()).subject
    assert bundle.ca.read_bytes() == files.ca_cert.read_bytes()
    for name in ("", "a b", "dev#", "x/y", "a" * 65):
        with pytest.raises(certs.CertError):
            certs.issue_client(files, name)
