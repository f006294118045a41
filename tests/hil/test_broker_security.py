"""No one gets in: the broker w3gate writes (`w3gate broker setup`), on real mosquitto, refuses
each attack a client on the LAN tried against the open broker, while a legitimate Pebble (mutual
TLS, as a real one provisioned with the gateway's CA) and a publisher keep working."""
from __future__ import annotations

import json
import queue
import ssl
import socket
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from hardware.pebble.device import PebbleDevice
from hardware.pebble.keystore import Keystore
from rig.broker import free_port, start_managed_broker
from tests.support.gateway import GatewayProcess, cli, cli_json
from tests.support.wat import assemble

NOT_AUTHORIZED = 135  # CONNACK 5 of MQTT 3.1.1, as paho reports it


class Secure:
    """A gateway, its managed broker and three registered Pebbles (one G1), with their bundles."""

    def __init__(self, tmp_path, **settings) -> None:
        self.local, self.devices_port, self.clients_port = free_port(), free_port(), free_port()
        self.gw = GatewayProcess(tmp_path, self.local, broker__local_port=self.local,
                                 broker__device_port=self.devices_port, broker__client_port=self.clients_port,
                                 broker__device_listen="127.0.0.1", broker__max_packet_bytes=8192,
                                 broker__persistence=False, **settings)
        self.data_dir = self.gw.data_dir
        keystore = Keystore(tmp_path / "fleet")
        self.identities = keystore.ensure(2, profile="riverrock-1.0.14") + keystore.ensure(3, profile="g1")[2:]
        cli("broker", "setup", data_dir=self.data_dir, config=self.gw.config)
        cli("device", "import", str(keystore.devices_path), data_dir=self.data_dir, config=self.gw.config)
        self.broker = start_managed_broker(self.data_dir / "broker" / "mosquitto.conf", self.local,
                                           tmp_path / "mosquitto.log")
        self.secret = (self.data_dir / "broker" / "gateway.secret").read_text().strip()

    def bundle(self, name: str) -> Path:
        return self.data_dir / "broker" / "clients" / name

    def device(self, imei: str, *, client_id: str = "", name: str | None = None) -> "Client":
        b = self.bundle(name or imei)
        return Client(self.devices_port, client_id or imei, tls=(b / "ca.crt", b / "client.crt", b / "client.key"))

    def stop(self) -> None:
        self.gw.stop()
        self.broker.stop()


class Client:
    """A paho client that records what it receives and whether it is still connected."""

    def __init__(self, port: int, client_id: str, *, user: str | None = None, password: str | None = None,
                 tls: tuple | None = None, ca=None) -> None:
        self.received: queue.Queue = queue.Queue()
        self.refused: int | None = None
        self.dropped = False
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311)
        if user:
            c.username_pw_set(user, password)
        if tls:
            c.tls_set(ca_certs=str(tls[0]), certfile=str(tls[1]), keyfile=str(tls[2]))
        elif ca:
            c.tls_set(ca_certs=str(ca))
        connected = queue.Queue()
        c.on_connect = lambda cl, u, f, rc, p: connected.put(rc.value)
        c.on_disconnect = lambda cl, u, f, rc, p: setattr(self, "dropped", True)
        c.on_message = lambda cl, u, m: self.received.put((m.topic, m.payload, m.retain))
        c.connect("127.0.0.1", port, keepalive=30)
        c.loop_start()
        try:
            self.refused = connected.get(timeout=5) or None
        except queue.Empty:  # the broker closed the connection without a CONNACK
            self.refused = "closed"
        self.client = c

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)

    def subscribe(self, topic: str) -> None:
        done = queue.Queue()
        self.client.on_subscribe = lambda cl, u, mid, codes, p: done.put(codes)
        self.client.subscribe(topic, qos=1)
        done.get(timeout=5)

    def nothing_within(self, seconds: float) -> bool:
        try:
            self.received.get(timeout=seconds)
            return False
        except queue.Empty:
            return True

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def secure(tmp_path):
    s = Secure(tmp_path)
    s.gw.start()
    yield s
    s.stop()


def reading(identity, now=None) -> tuple[str, bytes]:
    message = PebbleDevice(identity).data_message(now or time.time())
    return message.topic, message.payload


def accepted(gw, imei: str) -> int:
    return sum(1 for r in cli_json("records", data_dir=gw.data_dir, config=gw.config) if r["device"] == imei)


