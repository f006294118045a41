"""A fleet of emulated Pebbles on a real MQTT broker, running the firmware's duty cycle.

Per device and period (docs/pebble-wire.md, "Transport"): connect (client id = IMEI, MQTT 3.1.1,
keep-alive 20 s, clean session) -> registration if the device is in registration mode (subscribe
backend/<IMEI>/status, poll device/<IMEI>/query about every 5 s, confirm the proposer, send
CONFIG) -> subscribe the config/firmware downlinks -> publish one DATA -> disconnect -> sleep
``upload_period / time_scale``.

All devices share one asyncio loop in one thread: every device has its own paho client whose
socket is driven by the loop (paho's external-loop callbacks, as in its loop_asyncio example),
so a hundred devices cost a hundred sockets, not a hundred threads. The TCP connect itself is
paho's blocking call, which takes microseconds against a broker on the same host or LAN.
"""
from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import paho.mqtt.client as mqtt

from hardware.errors import EmulatorError
from hardware.pebble.device import (DEFAULT_PERIOD, QUERY_INTERVAL_S, DownlinkResult, Message,
                                    PebbleDevice)
from hardware.pebble.faults import FaultInjector, FaultPlan
from hardware.pebble.keystore import Identity

log = logging.getLogger("w3gate.sim")

KEEPALIVE_S = 20
CONNECT_RETRIES = 3  # then the firmware reboots and tries again next period
RETRY_DELAY_S = 1.0
MIN_QUERY_INTERVAL_S = 0.1  # registration polling floor at high time-scales
ACK_TIMEOUT_S = 10.0
LINGER_S = 0.05  # stay connected briefly after the DATA publish to take retained downlinks


class FleetError(EmulatorError):
    reason = "fleet"


class LinkLost(EmulatorError):
    reason = "link_lost"


@dataclass
class Summary:
    """What a fleet run did. ``faults`` holds "clean" plus one count per injected kind."""

    devices: int = 0
    duration_s: float = 0.0
    published: Counter = field(default_factory=Counter)  # by kind: data, config, confirm, query
    faults: Counter = field(default_factory=Counter)
    downlinks: Counter = field(default_factory=Counter)  # status, config_rejected, disconnects, ...
    registered: int = 0
    ota: int = 0
    connects: int = 0
    connect_failures: int = 0

    def to_dict(self) -> dict:
        return {"devices": self.devices, "duration_s": round(self.duration_s, 3),
                "published": dict(self.published), "faults": dict(self.faults),
                "downlinks": dict(self.downlinks), "registered": self.registered, "ota": self.ota,
                "connects": self.connects, "connect_failures": self.connect_failures}

    def text(self) -> str:
        def fmt(counter: Counter) -> str:
            return ", ".join(f"{k} {v}" for k, v in sorted(counter.items())) or "none"

        rate = self.published["data"] / self.duration_s if self.duration_s > 0 else 0.0
        return "\n".join([
            f"{self.devices} devices, {self.duration_s:.1f} s, {self.published['data']} data messages "
            f"({rate:.1f}/s)",
            f"published: {fmt(self.published)}",
            f"faults:    {fmt(self.faults)}",
            f"downlinks: {fmt(self.downlinks)}",
            f"registered {self.registered}, firmware updates {self.ota}, connects {self.connects}, "
            f"connect failures {self.connect_failures}",
        ])


