"""Backend → Pebble downlinks (``backend/<IMEI>/status|config|firmware``).

The firmware's MQTT buffers are 256 bytes and a larger message makes the device disconnect,
so every builder checks the size. Config keys and value types follow Riverrock's parser:
``upload_period`` is a string, ``data_channel`` a number (docs/pebble-wire.md, "Configuration
downlink"). The topics are the wire format shared with the emulator (hardware/pebble/topics.py).
"""
from __future__ import annotations

import json

from gateway.errors import W3gateError
from hardware.pebble.topics import CONFIG_TOPIC, FIRMWARE_TOPIC, STATUS_TOPIC  # noqa: F401 - callers use these

MAX_DOWNLINK = 256


class DownlinkError(W3gateError):
    reason = "downlink"


def _encode(payload: dict) -> bytes:
    raw = json.dumps(payload, separators=(",", ":")).encode()
    if len(raw) > MAX_DOWNLINK:
        raise DownlinkError(f"{len(raw)} bytes; the Pebble disconnects on downlinks over {MAX_DOWNLINK}",
                            reason="downlink_too_large")
    return raw


def status(code: int, proposer: str | None = None, *, firmware: str | None = None,
           uri: str | None = None, version: str | None = None) -> bytes:
    """Answer to ``device/<IMEI>/query``: 0 created, 1 proposal (with proposer), 2 confirmed."""
    payload: dict = {"status": code}
    if proposer:
        payload["proposer"] = proposer
    for key, value in (("firmware", firmware), ("uri", uri), ("version", version)):
        if value:
            payload[key] = value
    return _encode(payload)


def config(*, upload_period: int | None = None, data_channel: int | None = None,
           precise_gps: bool | None = None, app_version: str | None = None) -> bytes:
    """A Riverrock configuration; values are range-checked here rather than clamped on the device."""
    payload: dict = {"appName": "Riverrock"}
    if app_version:
        payload["appVersion"] = app_version
    if upload_period is not None:
        if not 10 <= upload_period <= 86400:
            raise DownlinkError(f"upload period {upload_period} s is outside 10..86400", reason="bad_config")
        payload["upload_period"] = str(upload_period)
    if data_channel is not None:
        if not 0 <= data_channel <= 8183:
            raise DownlinkError(f"data channel mask {data_channel} is outside 0..8183", reason="bad_config")
        payload["data_channel"] = data_channel
    if precise_gps is not None:
        payload["preciseGPS"] = precise_gps
    return _encode(payload)


def firmware(app: str, version: str, uri: str) -> bytes:
    if not uri.startswith("https://"):
        raise DownlinkError("the Pebble downloads firmware over HTTPS only", reason="bad_config")
    return _encode({"firmware": app, "uri": uri, "version": version})
