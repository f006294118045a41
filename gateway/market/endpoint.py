"""Where a buyer's readings go: the MQTT broker URL the buyer named on chain, and the client that
publishes to it.

The URL is written by a stranger (anyone can buy), so it is hostile input: only ``mqtt://`` and
``mqtts://``, a host and a port, no wildcard in the topic; and by default no loopback, private or
link-local address, so nobody can make the gateway publish into its own broker or its LAN
(`[market] allow_private_endpoints` allows that for a buyer on the same network). The address is
resolved and checked once, and a plain ``mqtt://`` connection goes to exactly that address (a
second lookup could answer differently).

One paho client per purchase, each with its own network thread (paho's ``loop_start``): a slow
or dead buyer broker holds up nobody else, and at most ``max_inflight`` messages wait for its
acknowledgement before delivery to it pauses.
"""
from __future__ import annotations

import ipaddress
import socket
import ssl
import threading
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt

from gateway.errors import W3gateError

DEFAULT_TOPIC = "w3gate/market/{id}"
MAX_TOPIC = 200


class EndpointError(W3gateError):
    reason = "bad_endpoint"


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int
    topic: str
    tls: bool
    username: str | None = None
    password: str | None = None

    @property
    def display(self) -> str:
        """The URL without its credentials, for logs and status."""
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}/{self.topic}"


def parse_endpoint(url: str, purchase_id: int) -> Endpoint:
    """``mqtt[s]://[user[:password]@]host[:port][/topic]``; the topic defaults to ``w3gate/market/<id>``."""
    if not url:
        raise EndpointError("no endpoint: this gateway delivers only to the buyer's own broker", reason="no_endpoint")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in url) or "#" in url or "?" in url:
        raise EndpointError("control characters, a wildcard or a query in the endpoint")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise EndpointError(f"{url!r}: {e}") from None
    if parts.scheme not in ("mqtt", "mqtts"):
        raise EndpointError(f"{parts.scheme or 'no'} scheme: only mqtt:// and mqtts:// are delivered to")
    if not parts.hostname:
        raise EndpointError("no host in the endpoint")
    topic = unquote(parts.path.lstrip("/")) or DEFAULT_TOPIC.format(id=purchase_id)
    if len(topic) > MAX_TOPIC or any(c in topic for c in "+#\0") or parts.query or parts.fragment:
        raise EndpointError(f"topic {topic!r}: a plain topic of at most {MAX_TOPIC} characters, no wildcards")
    tls = parts.scheme == "mqtts"
    return Endpoint(parts.hostname, port or (8883 if tls else 1883), topic, tls,
                    unquote(parts.username) if parts.username else None,
                    unquote(parts.password) if parts.password else None)


def resolve(endpoint: Endpoint, *, allow_private: bool) -> str:
    """The address to connect to (blocking DNS: run it off the event loop). Refuses addresses
    that are not public unless ``allow_private``."""
    try:
        infos = socket.getaddrinfo(endpoint.host, endpoint.port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as e:
        raise EndpointError(f"{endpoint.host}: cannot be resolved ({e})", reason="unreachable") from None
    address = infos[0][4][0]
    ip = ipaddress.ip_address(address)
    if not allow_private and not ip.is_global:
        raise EndpointError(f"{endpoint.host} is {address}, not a public address (set [market] "
                            "allow_private_endpoints to deliver on this network)", reason="private_endpoint")
    return address


class Publisher:
    """Publishes one purchase's sealed readings to its buyer's broker, QoS 1."""

    def __init__(self, endpoint: Endpoint, address: str, client_id: str, *, max_inflight: int = 100) -> None:
        self.endpoint = endpoint
        self.max_inflight = max_inflight
        self.error: str | None = None  # the last connection problem, for status
        self._unacked: set[int] = set()
        self._early: set[int] = set()  # acknowledged before publish() had noted them
        self._lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
        self.client.max_queued_messages_set(max_inflight)
        self.client.reconnect_delay_set(1, 60)
        if endpoint.username is not None:
            self.client.username_pw_set(endpoint.username, endpoint.password)
        host = address
        if endpoint.tls:
            self.client.tls_set_context(ssl.create_default_context())
            host = endpoint.host  # the certificate names the host, not its address
        self.client.on_publish = self._on_publish
        self.client.on_connect = self._on_connect
        self.client.connect_async(host, endpoint.port, keepalive=60)
        self.client.loop_start()

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        self.error = None if not reason_code.is_failure else f"refused: {reason_code}"

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        with self._lock:
            if mid in self._unacked:
                self._unacked.discard(mid)
            else:
                self._early.add(mid)

    @property
    def connected(self) -> bool:
        return self.client.is_connected()

    @property
    def room(self) -> int:
        """How many more messages may be handed over now."""
        if not self.connected:
            return 0
        with self._lock:
            return max(0, self.max_inflight - len(self._unacked))

    def publish(self, payload: bytes) -> None:
        info = self.client.publish(self.endpoint.topic, payload, qos=1)
        if info.rc == mqtt.MQTT_ERR_SUCCESS:
            with self._lock:
                if info.mid in self._early:
                    self._early.discard(info.mid)
                else:
                    self._unacked.add(info.mid)
        else:
            self.error = mqtt.error_string(info.rc)

    @property
    def idle(self) -> bool:
        """Everything handed over was acknowledged by the buyer's broker."""
        with self._lock:
            return not self._unacked

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
