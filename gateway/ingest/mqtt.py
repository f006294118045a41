"""The gateway's MQTT link: one paho-mqtt client driven by the asyncio loop, with no network
thread, so a message goes from the socket to verification without a thread hop.

The session is persistent (MQTT 3.1.1, clean session off, fixed client id) and acknowledgement
is manual: the node acknowledges a QoS 1 message only once it is durably buffered, so anything
received but not yet on disk is redelivered by the broker after a crash or restart. MQTT 3.1.1
rather than 5: paho parses v5 properties on every message, which costs a quarter of the receive
path; the broker's ``max_inflight_messages`` then bounds what is unacknowledged (gateway/broker.py).
"""
from __future__ import annotations

import asyncio
import logging
import socket
import time
from dataclasses import dataclass
from typing import Callable

import paho.mqtt.client as mqtt

from gateway.config import MqttConfig

log = logging.getLogger("w3gate.mqtt")

READ_CHUNK = 1 << 16
READ_BURST = 256  # packets per pass of the event loop, so timers and writes still get their turn


class _Client(mqtt.Client):
    """paho's client with a receive buffer.

    paho reads each packet with three ``recv`` calls (type byte, length bytes, body), four system
    calls per message with the readiness check. Here one ``recv`` of 64 KiB serves every packet
    in it, and paho parses them from memory. Overrides two internal methods of paho-mqtt 2.x
    (tests/unit/test_mqtt_link.py pins their behaviour).
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._rbuf = b""
        self._rpos = 0

    def _sock_recv(self, bufsize: int) -> bytes:
        if self._rpos >= len(self._rbuf):
            data = super()._sock_recv(READ_CHUNK)  # raises BlockingIOError when there is nothing
            if not data:
                return data
            self._rbuf, self._rpos = data, 0
        out = self._rbuf[self._rpos:self._rpos + bufsize]
        self._rpos += len(out)
        return out

    def _handle_on_message(self, message: mqtt.MQTTMessage) -> None:
        # One handler and no per-topic callbacks: skip paho's topic-filter matching per message.
        # Exceptions propagate as they do in paho by default (suppress_exceptions off).
        self.on_message(self, self._userdata, message)

    def buffered(self) -> bool:
        """Bytes already received and not yet parsed (the socket will not signal them again)."""
        return self._rpos < len(self._rbuf)

    def drop_buffer(self) -> None:
        self._rbuf, self._rpos = b"", 0


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ costs microseconds per message
class Inbound:
    topic: str
    payload: bytes
    mid: int
    qos: int
    dup: bool  # the broker is redelivering it (we did not acknowledge it before a disconnect)
    received: float  # unix seconds, when the message came off the socket


class MqttLink:
    """Connects, subscribes, reconnects with backoff; hands each message to ``on_message``."""

    def __init__(self, config: MqttConfig, subscriptions: list[str],
                 on_message: Callable[[Inbound], None]) -> None:
        self.config = config
        self.subscriptions = subscriptions
        self.on_message = on_message
        self.connected = False
        self.connects = 0
        self.drops = 0  # connections the broker or the network ended (a session takeover looks the same)
        self.sessions_lost = 0  # reconnects that found no session: what the broker held for us is gone
        self.handler_errors = 0  # messages whose handler raised (a bug): acknowledged and dropped
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sock: socket.socket | None = None
        self._paused = False
        self._lost = asyncio.Event()
        self._up = asyncio.Event()
        client = _Client(mqtt.CallbackAPIVersion.VERSION2, client_id=config.client_id,
                             protocol=mqtt.MQTTv311, clean_session=False, manual_ack=True)
        if config.username:
            client.username_pw_set(config.username, config.password or None)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_register_write
        client.on_socket_unregister_write = self._on_unregister_write
        self._client = client

    # -- public ---------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Keep the link up until ``stop`` is set, reconnecting with exponential backoff."""
        self._loop = asyncio.get_running_loop()
        delay = self.config.reconnect_min_s
        misc = asyncio.create_task(self._misc_loop())
        try:
            while not stop.is_set():
                self._lost.clear()
                try:
                    self._connect()
                except OSError as e:
                    log.warning("broker %s:%d unreachable (%s); retrying in %.1f s",
                                self.config.host, self.config.port, e, delay)
                    await _wait_any(stop, None, delay)
                    delay = min(delay * 2, self.config.reconnect_max_s)
                    continue
                await _wait_any(stop, self._lost, None)
                if self._up.is_set():
                    delay = self.config.reconnect_min_s
                    self._up.clear()
                elif not stop.is_set():
                    await _wait_any(stop, None, delay)
                    delay = min(delay * 2, self.config.reconnect_max_s)
        finally:
            misc.cancel()

    async def wait_connected(self, timeout: float | None = None) -> bool:
        try:
            await asyncio.wait_for(self._up.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    def close(self) -> None:
        """Disconnect cleanly; the broker keeps our session and anything not yet acknowledged."""
        if self.connected:
            self.connected = False  # so the disconnect callback does not report a lost link
            self._client.disconnect()
            # flush the DISCONNECT packet: paho writes it from its queue on the next loop_write
            self._client.loop_write()

    def ack(self, mid: int, qos: int) -> None:
        if qos > 0 and self.connected:
            self._client.ack(mid, qos)

    def publish(self, topic: str, payload: bytes | str, *, qos: int = 1, retain: bool = False) -> None:
        self._client.publish(topic, payload, qos=qos, retain=retain)

    def pause(self) -> None:
        """Stop reading from the broker (backpressure while the buffer catches up)."""
        if not self._paused and self._sock is not None and self._loop is not None:
            self._loop.remove_reader(self._sock)
        self._paused = True

    def resume(self) -> None:
        if self._paused and self._sock is not None and self._loop is not None:
            self._loop.add_reader(self._sock, self._read)
            if self._client.buffered():
                self._loop.call_soon(self._read)  # what was buffered when we paused
        self._paused = False

    # -- paho plumbing ----------------------------------------------------------------------------

    def _connect(self) -> None:
        self._client.connect(self.config.host, self.config.port, keepalive=self.config.keepalive)

    def _read(self) -> None:
        # paho parses one packet per call; keep going while the receive buffer holds more, so a
        # burst is handled in one pass of the event loop instead of one pass per message.
        client, sock = self._client, self._sock
        for _ in range(READ_BURST):
            if client.loop_read() != mqtt.MQTT_ERR_SUCCESS:
                self._mark_lost()
                return
            if self._paused or sock is None or sock is not self._sock or not client.buffered():
                break
        if client.buffered() and not self._paused and sock is self._sock:
            self._loop.call_soon(self._read)  # the burst limit: let timers and writes run first

    def _write(self) -> None:
        self._client.loop_write()

    async def _misc_loop(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            if self._sock is not None:
                self._client.loop_misc()

    def _on_socket_open(self, client, userdata, sock) -> None:
        self._client.drop_buffer()
        self._sock = sock
        if not self._paused:
            self._loop.add_reader(sock, self._read)

    def _on_socket_close(self, client, userdata, sock) -> None:
        self._loop.remove_reader(sock)
        self._loop.remove_writer(sock)
        self._sock = None
        self._mark_lost()

    def _on_register_write(self, client, userdata, sock) -> None:
        self._loop.add_writer(sock, self._write)

    def _on_unregister_write(self, client, userdata, sock) -> None:
        self._loop.remove_writer(sock)

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.error("broker refused the connection: %s", reason_code)
            self._mark_lost()
            return
        self.connected = True
        self.connects += 1
        self._up.set()
        client.subscribe([(topic, 1) for topic in self.subscriptions])
        if self.connects > 1 and not flags.session_present:
            self.sessions_lost += 1
            log.warning("connected to %s:%d with a new session: the broker kept none for us (it restarted "
                        "without persistence, or another client took our id with a clean session); "
                        "QoS 1 messages it held for us are gone", self.config.host, self.config.port)
        else:
            log.info("connected to %s:%d (session %s)", self.config.host, self.config.port,
                     "resumed" if flags.session_present else "new")

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self._mark_lost()

    def _mark_lost(self) -> None:
        """The connection ended; unless we closed it (``close`` clears ``connected`` first), that is
        a drop: paho reports the socket's close before any reason, and mosquitto 2.0 sends none."""
        if self.connected:
            self.drops += 1
            log.warning("connection to %s:%d lost (a broker restart, the network, or another client "
                        "connecting with our identity: the broker ends the older connection)",
                        self.config.host, self.config.port)
        self.connected = False
        self._lost.set()

    def _on_message(self, client, userdata, message: mqtt.MQTTMessage) -> None:
        # paho re-parses a packet whose handler raised, forever: no exception may leave here.
        try:
            self.on_message(Inbound(message.topic, message.payload, message.mid, message.qos,
                                    bool(message.dup), time.time()))
        except Exception:  # noqa: BLE001 - the handler's own boundary failed; drop this one message
            self.handler_errors += 1
            if self.handler_errors <= 10 or self.handler_errors % 1000 == 0:
                log.exception("message %d on %r could not be handled (%d so far); acknowledged and dropped",
                              message.mid, message._topic[:100], self.handler_errors)
            self.ack(message.mid, message.qos)


async def _wait_any(stop: asyncio.Event, other: asyncio.Event | None, timeout: float | None) -> None:
    waits = [asyncio.create_task(stop.wait())]
    if other is not None:
        waits.append(asyncio.create_task(other.wait()))
    try:
        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in waits:
            task.cancel()
