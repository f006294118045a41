"""Pebble MQTT topics: a wire format, shared by the gateway and the emulator.

Like ``pebble.proto`` beside it (and ``device_fw/frame.py`` for legacy sensors), this is what the
firmware defines and both sides must agree on, so it lives with the device side and both import
it; nothing else crosses between the gateway and the emulator. Patterns take the IMEI with
``.format(imei)``. See docs/pebble-wire.md ("Topics").
"""
from __future__ import annotations

# device -> backend
DATA_TOPIC = "device/{}/data"  # BinPackage (DATA every period, CONFIG once after registration)
G1_DATA_TOPIC = "device/nrf-{}/data"  # G1 firmware's JSON envelope
CONFIRM_TOPIC = "device/{}/confirm"  # ConfirmPackage (owner binding)
QUERY_TOPIC = "device/{}/query"  # empty payload, polled while registering
# backend -> device (the firmware subscribes with QoS 1; at most 256 bytes each)
STATUS_TOPIC = "backend/{}/status"
CONFIG_TOPIC = "backend/{}/config"
FIRMWARE_TOPIC = "backend/{}/firmware"

G1_PREFIX = "nrf-"  # G1 puts it before the IMEI in its topic
DEVICE_SUBSCRIPTIONS = (DATA_TOPIC.format("+"), CONFIRM_TOPIC.format("+"), QUERY_TOPIC.format("+"))
