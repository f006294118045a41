"""bleak's client interface over a Bumble connection (GATT client through ``Peer``)."""
from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable

from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.backends.client import BaseBleakClient, NotifyCallback
from bleak.backends.descriptor import BleakGATTDescriptor
from bleak.backends.device import BLEDevice
from bleak.backends.service import BleakGATTService, BleakGATTServiceCollection
from bleak.exc import BleakError
from bumble.device import Connection, Peer
from bumble.hci import Address

from gateway.ble.host import connect_lock, get_device
from gateway.ble.scanner import bleak_uuid

log = logging.getLogger("w3gate.ble")

PREFERRED_MTU = 247  # asked for after connecting; the peripheral may grant less
_PROPERTIES = ("broadcast", "read", "write-without-response", "write", "notify", "indicate",
               "authenticated-signed-writes", "extended-properties")


class BumbleClient(BaseBleakClient):
    def __init__(self, address_or_ble_device: BLEDevice | str, **kwargs: Any) -> None:
        super().__init__(address_or_ble_device, disconnected_callback=kwargs.get("disconnected_callback"),
                         timeout=kwargs.get("timeout", 10.0))
        details = address_or_ble_device.details if isinstance(address_or_ble_device, BLEDevice) else None
        self._target = details if isinstance(details, Address) else self.address
        self._connection: Connection | None = None
        self._peer: Peer | None = None
        self._subscribers: dict[int, Callable[[bytes], None]] = {}

    # -- connection --------------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return str(self._target)

    @property
    def mtu_size(self) -> int:
        return self._connection.att_mtu if self._connection is not None else 23

    @property
    def is_connected(self) -> bool:
        return self._connection is not None

    async def connect(self, pair: bool, **kwargs: Any) -> None:
        device = await get_device()
        try:
            async with connect_lock():
                connection = await asyncio.wait_for(device.connect(self._target), self._timeout)
        except asyncio.TimeoutError:
            raise BleakError(f"no connection to {self.address} within {self._timeout:.0f} s") from None
        except Exception as e:  # noqa: BLE001 - bumble's HCI errors become bleak's
            raise BleakError(f"connection to {self.address} failed: {e}") from None
        self._connection = connection
        connection.on("disconnection", self._on_disconnection)
        self._peer = Peer(connection)
        try:
            if pair:
                await connection.pair()
            try:
                await asyncio.wait_for(self._peer.request_mtu(PREFERRED_MTU), self._timeout)
            except Exception as e:  # noqa: BLE001 - a peripheral may refuse; 23 still works
                log.debug("MTU exchange with %s failed: %s", self.address, e)
            await asyncio.wait_for(self._discover(), self._timeout)
        except BaseException:
            await self.disconnect()
            raise

    def _on_disconnection(self, reason: int) -> None:
        was_connected = self._connection is not None
        self._connection = None
        self._peer = None
        self._subscribers.clear()
        self.services = None
        if was_connected and self._disconnected_callback is not None:
            self._disconnected_callback()

    async def disconnect(self) -> None:
        connection, self._connection = self._connection, None
        self._peer = None
        self._subscribers.clear()
        if connection is not None:
            try:
                await connection.disconnect()
            except Exception as e:  # noqa: BLE001 - already gone is fine
                log.debug("disconnect from %s: %s", self.address, e)

    async def pair(self, *args: Any, **kwargs: Any) -> None:
        if self._connection is None:
            raise BleakError("not connected")
        await self._connection.pair()

    async def unpair(self) -> None:
        raise NotImplementedError("the Bumble backend keeps no bonds to remove")

    async def _discover(self) -> None:
        peer = self._peer
        await peer.discover_services()
        collection = BleakGATTServiceCollection()
        for service in peer.services:
            await peer.discover_characteristics(service=service)
            s = BleakGATTService(service, service.handle, bleak_uuid(service.uuid))
            collection.add_service(s)
            for char in service.characteristics:
                await peer.discover_descriptors(characteristic=char)
                props = [name for bit, name in enumerate(_PROPERTIES) if char.properties & (1 << bit)]
                c = BleakGATTCharacteristic(char, char.handle, bleak_uuid(char.uuid), props,
                                            lambda: self.mtu_size - 3, s)
                collection.add_characteristic(c)
                for desc in char.descriptors:
                    collection.add_descriptor(BleakGATTDescriptor(desc, desc.handle, bleak_uuid(desc.type), c))
        self.services = collection

    # -- I/O ---------------------------------------------------------------------------------------

    def _require(self) -> Peer:
        if self._peer is None:
            raise BleakError(f"not connected to {self.address}")
        return self._peer

    async def read_gatt_char(self, characteristic: BleakGATTCharacteristic, **kwargs: Any) -> bytearray:
        return bytearray(await self._require().read_value(characteristic.obj))

    async def read_gatt_descriptor(self, descriptor: BleakGATTDescriptor, **kwargs: Any) -> bytearray:
        return bytearray(await self._require().read_value(descriptor.obj))

    async def write_gatt_char(self, characteristic: BleakGATTCharacteristic, data, response: bool) -> None:
        await self._require().write_value(characteristic.obj, bytes(data), with_response=response)

    async def write_gatt_descriptor(self, descriptor: BleakGATTDescriptor, data) -> None:
        await self._require().write_value(descriptor.obj, bytes(data), with_response=True)

    async def start_notify(self, characteristic: BleakGATTCharacteristic, callback: NotifyCallback,
                           **kwargs: Any) -> None:
        def deliver(value: bytes) -> None:
            callback(bytearray(value))
        self._subscribers[characteristic.handle] = deliver  # kept: stop_notify needs the same callable
        await self._require().subscribe(characteristic.obj, deliver)

    async def stop_notify(self, characteristic: BleakGATTCharacteristic) -> None:
        deliver = self._subscribers.pop(characteristic.handle, None)
        if deliver is not None:
            await self._require().unsubscribe(characteristic.obj, deliver)
