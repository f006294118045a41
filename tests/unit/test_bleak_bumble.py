"""bleak's public API on the Bumble backend (gateway/ble), against emulated sensors in their own
processes on a virtual radio: what the gateway's BLE bridge relies on."""
from __future__ import annotations

import asyncio
import json
import os

import pytest
from bleak import BleakClient, BleakScanner

from device_fw import frame as wire
from device_fw import gatt
from gateway.ble import BumbleClient, BumbleScanner, close_host, use_transport
from hardware.ble_sensor.launch import Radio, Sensor


@pytest.fixture
def radio(tmp_path):
    r = Radio(tmp_path / "radio")
    use_transport(r.transport)
    yield r
    r.stop()


@pytest.fixture
def sensors(radio, tmp_path):
    made = []

    def start(name: str, **kwargs) -> tuple[Sensor, bytes, bytes]:
        key = os.urandom(32)
        device_id = bytes([len(made) + 1]) * 8
        made.append(Sensor(radio, tmp_path / "sensors", name, device_id=device_id.hex(), key=key, **kwargs))
        return made[-1], device_id, key
    yield start
    for s in made:
        s.stop()


def run(coro):
    async def wrapped():
        try:
            return await coro
        finally:
            await close_host()
    return asyncio.run(wrapped())


class Frames:
    """Notifications reassembled into checked frames."""

    def __init__(self, key: bytes) -> None:
        self.key = key
        self.deframer = wire.Deframer()
        self.frames: list[tuple[int, int, dict]] = []
        self.arrived = asyncio.Event()

    def __call__(self, char, data: bytearray) -> None:
        for raw in self.deframer.feed(bytes(data)):
            frame_type, _, seq, payload = wire.decode(raw, lambda i: self.key)
            self.frames.append((frame_type, seq, json.loads(payload)))
            self.arrived.set()

    async def wait(self, count: int, timeout: float = 10.0) -> None:
        async def enough():
            while len(self.frames) < count:
                self.arrived.clear()
                await self.arrived.wait()
        await asyncio.wait_for(enough(), timeout)


def test_scanning_by_service_finds_sensors_with_their_names(sensors):
    sensors("w3-one")
    sensors("w3-two")

    async def scan():
        found = await BleakScanner.discover(timeout=2.0, service_uuids=[gatt.SERVICE], return_adv=True,
                                            backend=BumbleScanner)
        named = await BleakScanner.find_device_by_name("w3-two", timeout=5, backend=BumbleScanner)
        return found, named
    found, named = run(scan())
    names = {adv.local_name for _, adv in found.values()}
    assert names == {"w3-one", "w3-two"}
    assert all(gatt.SERVICE in adv.service_uuids for _, adv in found.values())
    assert named is not None and named.name == "w3-two"


def test_a_client_discovers_the_service_subscribes_and_reassembles_frames(sensors):
    _, device_id, key = sensors("w3-one", period_ms=50)

    async def session():
        device = await BleakScanner.find_device_by_name("w3-one", timeout=5, backend=BumbleScanner)
        frames = Frames(key)
        async with BleakClient(device, backend=BumbleClient, timeout=10) as client:
            service = client.services.get_service(gatt.SERVICE)
            props = {c.uuid: set(c.properties) for c in service.characteristics}
            await client.start_notify(gatt.DATA, frames)
            await frames.wait(5)
            await client.stop_notify(gatt.DATA)
            return client.mtu_size, props, frames.frames
    mtu, props, frames = run(session())
    assert mtu > 23  # the MTU exchange happened
    assert props[gatt.DATA] >= {"read", "notify"}
    assert props[gatt.CONFIG] >= {"write", "write-without-response"}
    assert props[gatt.PROVISION] >= {"write"}
    assert frames[0][0] == wire.HELLO and {f[0] for f in frames[1:]} == {wire.READING}
    seqs = [f[1] for f in frames]
    assert seqs == sorted(seqs)


def test_a_config_written_in_chunks_is_applied_and_acknowledged(sensors):
    _, device_id, key = sensors("w3-one", period_ms=50)

    async def session():
        device = await BleakScanner.find_device_by_name("w3-one", timeout=5, backend=BumbleScanner)
        frames = Frames(key)
        async with BleakClient(device, backend=BumbleClient, timeout=10) as client:
            await client.start_notify(gatt.DATA, frames)
            data = wire.encode(wire.CONFIG, device_id, 7, b'{"period_ms":20}', key)
            for chunk in gatt.chunks(data, 23):  # the smallest MTU: a frame in several writes
                await client.write_gatt_char(gatt.CONFIG, chunk, response=True)
            for _ in range(100):
                if any(f[0] == wire.CONFIG_ACK for f in frames.frames):
                    break
                await asyncio.sleep(0.05)
            return [f for f in frames.frames if f[0] == wire.CONFIG_ACK]
    acks = run(session())
    assert acks and acks[0][2] == {"period_ms": 20, "sensors": ["sim"], "config_seq": 7}


def test_a_drop_calls_the_disconnected_callback_and_a_new_connection_resumes_the_stream(sensors):
    sensor, _, key = sensors("w3-one", period_ms=50)

    async def session():
        dropped = asyncio.Event()
        device = await BleakScanner.find_device_by_name("w3-one", timeout=5, backend=BumbleScanner)
        first = Frames(key)
        client = BleakClient(device, backend=BumbleClient, timeout=10, disconnected_callback=lambda c: dropped.set())
        await client.connect()
        await client.start_notify(gatt.DATA, first)
        await first.wait(3)
        sensor.fault("drop")
        await asyncio.wait_for(dropped.wait(), 10)
        assert not client.is_connected
        device = await BleakScanner.find_device_by_name("w3-one", timeout=5, backend=BumbleScanner)
        second = Frames(key)
        async with BleakClient(device, backend=BumbleClient, timeout=10) as again:
            await again.start_notify(gatt.DATA, second)
            await second.wait(3)
        return first.frames, second.frames
    before, after = run(session())
    assert after[0][0] == wire.HELLO  # a fresh subscription is greeted again
    assert after[0][1] > before[-1][1]  # and the seqs go on growing


def test_several_sensors_stream_at_once_through_one_host(sensors):
    started = [sensors(f"w3-s{n}", period_ms=50) for n in range(4)]

    async def session():
        collectors = []
        clients = []
        for sensor, _, key in started:
            device = await BleakScanner.find_device_by_name(sensor.name, timeout=5, backend=BumbleScanner)
            client = BleakClient(device, backend=BumbleClient, timeout=10)
            await client.connect()
            frames = Frames(key)
            await client.start_notify(gatt.DATA, frames)
            clients.append(client)
            collectors.append(frames)
        await asyncio.gather(*(f.wait(5) for f in collectors))
        for client in clients:
            await client.disconnect()
        return [len(f.frames) for f in collectors]
    counts = run(session())
    assert all(n >= 5 for n in counts)
