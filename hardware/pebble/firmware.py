"""What the emulator knows of the Pebble firmware generations it imitates: how each one encodes
and signs (its profile), and the data channel mask of its config.h.

The gateway keeps its own profile table for verification (gateway/codec/pebble.py); the two are
written separately on purpose, and a test checks that they name the same generations the same way.
See docs/pebble-wire.md ("Firmware generations", "Data channel mask").
"""
from __future__ import annotations

from dataclasses import dataclass

from hardware.errors import EmulatorError

# Data channel mask bits (the firmware's config.h); 0x0008 is unused.
CH_GPS, CH_SNR, CH_VBAT = 0x0001, 0x0002, 0x0004
CH_GAS, CH_TEMP, CH_PRESSURE, CH_HUMIDITY = 0x0010, 0x0020, 0x0040, 0x0080
CH_TEMP2, CH_GYRO, CH_ACCEL, CH_MOTION, CH_LIGHT = 0x0100, 0x0200, 0x0400, 0x0800, 0x1000
ALL_CHANNELS = 0x1FF7  # 8183: the default, and the largest mask the firmware accepts


@dataclass(frozen=True)
class FirmwareProfile:
    name: str  # fleet / CLI name
    firmware: str  # what the device reports in SensorConfig.firmware
    wire: str  # "protobuf" or "json"
    temperature: str  # SensorData.temperature as "uint32" or "sint32" ("float" in G1 JSON)
    low_s: bool  # the firmware normalises s to the lower half of the curve order


PROFILES: dict[str, FirmwareProfile] = {
    p.name: p
    for p in (
        FirmwareProfile("g1", "pebbleGo", "json", "float", False),
        FirmwareProfile("riverrock-1.0.9", "Riverrock 1.0.9", "protobuf", "uint32", True),
        FirmwareProfile("riverrock-1.0.10", "Riverrock 1.0.10", "protobuf", "sint32", True),
        FirmwareProfile("riverrock-1.0.14", "Riverrock 1.0.14", "protobuf", "sint32", False),
    )
}
DEFAULT_PROFILE = "riverrock-1.0.14"


def profile(name: str) -> FirmwareProfile:
    """The profile called ``name``; an EmulatorError names the known ones otherwise."""
    try:
        return PROFILES[name]
    except KeyError:
        raise EmulatorError(f"unknown firmware profile {name!r}; known: {', '.join(PROFILES)}",
                            reason="bad_profile") from None


def profile_for_firmware(firmware: str) -> FirmwareProfile | None:
    """The profile a firmware string ("Riverrock 1.0.12", "Gravel 1.0.3") behaves as, after an
    update: sint32 temperature from Riverrock 1.0.10, high-S signatures from 1.0.14."""
    app, _, version = firmware.strip().partition(" ")
    try:
        parts = tuple(int(x) for x in version.lstrip("vV").split("."))
    except ValueError:
        return None
    if app.lower() == "gravel":
        return PROFILES["riverrock-1.0.9"]  # same encoding: uint32 temperature, low-S
    if app.lower() != "riverrock":
        return None
    if parts >= (1, 0, 14):
        return PROFILES["riverrock-1.0.14"]
    if parts >= (1, 0, 10):
        return PROFILES["riverrock-1.0.10"]
    return PROFILES["riverrock-1.0.9"]