class _Link:
    """One device's MQTT connection, driven by the asyncio loop; awaitable SUBACK/PUBACK."""

    def __init__(self, loop: asyncio.AbstractEventLoop, imei: str,
                 on_message: Callable[[str, bytes], None], tls: Path | None = None) -> None:
        self.loop = loop
        self.imei = imei
        self.on_message = on_message
        self.connected = False
        self.activity = asyncio.Event()  # set on every downlink, so pollers wake early
        self._sock = None
        self._connack: asyncio.Future | None = None
        self._pending: dict[int, asyncio.Future] = {}
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=imei, protocol=mqtt.MQTTv311,
                        clean_session=True)
        c.on_socket_open = self._on_socket_open
        c.on_socket_close = self._on_socket_close
        c.on_socket_register_write = lambda client, userdata, sock: loop.add_writer(sock, client.loop_write)
        c.on_socket_unregister_write = lambda client, userdata, sock: loop.remove_writer(sock)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_subscribe = lambda client, userdata, mid, codes, props: self._resolve(mid)
        c.on_publish = lambda client, userdata, mid, code, props: self._resolve(mid)
        c.on_message = lambda client, userdata, msg: self.on_message(msg.topic, msg.payload)
        if tls is not None:  # as a Pebble provisioned with a CA and a client certificate (mutual TLS)
            c.tls_set(ca_certs=str(tls / "ca.crt"), certfile=str(tls / "client.crt"), keyfile=str(tls / "client.key"))
        self.client = c

    async def connect(self, host: str, port: int, timeout: float = ACK_TIMEOUT_S) -> None:
        self._connack = self.loop.create_future()
        self.client.connect(host, port, keepalive=KEEPALIVE_S)  # OSError when the broker is away
        await asyncio.wait_for(self._connack, timeout)

    async def subscribe(self, topics: list[tuple[str, int]]) -> None:
        rc, mid = self.client.subscribe(topics)
        if rc != mqtt.MQTT_ERR_SUCCESS:
            raise LinkLost(f"subscribe failed: {mqtt.error_string(rc)}")
        await self._wait(mid)

    def publish(self, topic: str, payload: bytes, qos: int) -> int:
        info = self.client.publish(topic, payload, qos=qos)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise LinkLost(f"publish failed: {mqtt.error_string(info.rc)}")
        return info.mid

    async def publish_acked(self, topic: str, payload: bytes, qos: int) -> None:
        mid = self.publish(topic, payload, qos)
        if qos > 0:
            await self._wait(mid)

    def close(self) -> None:
        """Disconnect, flushing what is queued (the DATA publish, then DISCONNECT)."""
        self.connected = False
        if self._sock is not None:
            self.client.disconnect()
            self.client.loop_write()

    def misc(self) -> None:
        if self._sock is not None:
            self.client.loop_misc()

    # -- paho callbacks --------------------------------------------------------------------------

    async def _wait(self, mid: int) -> None:
        future = self._pending.setdefault(mid, self.loop.create_future())
        try:
            await asyncio.wait_for(future, ACK_TIMEOUT_S)
        finally:
            self._pending.pop(mid, None)

    def _resolve(self, mid: int) -> None:
        future = self._pending.get(mid)
        if future is not None and not future.done():
            future.set_result(None)

    def _on_socket_open(self, client, userdata, sock) -> None:
        self._sock = sock
        self.loop.add_reader(sock, client.loop_read)

    def _on_socket_close(self, client, userdata, sock) -> None:
        self.loop.remove_reader(sock)
        self.loop.remove_writer(sock)
        self._sock = None
        self._lost("socket closed")

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if self._connack is None or self._connack.done():
            return
        if reason_code.is_failure:
            self._connack.set_exception(LinkLost(f"broker refused the connection: {reason_code}"))
        else:
            self.connected = True
            self._connack.set_result(None)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self._lost(f"disconnected: {reason_code}")

    def _lost(self, why: str) -> None:
        self.connected = False
        waiting = list(self._pending.values())
        if self._connack is not None:
            waiting.append(self._connack)
        for future in waiting:
            if not future.done():
                future.set_exception(LinkLost(why))
        self.activity.set()


