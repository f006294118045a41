# The BLE side of the firmware, for boards with the `bluetooth` module (ESP32, Pico W): a GATT
# peripheral offering the w3gate sensor service (device_fw/gatt.py). Frames go out as DATA
# notifications cut to the connection's MTU; CONFIG writes are reassembled by the app's
# deframer (this object is one of its links); an unprovisioned board takes its identity once
# over PROVISION.
#
# Written against MicroPython's documented `bluetooth` API (low-level BLE, IRQ events below).
# It has not run on hardware here: the unix port has no `bluetooth`, and the bench's BLE
# sensors are emulated with bumble (hardware/ble_sensor/), which speaks the same service.

import json
import struct

import bluetooth
from micropython import const

from device_fw import frame, gatt, hal

_IRQ_CENTRAL_CONNECT = const(1)
_IRQ_CENTRAL_DISCONNECT = const(2)
_IRQ_GATTS_WRITE = const(3)
_IRQ_MTU_EXCHANGED = const(21)

_FLAG_READ = const(0x0002)
_FLAG_WRITE_NO_RESPONSE = const(0x0004)
_FLAG_WRITE = const(0x0008)
_FLAG_NOTIFY = const(0x0010)

_ADV_TYPE_FLAGS = const(0x01)
_ADV_TYPE_NAME = const(0x09)
_ADV_TYPE_UUID128_COMPLETE = const(0x07)


def advertising_payload(name, service_uuid_bytes):
    # flags (LE general discoverable, no BR/EDR) and the 128-bit service in the advertisement,
    # the name in the scan response (31 bytes each are not enough for both)
    adv = bytes((2, _ADV_TYPE_FLAGS, 0x06)) + bytes((len(service_uuid_bytes) + 1, _ADV_TYPE_UUID128_COMPLETE)) + service_uuid_bytes
    encoded = name.encode()[:29]
    resp = bytes((len(encoded) + 1, _ADV_TYPE_NAME)) + encoded
    return adv, resp


def _uuid_le(text):
    # the 16 bytes of a UUID string, little-endian as advertising data carries them
    raw = bytes.fromhex(text.replace("-", ""))
    return bytes(reversed(raw))


class Peripheral:
    def __init__(self, name):
        self.name = name
        self.ble = bluetooth.BLE()
        self.ble.active(True)
        self.ble.irq(self._irq)
        service = (bluetooth.UUID(gatt.SERVICE), (
            (bluetooth.UUID(gatt.DATA), _FLAG_READ | _FLAG_NOTIFY),
            (bluetooth.UUID(gatt.CONFIG), _FLAG_WRITE | _FLAG_WRITE_NO_RESPONSE),
            (bluetooth.UUID(gatt.PROVISION), _FLAG_WRITE),
        ))
        ((self.h_data, self.h_config, self.h_provision),) = self.ble.gatts_register_services((service,))
        for handle in (self.h_config, self.h_provision):
            self.ble.gatts_set_buffer(handle, 256, True)  # append: chunks queue up between reads
        self.connections = {}  # conn handle -> mtu
        self.incoming = b""
        self.provision = frame.Deframer()
        self.identity = None
        self._adv, self._resp = advertising_payload(name, _uuid_le(gatt.SERVICE))
        self.advertise()

    def advertise(self):
        self.ble.gap_advertise(250000, adv_data=self._adv, resp_data=self._resp)

    def _irq(self, event, data):
        if event == _IRQ_CENTRAL_CONNECT:
            conn, _, _ = data
            self.connections[conn] = gatt.DEFAULT_MTU
        elif event == _IRQ_CENTRAL_DISCONNECT:
            conn, _, _ = data
            self.connections.pop(conn, None)
            self.advertise()
        elif event == _IRQ_MTU_EXCHANGED:
            conn, mtu = data
            self.connections[conn] = mtu
        elif event == _IRQ_GATTS_WRITE:
            conn, handle = data
            value = self.ble.gatts_read(handle)
            self.ble.gatts_write(handle, b"")
            if handle == self.h_config:
                self.incoming += value
            elif handle == self.h_provision and self.identity is None:
                for blob in self.provision.feed(value):
                    try:
                        self.identity = json.loads(frame.cobs_decode(blob))
                    except (ValueError, frame.FrameError):
                        pass

    # the app's link interface
    def read(self, limit=256):
        data, self.incoming = self.incoming[:limit], self.incoming[limit:]
        return data

    def write(self, data):
        for conn, mtu in list(self.connections.items()):
            for chunk in gatt.chunks(data, mtu):
                self.ble.gatts_notify(conn, self.h_data, chunk)

    # provisioning
    def wait_for_identity(self, device, path):
        # advertise until a gateway writes an identity, then keep it in device.json
        while self.identity is None:
            hal.sleep_ms(50)
        ident = self.identity
        for key in ("id", "key", "name", "period_ms", "sensors"):
            if key in ident:
                device[key] = ident[key]
        hal.save_json(path, device)
        try:
            import os
            os.remove("state.json")  # a new identity starts a new seq
        except OSError:
            pass
        return device

    def forget(self, path):
        device = hal.load_json(path, {}) or {}
        device.pop("id", None)
        device.pop("key", None)
        hal.save_json(path, device)
        self.identity = None
