"""BLE links to paired legacy sensors, through bleak's API only.

The sensors offer the w3gate GATT service (``device_fw/gatt.py``): frames arrive as
notifications on DATA, in chunks a ``Deframer`` reassembles, and CONFIG frames go down as
writes. This module finds paired sensors by name in a scan filtered by that service, connects
to them (a bounded number of connection attempts at once: one radio), subscribes, and when a
link drops, connects again and subscribes again with backoff: notifications are not lost to a
stale subscription (ThingsBoard's gateway loses them there). Which BLE stack serves bleak is a
backend choice made by the caller (BlueZ by default, or ``gateway.ble``'s Bumble host).
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Callable

from bleak import BleakClient, BleakScanner
from bleak.backends.device import BLEDevice
from bleak.exc import BleakError

from device_fw import gatt

log = logging.getLogger("w3gate.ble")


@dataclass
class _Link:
    name: str
    client: BleakClient | None = None
    connected_at: float = 0.0
    drops: int = 0
    backoff_s: float = 0.0
    retry_at: float = 0.0
    task: asyncio.Task | None = None
    notifications: int = 0
    reconnect_s: list[float] = field(default_factory=list)  # drop -> subscribed again
    dropped_at: float | None = None


class BleLinks:
    """Keeps a link up to every sensor ``wanted()`` names. ``on_data(link, chunk)`` and
    ``on_change(link, up)`` run on the event loop; links are named ``ble:<sensor name>``."""

    def __init__(self, wanted: Callable[[], set[str]], on_data: Callable[[str, bytes], None], *,
                 on_change: Callable[[str, bool], None] | None = None, scanner_backend=None, client_backend=None,
                 max_connecting: int = 8, scan_s: float = 5.0, reconnect_max_s: float = 30.0,
                 connect_timeout_s: float = 10.0) -> None:
        self.wanted = wanted
        self.on_data = on_data
        self.on_change = on_change or (lambda link, up: None)
        self.scanner_backend, self.client_backend = scanner_backend, client_backend
        self.scan_s, self.reconnect_max_s, self.connect_timeout_s = scan_s, reconnect_max_s, connect_timeout_s
        self.links: dict[str, _Link] = {}
        self._connecting = asyncio.Semaphore(max_connecting)
        self.scans = 0
        self.connects = 0
        self._wake = asyncio.Event()  # a link dropped: look for it again now, not at the next tick

    async def run(self, stop: asyncio.Event) -> None:
        try:
            while not stop.is_set():
                missing = self._missing()
                if missing:
                    found = await self._scan(missing, stop)
                    for name, device in found.items():
                        link = self.links.setdefault(name, _Link(name))
                        link.task = asyncio.create_task(self._connect(link, device, stop))
                        link.task.add_done_callback(lambda task: self._wake.set())  # ended: look again
                await self._idle(stop, 0.5 if missing else 1.0)
        finally:
            tasks = [link.task for link in self.links.values() if link.task is not None]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for link in self.links.values():
                if link.client is not None and link.client.is_connected:
                    try:
                        await link.client.disconnect()
                    except (BleakError, OSError, asyncio.TimeoutError):
                        pass

    async def _idle(self, stop: asyncio.Event, seconds: float) -> None:
        self._wake.clear()
        waits = [asyncio.create_task(self._wake.wait()), asyncio.create_task(stop.wait())]
        await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        for w in waits:
            w.cancel()

    def _missing(self) -> set[str]:
        now = time.monotonic()
        missing = set()
        for name in self.wanted():
            link = self.links.get(name)
            if link is None or ((link.task is None or link.task.done()) and now >= link.retry_at):
                missing.add(name)
        return missing

    async def _scan(self, names: set[str], stop: asyncio.Event) -> dict[str, BLEDevice]:
        """Scan for the service until every name in ``names`` was seen or ``scan_s`` passed."""
        found: dict[str, BLEDevice] = {}
        all_found = asyncio.Event()

        def seen(device: BLEDevice, adv) -> None:
            name = adv.local_name or device.name
            if name in names and name not in found:
                found[name] = device
                if len(found) == len(names):
                    all_found.set()
        self.scans += 1
        try:
            async with BleakScanner(seen, service_uuids=[gatt.SERVICE], backend=self.scanner_backend):
                waits = [asyncio.create_task(all_found.wait()), asyncio.create_task(stop.wait())]
                await asyncio.wait(waits, timeout=self.scan_s, return_when=asyncio.FIRST_COMPLETED)
                for w in waits:
                    w.cancel()
        except (BleakError, OSError) as e:
            log.warning("BLE scan failed: %s", e)
        return found

    async def _connect(self, link: _Link, device: BLEDevice, stop: asyncio.Event) -> None:
        """Connect, subscribe, and hold the link until it drops; then schedule the next attempt."""
        dropped = asyncio.Event()
        name = "ble:" + link.name
        try:
            async with self._connecting:
                client = BleakClient(device, disconnected_callback=lambda c: dropped.set(),
                                     timeout=self.connect_timeout_s, backend=self.client_backend)
                await client.connect()
                link.client = client
                await client.start_notify(gatt.DATA, lambda char, data: self._notified(link, name, data))
        except (BleakError, OSError, asyncio.TimeoutError) as e:
            log.warning("BLE %s: connection failed (%s)", link.name, e or type(e).__name__)
            self._schedule_retry(link)
            return
        self.connects += 1
        link.connected_at = time.monotonic()
        if link.dropped_at is not None:
            link.reconnect_s.append(link.connected_at - link.dropped_at)
            link.dropped_at = None
        link.backoff_s = 0.0
        log.info("BLE %s: connected, mtu %d", link.name, client.mtu_size)
        self.on_change(name, True)
        try:
            waits = [asyncio.create_task(dropped.wait()), asyncio.create_task(stop.wait())]
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            for w in waits:
                w.cancel()
        finally:
            if dropped.is_set():
                link.drops += 1
                link.dropped_at = time.monotonic()
                log.warning("BLE %s: link dropped; reconnecting", link.name)
            self.on_change(name, False)
            link.client = None
            self._schedule_retry(link, immediate=dropped.is_set())

    def _schedule_retry(self, link: _Link, *, immediate: bool = False) -> None:
        link.backoff_s = 0.0 if immediate else min(self.reconnect_max_s, max(0.5, link.backoff_s * 2))
        link.retry_at = time.monotonic() + link.backoff_s

    def _notified(self, link: _Link, name: str, data: bytearray) -> None:
        link.notifications += 1
        self.on_data(name, bytes(data))

    def write(self, name: str, data: bytes) -> bool:
        """Send a frame (CONFIG) to ``ble:<sensor>``, chunked to the link's MTU; False if not connected."""
        link = self.links.get(name.removeprefix("ble:"))
        client = link.client if link else None
        if client is None or not client.is_connected:
            return False
        asyncio.get_running_loop().create_task(self._write(client, link.name, data))
        return True

    @staticmethod
    async def _write(client: BleakClient, name: str, data: bytes) -> None:
        try:
            for chunk in gatt.chunks(data, client.mtu_size):
                await client.write_gatt_char(gatt.CONFIG, chunk, response=True)
        except (BleakError, OSError, asyncio.TimeoutError) as e:
            log.warning("BLE %s: config write failed (%s)", name, e)

    def status(self) -> dict:
        return {"connected": sorted(n for n, l in self.links.items() if l.client is not None and l.client.is_connected),
                "scans": self.scans, "connects": self.connects,
                "drops": sum(l.drops for l in self.links.values()),
                "reconnect_s": [round(s, 3) for l in self.links.values() for s in l.reconnect_s[-5:]]}


def bleak_backends(transport: str) -> tuple[type | None, type | None]:
    """bleak's (scanner, client) backend classes: the Bumble host on ``transport`` (an HCI
    dongle, a virtual controller), or bleak's default (BlueZ) when none is named."""
    if not transport:
        return None, None
    from gateway.ble import BumbleClient, BumbleScanner, use_transport

    use_transport(transport)
    return BumbleScanner, BumbleClient