def test_anonymous_and_unknown_clients_are_refused_on_every_listener(secure):
    assert Client(secure.local, "anon").refused == NOT_AUTHORIZED
    assert Client(secure.local, "guess", user="w3gate", password="guess").refused == NOT_AUTHORIZED
    ca = secure.data_dir / "broker" / "ca.crt"
    assert Client(secure.clients_port, "anon-tls", ca=ca).refused == NOT_AUTHORIZED
    try:  # no client certificate: the handshake fails (TLS 1.2), or the broker closes (TLS 1.3)
        assert Client(secure.devices_port, "no-cert", ca=ca).refused == "closed"
    except (ssl.SSLError, OSError):
        pass


def test_the_broker_proves_itself_with_the_gateways_ca(secure):
    context = ssl.create_default_context(cafile=str(secure.data_dir / "broker" / "ca.crt"))
    b = secure.bundle(secure.identities[0].imei)
    context.load_cert_chain(b / "client.crt", b / "client.key")
    with socket.create_connection(("127.0.0.1", secure.devices_port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            assert tls.version() == "TLSv1.2" or tls.version() == "TLSv1.3"
            assert "localhost" in json.dumps(tls.getpeercert()["subjectAltName"])
    modem = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # what the Pebble's nRF9160 modem offers: TLS 1.2, CBC
    modem.load_verify_locations(secure.data_dir / "broker" / "ca.crt")
    modem.load_cert_chain(b / "client.crt", b / "client.key")
    modem.maximum_version = ssl.TLSVersion.TLSv1_2
    modem.set_ciphers("ECDHE-ECDSA-AES128-SHA256")
    with socket.create_connection(("127.0.0.1", secure.devices_port), timeout=5) as raw:
        with modem.wrap_socket(raw, server_hostname="localhost") as tls:
            assert tls.cipher()[0] == "ECDHE-ECDSA-AES128-SHA256"
    stranger = ssl.create_default_context()  # the system's CAs: w3gate's local CA is not among them
    with socket.create_connection(("127.0.0.1", secure.devices_port), timeout=5) as raw:
        with pytest.raises(ssl.SSLCertVerificationError):
            stranger.wrap_socket(raw, server_hostname="localhost")


def test_a_pebble_publishes_as_itself_only_and_reads_only_its_own_downlinks(secure):
    me, victim = secure.identities[0], secure.identities[1]
    device = secure.device(me.imei)
    assert device.refused is None
    topic, payload = reading(me)
    device.publish(topic, payload)
    secure.gw.wait_for(lambda s: s["accepted_total"] >= 1, what="the device's own reading")

    forged_topic, forged = reading(victim)  # even a correctly signed copy of someone else's reading
    device.publish(forged_topic, forged)
    device.publish(f"backend/{victim.imei}/config", b"evil", retain=True)  # a downlink to the victim
    device.publish(f"backend/{victim.imei}/status", b"\x08\x01", retain=True)
    device.subscribe("#")  # everything: readings, acks, tokens in push topics
    device.subscribe(f"backend/{victim.imei}/#")

    victim_client = secure.device(victim.imei)
    victim_client.subscribe(f"backend/{victim.imei}/#")
    assert victim_client.nothing_within(1.0), "a retained downlink forged by another device reached the victim"
    topic, payload = reading(victim)
    victim_client.publish(topic, payload)
    secure.gw.wait_for(lambda s: s["accepted_total"] == 2, what="the victim's own reading")
    assert device.nothing_within(0.5), "a device read another device's traffic"
    assert accepted(secure.gw, victim.imei) == 1 and secure.gw.status()["rejected_total"] == 0


def test_only_the_gateway_is_w3gate_and_nobody_takes_its_session(secure):
    me = secure.identities[0]
    before = secure.gw.status()["mqtt"]
    thief = secure.device(me.imei, client_id="w3gate")  # its own certificate: the broker names it by that
    other = Client(secure.local, "w3gate", user="w3gate-cli", password=secure.secret)
    assert thief.refused is None and other.refused is None
    topic, payload = reading(me)
    thief.publish(topic, payload)
    status = secure.gw.wait_for(lambda s: s["accepted_total"] == 1, what="a reading after the takeover tries")
    assert status["mqtt"]["connected"] and status["mqtt"]["connects"] == before["connects"]
    assert status["mqtt"]["drops"] == 0
    assert "lost" not in secure.gw.log_text()


def test_the_command_line_sends_downlinks_without_touching_the_gateways_session(secure):
    me = secure.identities[0]
    device = secure.device(me.imei)
    device.subscribe(f"backend/{me.imei}/#")
    cli("device", "config", me.imei, "--period", "60", data_dir=secure.data_dir, config=secure.gw.config)
    topic, _, retained = device.received.get(timeout=10)
    assert topic == f"backend/{me.imei}/config"
    status = secure.gw.status()["mqtt"]
    assert status["connected"] and status["drops"] == 0


def test_a_lost_session_is_a_warning_and_counted(tmp_path):
    s = Secure(tmp_path)
    s.gw.start()
    try:
        s.broker.stop()  # no persistence: the gateway's session goes with it
        s.broker = start_managed_broker(s.data_dir / "broker" / "mosquitto.conf", s.local, tmp_path / "again.log")
        status = s.gw.wait_for(lambda st: st["mqtt"]["connected"] and st["mqtt"]["connects"] == 2,
                               what="the gateway back on the restarted broker")
        assert status["mqtt"]["drops"] == 1 and status["mqtt"]["sessions_lost"] == 1
        log = s.gw.log_text()
        assert "WARNING" in log and "with a new session: the broker kept none for us" in log
        topic, payload = reading(s.identities[0])
        s.device(s.identities[0].imei).publish(topic, payload)
        s.gw.wait_for(lambda st: st["accepted_total"] == 1, what="readings after the restart")
    finally:
        s.stop()


def test_an_oversize_packet_disconnects_its_sender_and_costs_the_gateway_nothing(secure):
    me = secure.identities[0]
    device = secure.device(me.imei)
    device.client.publish(f"device/{me.imei}/data", b"x" * 100_000, qos=1)
    deadline = time.monotonic() + 5
    while not device.dropped and time.monotonic() < deadline:
        time.sleep(0.05)
    assert device.dropped
    status = secure.gw.status()
    assert status["mqtt"]["connected"] and status["rejected_total"] == 0
    assert "oversize" in secure.broker.log.read_text()


def test_a_removed_device_stops_at_once_even_on_its_open_connection(secure):
    me = secure.identities[0]
    device = secure.device(me.imei)
    topic, payload = reading(me)
    device.publish(topic, payload)
    secure.gw.wait_for(lambda s: s["accepted_total"] == 1, what="a reading before the removal")
    cli("device", "remove", me.imei, data_dir=secure.data_dir, config=secure.gw.config)
    time.sleep(0.3)  # mosquitto reloads on SIGHUP
    topic, payload = reading(me)
    device.publish(topic, payload)  # the open connection
    time.sleep(1.5)
    status = secure.gw.status()
    assert status["accepted_total"] == 1 and status["rejected_total"] == 0  # the broker dropped it: never seen
    assert not secure.bundle(me.imei).exists()


def test_a_publisher_logs_in_with_its_token_and_reads_only_its_own_acks(tmp_path):
    s = Secure(tmp_path)
    project = tmp_path / "events.toml"
    assemble("probe", tmp_path)
    project.write_text('name = "events"\n[[applets]]\nname = "probe"\nwasm = "probe.wasm"\n'
                       '[[strategies]]\nevent = "DEFAULT"\napplet = "probe"\nhandler = "start"\n')
    cli("project", "deploy", str(project), data_dir=s.data_dir, config=s.gw.config)
    token = cli_json("publisher", "add", "events", "sensor-7", data_dir=s.data_dir, config=s.gw.config)["token"]
    other = cli_json("publisher", "add", "events", "sensor-8", data_dir=s.data_dir, config=s.gw.config)["token"]
    s.gw.start()
    try:
        ca = s.data_dir / "broker" / "ca.crt"
        publisher = Client(s.clients_port, "p7", user="events.sensor-7", password=token, ca=ca)
        spy = Client(s.clients_port, "p8", user="events.sensor-8", password=other, ca=ca)
        assert publisher.refused is None and spy.refused is None
        assert Client(s.clients_port, "p9", user="events.sensor-7", password=other, ca=ca).refused == NOT_AUTHORIZED
        publisher.subscribe("ack/sensor-7")
        spy.subscribe("ack/#")
        spy.subscribe("+/push/#")  # tokens travel in push topics: nobody but the gateway reads them
        publisher.publish(f"events/push/{token}/DEFAULT", b'{"speed": 42}')
        topic, body, _ = publisher.received.get(timeout=10)
        assert topic == "ack/sensor-7" and json.loads(body)["results"][0]["code"] == 0
        assert spy.nothing_within(1.0)
        cli("publisher", "remove", "events", "sensor-7", data_dir=s.data_dir, config=s.gw.config)
        deadline = time.monotonic() + 5
        while not publisher.dropped and time.monotonic() < deadline:  # its password is gone: disconnected
            time.sleep(0.05)
        assert publisher.dropped
    finally:
        s.stop()