class Fleet:
    """N devices from their identities. ``run()`` drives them against a broker; ``pregenerate``
    builds signed messages without one.

    ``upload_period`` overrides every device's period (seconds, 10..86400); ``time_scale``
    divides all waits (period, registration polling); ``qos`` is used for every device publish
    (0 as the firmware; 1 when a test needs the broker to hold messages). ``on_message`` sees
    every published message, ``on_downlink`` every downlink and the device's reaction.
    """

    def __init__(self, identities: Iterable[Identity], *, host: str = "127.0.0.1", port: int = 1883,
                 qos: int = 0, time_scale: float = 1.0, upload_period: int | None = None,
                 faults: FaultInjector | FaultPlan | str | None = None, register: bool = False,
                 seed: int | str | None = None, linger_s: float = LINGER_S,
                 on_message: Callable[[Message], None] | None = None,
                 on_downlink: Callable[[str, str, DownlinkResult], None] | None = None,
                 client_certs: Path | None = None) -> None:
        if qos not in (0, 1):
            raise FleetError(f"device publishes use QoS 0 or 1, got {qos}", reason="bad_qos")
        if time_scale <= 0:
            raise FleetError(f"time scale must be positive, got {time_scale}", reason="bad_time_scale")
        self.host, self.port, self.qos = host, port, qos
        self.time_scale = float(time_scale)
        self.linger_s = linger_s
        self.on_message, self.on_downlink = on_message, on_downlink
        self.faults = faults if isinstance(faults, FaultInjector) else FaultInjector(faults, seed=seed)
        self.devices = [PebbleDevice(identity, seed=seed, upload_period=upload_period or DEFAULT_PERIOD,
                                     registering=register) for identity in identities]
        if not self.devices:
            raise FleetError("a fleet needs at least one device", reason="bad_count")
        for device in self.devices:
            self.faults.prepare(device)
        self._rng = random.Random(None if seed is None else f"{seed}:fleet")
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._links: dict[str, _Link] = {}
        self.summary = Summary(devices=len(self.devices))
        # mutual TLS: <client_certs>/<client id>/{ca.crt,client.crt,client.key} per device, the
        # client id being the IMEI, or nrf-<IMEI> as the G1 firmware names itself
        self.client_certs = client_certs
        for device in self.devices if client_certs is not None else ():
            self._tls_dir(device)

    # -- without a broker ------------------------------------------------------------------------

    def pregenerate(self, count: int, now: float | None = None) -> list[Message]:
        """``count`` DATA messages, round robin over the devices, signed and ready to publish
        (``[(m.topic, m.payload) for m in ...]``), with the configured faults mixed in. All carry
        the timestamp ``now`` (default: the current time); each has its own nonce and digest.
        About 6k messages per second on one core (signing and the sensor models share it)."""
        now = time.time() if now is None else now
        out = []
        devices = self.devices
        for i in range(count):
            out.append(self.faults.next_data(devices[i % len(devices)], now))
        return out

    # -- running ---------------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the fleet to finish: devices disconnect and ``run`` returns the summary. Safe to
        call from a signal handler or another thread."""
        if self._loop is None or self._stop is None:
            return
        if self._loop.is_running():
            self._loop.call_soon_threadsafe(self._stop.set)

    def run_sync(self, *, duration: float | None = None, messages: int | None = None) -> Summary:
        return asyncio.run(self.run(duration=duration, messages=messages))

    async def run(self, *, duration: float | None = None, messages: int | None = None) -> Summary:
        """Run until ``duration`` seconds passed, every device published ``messages`` DATA
        messages, or ``stop()``; returns the summary."""
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        started = time.monotonic()
        links = {d.imei: _Link(self._loop, d.imei, self._downlink_handler(d), self._tls_dir(d)) for d in self.devices}
        self._links = links
        tasks = [asyncio.create_task(self._device_loop(d, links[d.imei], messages)) for d in self.devices]
        misc = asyncio.create_task(self._misc_loop(links))
        stop_wait = asyncio.create_task(self._stop.wait())
        deadline = None if duration is None else started + duration
        try:
            while not self._stop.is_set():
                running = [t for t in tasks if not t.done()]
                failed = any(t.done() and not t.cancelled() and t.exception() for t in tasks)
                timeout = None if deadline is None else deadline - time.monotonic()
                if not running or failed or (timeout is not None and timeout <= 0):
                    break
                await asyncio.wait([*running, stop_wait], timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._stop.set()  # devices notice at their next wait, disconnect and return
            _, pending = await asyncio.wait(tasks, timeout=ACK_TIMEOUT_S + 2)
            for task in (*pending, misc, stop_wait):
                task.cancel()
            await asyncio.gather(*pending, misc, stop_wait, return_exceptions=True)
            for link in links.values():
                link.close()
            self.summary.duration_s = time.monotonic() - started
            self.summary.faults = Counter(self.faults.counts)
        for task in tasks:
            if not task.cancelled() and task.exception() is not None:
                raise task.exception()
        return self.summary

    def _tls_dir(self, device: PebbleDevice) -> Path | None:
        if self.client_certs is None:
            return None
        for name in (f"nrf-{device.imei}", device.imei):
            if (self.client_certs / name / "client.crt").exists():
                return self.client_certs / name
        raise FleetError(f"no client certificate for {device.imei} in {self.client_certs}", reason="no_cert")

    def interval(self, device: PebbleDevice) -> float:
        """Real seconds between a device's cycles."""
        return device.upload_period / self.time_scale

    async def _sleep(self, seconds: float, wake: asyncio.Event | None = None) -> None:
        """Sleep, returning early when the fleet stops (or ``wake`` is set)."""
        events = [self._stop] + ([wake] if wake is not None else [])
        waiters = [asyncio.ensure_future(e.wait()) for e in events]
        try:
            await asyncio.wait(waiters, timeout=max(0.0, seconds), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()

    async def _misc_loop(self, links: dict[str, _Link]) -> None:
        while True:
            await asyncio.sleep(1.0)
            for link in links.values():
                link.misc()

    async def _device_loop(self, device: PebbleDevice, link: _Link, messages: int | None) -> None:
        await self._sleep(self._rng.uniform(0, self.interval(device)))  # out of lockstep
        sent = 0
        while not self._stop.is_set():
            if await self._cycle(device, link):
                sent += 1
                if messages is not None and sent >= messages:
                    return
            await self._sleep(self.interval(device))

    async def _cycle(self, device: PebbleDevice, link: _Link) -> bool:
        """One wake-up of the duty cycle; True when a DATA message went out."""
        if not await self._connect(device, link):
            return False
        try:
            if device.registering:
                await self._register(device, link)
                if device.registering:
                    return False
            topics = device.downlink_topics()
            if topics:
                await link.subscribe([(topic, 1) for topic in topics])
            if self._stop.is_set():
                return False
            await self._publish(link, self.faults.next_data(device, time.time()))
            await asyncio.sleep(self.linger_s)
            return True
        except (LinkLost, asyncio.TimeoutError) as e:
            log.info("%s: cycle cut short: %s", device.imei, e)
            return False
        finally:
            link.close()

    async def _connect(self, device: PebbleDevice, link: _Link) -> bool:
        for attempt in range(1 + CONNECT_RETRIES):
            if self._stop.is_set():
                return False
            try:
                await link.connect(self.host, self.port)
                self.summary.connects += 1
                return True
            except (OSError, LinkLost, asyncio.TimeoutError) as e:
                self.summary.connect_failures += 1
                link.close()
                log.info("%s: connect %d failed: %s", device.imei, attempt + 1, e)
                await self._sleep(min(RETRY_DELAY_S, self.interval(device)))
        device.reboot()  # three retries failed: the firmware reboots
        return False

    async def _register(self, device: PebbleDevice, link: _Link) -> None:
        """Registration mode: poll with empty queries until the backend confirms (status 2)."""
        await link.subscribe([(device.status_topic, 1)])
        interval = max(QUERY_INTERVAL_S / self.time_scale, MIN_QUERY_INTERVAL_S)
        while device.registering and link.connected and not self._stop.is_set():
            link.activity.clear()
            await self._publish(link, device.query_message())
            deadline = time.monotonic() + interval
            while device.registering and link.connected and time.monotonic() < deadline:
                link.activity.clear()
                await self._sleep(deadline - time.monotonic(), wake=link.activity)
                if self._stop.is_set():
                    return

    async def _publish(self, link: _Link, message: Message) -> None:
        await link.publish_acked(message.topic, message.payload, self.qos)
        self._published(message)

    def _published(self, message: Message) -> None:
        self.summary.published[message.kind] += 1
        if self.on_message is not None:
            self.on_message(message)

    def _downlink_handler(self, device: PebbleDevice) -> Callable[[str, bytes], None]:
        def handle(topic: str, payload: bytes) -> None:
            link = self._links[device.imei]
            try:
                result = device.handle_downlink(topic, payload, time.time())
                counts = self.summary.downlinks
                counts[result.kind if result.accepted else f"{result.kind}_rejected"] += 1
                if result.disconnect:
                    counts["disconnects"] += 1
                    self._loop.call_soon(link.close)  # not from inside paho's read
                else:
                    for reply in result.replies:
                        link.publish(reply.topic, reply.payload, self.qos)
                        self._published(reply)
                if result.accepted and result.changes.get("status") == 2:
                    self.summary.registered += 1
                if result.accepted and result.kind == "firmware":
                    self.summary.ota += 1
                if self.on_downlink is not None:
                    self.on_downlink(device.imei, topic, result)
            except Exception:  # noqa: BLE001 - never let a callback error escape into paho's read
                log.exception("%s: downlink on %s failed", device.imei, topic)
            finally:
                link.activity.set()
        return handle
