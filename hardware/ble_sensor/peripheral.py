"""An emulated BLE legacy sensor: a bumble peripheral on a virtual controller, offering the w3gate
GATT service (``device_fw/gatt.py``) and speaking the frame protocol with the shared codec
(``device_fw/frame.py``), as the firmware's BLE side does on a board.

Without an identity it advertises and waits to be provisioned (``w3gate device pair --ble``).
With one it notifies a HELLO on each subscription, then a READING every period, cut to the
connection's MTU; CONFIG writes are applied and answered with CONFIG_ACK. Its identity, seq
reservation and settings live in a state file, so a restarted sensor keeps its seqs growing.

Faults, for tests, as lines on stdin: ``drop`` (disconnect every central), ``wrong-key N``
(sign the next N frames with a wrong key), ``replay`` (send the last frame again), ``garbage``
(notify random bytes), ``pause`` / ``resume`` (stop and restart readings), ``burst N`` (N readings
back to back, for benches).
"""
from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import random
import sys
import time
from pathlib import Path

from bumble.core import UUID, AdvertisingData
from bumble.device import Device
from bumble.gatt import Characteristic, CharacteristicValue, Service
from bumble.hci import Address
from bumble.transport import open_transport

from device_fw import frame as wire
from device_fw import gatt

log = logging.getLogger("w3gate.ble_sensor")
SEQ_BLOCK = 256


