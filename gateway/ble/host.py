"""The one Bumble host of this process, opened on first use over the configured HCI transport."""
from __future__ import annotations

import asyncio
import os

from bumble.device import Device
from bumble.hci import Address
from bumble.transport import open_transport

from gateway.errors import W3gateError

ENV_TRANSPORT = "W3GATE_BLE_TRANSPORT"


class BleError(W3gateError):
    reason = "ble"


_transport_spec: str | None = None
_state: dict = {}  # "device", "transport", "loop"
_lock: asyncio.Lock | None = None


def use_transport(spec: str) -> None:
    """The HCI transport the host opens (else $W3GATE_BLE_TRANSPORT)."""
    global _transport_spec
    _transport_spec = spec


def _lock_for_loop() -> asyncio.Lock:
    global _lock
    loop = asyncio.get_running_loop()
    if _lock is None or _state.get("lock_loop") is not loop:
        _lock = asyncio.Lock()
        _state["lock_loop"] = loop
    return _lock


async def get_device() -> Device:
    """The powered-on host device; opens the transport the first time (per event loop)."""
    async with _lock_for_loop():
        loop = asyncio.get_running_loop()
        if _state.get("device") is not None and _state.get("loop") is loop:
            return _state["device"]
        spec = _transport_spec or os.environ.get(ENV_TRANSPORT)
        if not spec:
            raise BleError(f"no Bumble HCI transport: set [ble] transport or ${ENV_TRANSPORT} "
                           "(e.g. usb:0, or tcp-client:127.0.0.1:PORT for a virtual radio)", reason="no_transport")
        try:
            transport = await open_transport(spec)
        except Exception as e:  # noqa: BLE001 - bumble raises many kinds; the reason goes up typed
            raise BleError(f"cannot open HCI transport {spec!r}: {e}", reason="transport") from None
        device = Device.with_hci("w3gate", Address.generate_static_address(), transport.source, transport.sink)
        try:
            await device.power_on()
        except Exception as e:  # noqa: BLE001
            await transport.close()
            raise BleError(f"the controller on {spec!r} did not power on: {e}", reason="power_on") from None
        _state.update(device=device, transport=transport, loop=loop, connect_lock=asyncio.Lock())
        return device


def connect_lock() -> asyncio.Lock:
    """One LE connection attempt at a time: a controller takes no second pending connection."""
    return _state["connect_lock"]


async def close_host() -> None:
    """Release the transport (tests, and a gateway shutting down)."""
    transport = _state.pop("transport", None)
    _state.pop("device", None)
    if transport is not None:
        await transport.close()
