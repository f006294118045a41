"""A Bumble backend for bleak: BLE through a Bumble host stack, for gateways without BlueZ.

bleak accepts ``backend=`` on ``BleakScanner`` and ``BleakClient`` but ships no Bumble backend.
This package is one, in bleak's own split (``host`` / ``scanner`` / ``client``). The host runs
over any Bumble HCI transport: a USB dongle on a real gateway (``usb:0``), a UART controller
(``serial:/dev/ttyAMA0``), or a virtual controller on a bench (``tcp-client:127.0.0.1:PORT``,
hardware/ble_sensor/radio.py). Gateway code stays on bleak's API:

    use_transport("usb:0")
    async with BleakClient(device, backend=BumbleClient) as client: ...
"""
from gateway.ble.client import BumbleClient
from gateway.ble.host import BleError, close_host, use_transport
from gateway.ble.scanner import BumbleScanner

__all__ = ["BumbleClient", "BumbleScanner", "BleError", "use_transport", "close_host"]