class EmulatedSensor:
    def __init__(self, name: str, state_path: Path, *, period_ms: int = 1000, seed: int = 1) -> None:
        self.name = name
        self.state_path = state_path
        self.state = json.loads(state_path.read_text()) if state_path.exists() else {}
        self.state.setdefault("config", {"period_ms": period_ms, "sensors": ["sim"]})
        self.seq = self.state.get("seq", 0)
        self.state["boot"] = self.state.get("boot", 0) + 1
        self._save_reservation()
        self.rng = random.Random(seed)
        self.started = time.monotonic()
        self.device: Device | None = None
        self.connections: set = set()
        self.subscribed: set = set()
        self.provision = wire.Deframer()
        self.config_in = wire.Deframer()
        self.last_frame = b""
        self.wrong_key_frames = 0
        self.paused = False
        self.frames_sent = 0

    # -- identity and state ------------------------------------------------------------------------

    @property
    def provisioned(self) -> bool:
        return bool(self.state.get("id") and self.state.get("key"))

    def _save(self) -> None:
        tmp = self.state_path.with_name(self.state_path.name + ".tmp")
        tmp.write_text(json.dumps(self.state))
        os.replace(tmp, self.state_path)

    def _save_reservation(self) -> None:
        self.state["seq"] = self.seq + SEQ_BLOCK
        self._save()

    # -- GATT --------------------------------------------------------------------------------------

    async def start(self, transport_spec: str) -> None:
        transport = await open_transport(transport_spec)
        self.device = Device.with_hci(self.name, Address.generate_static_address(), transport.source, transport.sink)
        self.data = Characteristic(gatt.DATA, Characteristic.Properties.READ | Characteristic.Properties.NOTIFY,
                                   Characteristic.READABLE, b"")
        config = Characteristic(gatt.CONFIG, Characteristic.Properties.WRITE |
                                Characteristic.Properties.WRITE_WITHOUT_RESPONSE, Characteristic.WRITEABLE,
                                CharacteristicValue(write=self._on_config))
        provision = Characteristic(gatt.PROVISION, Characteristic.Properties.WRITE, Characteristic.WRITEABLE,
                                   CharacteristicValue(write=self._on_provision))
        self.device.add_service(Service(gatt.SERVICE, [self.data, config, provision]))
        self.data.on("subscription", self._on_subscription)
        self.device.on("connection", self._on_connection)
        await self.device.power_on()
        # Name and service both in the advertisement: bumble's virtual controller answers a scan
        # request with the advertising data, not the scan response. Without the flags (a virtual
        # link needs none) a name of up to 11 bytes fits the 31. A board (device_fw/ble.py) puts
        # flags and service in the advertisement and its name in the scan response.
        adv = AdvertisingData([(AdvertisingData.COMPLETE_LOCAL_NAME, self.name.encode()[:11]),
                               (AdvertisingData.COMPLETE_LIST_OF_128_BIT_SERVICE_CLASS_UUIDS,
                                UUID(gatt.SERVICE).to_bytes(force_128=True))])
        await self.device.start_advertising(auto_restart=True, advertising_data=bytes(adv),
                                            advertising_interval_min=100, advertising_interval_max=100)

    def _on_connection(self, connection) -> None:
        self.connections.add(connection)

        def gone(reason) -> None:
            self.connections.discard(connection)
            self.subscribed.discard(connection)
        connection.on("disconnection", gone)

    def _on_subscription(self, connection, notify: bool, indicate: bool) -> None:
        if notify:
            self.subscribed.add(connection)
            if self.provisioned:
                asyncio.get_running_loop().create_task(self.hello())
        else:
            self.subscribed.discard(connection)

    def _on_provision(self, connection, value: bytes) -> None:
        if self.provisioned:
            return  # ignored once it has an identity
        for blob in self.provision.feed(value):
            try:
                identity = json.loads(wire.cobs_decode(blob))
                bytes.fromhex(identity["id"]), bytes.fromhex(identity["key"])
            except (ValueError, KeyError, TypeError, wire.FrameError):
                continue
            self.state.update(id=identity["id"], key=identity["key"], config_seq=0)
            self.state["config"] = {k: identity[k] for k in ("period_ms", "sensors") if k in identity} or \
                self.state["config"]
            self.seq = 0
            self._save_reservation()
            log.info("provisioned as %s", identity["id"])
            asyncio.get_running_loop().create_task(self.hello())

    def _on_config(self, connection, value: bytes) -> None:
        for raw in self.config_in.feed(value):
            self._handle_config(raw)

    def _handle_config(self, raw: bytes) -> None:
        if not self.provisioned:
            return
        me, key = bytes.fromhex(self.state["id"]), bytes.fromhex(self.state["key"])
        try:
            frame_type, _, seq, payload = wire.decode(raw, lambda i: key if i == me else None)
        except wire.FrameError:
            return
        if frame_type != wire.CONFIG or seq <= self.state.get("config_seq", 0):
            return
        self.state["config_seq"] = seq
        changes = json.loads(payload)
        loop = asyncio.get_running_loop()
        if changes.get("repl"):  # forget the identity: back to waiting for provisioning
            loop.create_task(self.send(wire.CONFIG_ACK, {"repl": True, "config_seq": seq}))
            loop.call_later(0.2, self._forget)
            return
        period = changes.get("period_ms", self.state["config"]["period_ms"])
        if not isinstance(period, int) or period < 10:
            loop.create_task(self.send(wire.CONFIG_ACK, {"error": "period_ms must be an integer >= 10",
                                                         "config_seq": seq}))
            self._save()
            return
        self.state["config"] = {"period_ms": period, "sensors": changes.get("sensors", self.state["config"]["sensors"])}
        self._save()
        loop.create_task(self.send(wire.CONFIG_ACK, {**self.state["config"], "config_seq": seq}))

    def _forget(self) -> None:
        for k in ("id", "key"):
            self.state.pop(k, None)
        self.seq = 0
        self._save()

    # -- frames ------------------------------------------------------------------------------------

    def values(self) -> dict:
        minutes = (time.monotonic() - self.started) / 60
        swing = math.sin(minutes / 10)
        return {"temperature": round(21 + 3 * swing + self.rng.uniform(-0.1, 0.1), 2),
                "humidity": round(45 - 8 * swing + self.rng.uniform(-0.5, 0.5), 1),
                "pressure": round(1013.25 + self.rng.uniform(-0.2, 0.2), 2),
                "up": int(time.monotonic() - self.started)}

    async def hello(self) -> None:
        await self.send(wire.HELLO, {"fw": "w3gate-ble-emulator 0.1", "board": "bumble", "sensors": ["sim"],
                                     "period_ms": self.state["config"]["period_ms"], "boot": self.state["boot"]})

    async def send(self, frame_type: int, values: dict) -> None:
        if not self.provisioned:
            return
        self.seq += 1
        if self.seq >= self.state["seq"]:
            self._save_reservation()
        key = bytes.fromhex(self.state["key"])
        if self.wrong_key_frames > 0:
            self.wrong_key_frames -= 1
            key = os.urandom(32)
        data = wire.encode(frame_type, bytes.fromhex(self.state["id"]), self.seq,
                           json.dumps(values, separators=(",", ":")).encode(), key)
        self.last_frame = data
        await self.notify(data)

    async def notify(self, data: bytes) -> None:
        for connection in list(self.subscribed):
            try:
                for chunk in gatt.chunks(data, connection.att_mtu):
                    await self.device.notify_subscriber(connection, self.data, chunk)
            except Exception as e:  # noqa: BLE001 - a central that left mid-frame
                log.debug("notify failed: %s", e)
        self.frames_sent += 1

    async def run(self) -> None:
        while True:
            period = self.state["config"]["period_ms"] / 1000
            await asyncio.sleep(period)
            if self.subscribed and not self.paused:
                await self.send(wire.READING, self.values())

    # -- faults ------------------------------------------------------------------------------------

    async def fault(self, command: str) -> None:
        word, _, arg = command.strip().partition(" ")
        if word == "drop":
            for connection in list(self.connections):
                await connection.disconnect()
        elif word == "wrong-key":
            self.wrong_key_frames = int(arg or 1)
        elif word == "replay" and self.last_frame:
            await self.notify(self.last_frame)
        elif word == "garbage":
            await self.notify(os.urandom(64).replace(b"\x00", b"\x01"))
        elif word == "burst":
            for _ in range(int(arg or 1)):
                await self.send(wire.READING, self.values())
        elif word == "pause":
            self.paused = True
        elif word == "resume":
            self.paused = False


async def _stdin_commands(sensor: EmulatedSensor) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        await sensor.fault(line.decode())


async def serve(args) -> None:
    sensor = EmulatedSensor(args.name, Path(args.state), period_ms=args.period_ms, seed=args.seed)
    if args.id and args.key and not sensor.provisioned:
        sensor.state.update(id=args.id, key=args.key)
        sensor._save()
    await sensor.start(args.transport)
    print(f"emulated BLE sensor {args.name} advertising ({'provisioned' if sensor.provisioned else 'waiting to be paired'})",
          flush=True)
    tasks = [asyncio.create_task(sensor.run())]
    if not sys.stdin.isatty():
        tasks.append(asyncio.create_task(_stdin_commands(sensor)))
    await asyncio.gather(*tasks)
