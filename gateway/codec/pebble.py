"""Pebble tracker codec: BinPackage / SensorData / SensorConfig / ConfirmPackage, byte-exact
with the firmware's nanopb output, plus the JSON-era (G1) envelope.

The gateway's decoder (and encoders for tests, fuzzing and benches), from the shared ``.proto``
in ``hardware/pebble``; the emulator has its own encoder, so a bug on one side fails on the other. Values on the wire are the device's integers; ``Reading`` scales them to
units. Reference: docs/pebble-wire.md.
"""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from enum import IntEnum

from google.protobuf.message import DecodeError

from gateway.errors import CodecError
from gateway.codec import pebble_pb2 as pb
from gateway.codec import strict_json

NO_FIX = 2_000_000_000  # latitude/longitude sentinel: no GPS fix
MAX_DATA_BYTES = 500  # BinPackage.data limit in the firmware
SIGNATURE_BYTES = 64

# Data channel mask bits (firmware config.h).
CH_GPS, CH_SNR, CH_VBAT = 0x0001, 0x0002, 0x0004
CH_GAS, CH_TEMP, CH_PRESSURE, CH_HUMIDITY = 0x0010, 0x0020, 0x0040, 0x0080
CH_TEMP2, CH_GYRO, CH_ACCEL, CH_MOTION, CH_LIGHT = 0x0100, 0x0200, 0x0400, 0x0800, 0x1000
ALL_CHANNELS = 0x1FF7


class PackageType(IntEnum):
    DATA = 0
    CONFIG = 1
    STATE = 2


# ---------------------------------------------------------------------------------------------
# Firmware profiles: what a verifier and an emulator must know about a device generation.


@dataclass(frozen=True)
class FirmwareProfile:
    name: str  # registry / CLI name
    firmware: str  # the string the device reports in SensorConfig.firmware
    wire: str  # "protobuf" or "json"
    temperature: str  # "uint32" or "sint32" encoding of SensorData.temperature
    low_s: bool  # the device normalises s to the lower half of the curve order


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
    try:
        return PROFILES[name]
    except KeyError:
        raise CodecError(f"unknown firmware profile {name!r}; known: {', '.join(PROFILES)}",
                         reason="bad_profile") from None


def profile_for_firmware(firmware: str) -> FirmwareProfile | None:
    """Map a reported firmware string ("Riverrock 1.0.12", "Gravel 1.0.3") to its profile."""
    app, _, version = firmware.strip().partition(" ")
    try:
        parts = tuple(int(x) for x in version.lstrip("v").split("."))
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


# ---------------------------------------------------------------------------------------------
# Varint helpers for the temperature field, whose type changed without a new tag.


def zigzag_encode(value: int) -> int:
    return ((value << 1) ^ (value >> 31)) & 0xFFFFFFFF


def zigzag_decode(raw: int) -> int:
    return (raw >> 1) ^ -(raw & 1)


def int32(raw: int) -> int:
    raw &= 0xFFFFFFFF
    return raw - 0x1_0000_0000 if raw & 0x8000_0000 else raw


def temperature_encoding(raw6: int, temperature2: int | None, hint: str | None = None) -> str:
    """Tell uint32 (Riverrock <= 1.0.9) from sint32 (>= 1.0.10) by comparing with field 10."""
    if temperature2 is not None:
        if raw6 == temperature2:
            return "uint32"
        if zigzag_decode(raw6) == int32(temperature2):
            return "sint32"
    return hint or "sint32"


# ---------------------------------------------------------------------------------------------
# SensorData


@dataclass(frozen=True)
class SensorData:
    """A sensor record with the device's raw integers (None = channel not sent)."""

    snr: int | None = None
    vbat: int | None = None
    latitude: int | None = None
    longitude: int | None = None
    gas_resistance: int | None = None
    temperature: int | None = None  # signed centi-degrees, whatever the wire encoding
    pressure: int | None = None
    humidity: int | None = None
    light: int | None = None
    temperature2: int | None = None  # signed centi-degrees
    gyroscope: tuple[int, int, int] = (0, 0, 0)
    accelerometer: tuple[int, int, int] = (0, 0, 0)
    random: str = ""
    temperature_encoding: str = "sint32"

    @property
    def gps_fix(self) -> bool:
        return (self.latitude is not None and self.longitude is not None
                and self.latitude != NO_FIX and self.longitude != NO_FIX)

    def reading(self) -> dict:
        """The record in units (V, degrees, degC, hPa, %RH, lux, ohm); absent channels omitted."""
        out: dict = {}
        if self.snr is not None:
            out["snr"] = self.snr / 100
        if self.vbat is not None:
            out["vbat"] = self.vbat / 100
        if self.latitude is not None:
            out["gps_fix"] = self.gps_fix
            out["latitude"] = self.latitude / 1e7 if self.gps_fix else None
            out["longitude"] = self.longitude / 1e7 if self.gps_fix else None
        for name in ("gas_resistance", "temperature", "pressure", "humidity", "light", "temperature2"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value / 100
        out["gyroscope"] = list(self.gyroscope)
        out["accelerometer"] = list(self.accelerometer)
        out["random"] = self.random
        if self.temperature is not None:
            out["temperature_encoding"] = self.temperature_encoding
        return out


def _triple(values, name: str) -> tuple[int, int, int]:
    values = tuple(values)
    if not values:
        return (0, 0, 0)
    if len(values) != 3:
        raise CodecError(f"{name} has {len(values)} values, expected 3")
    return values  # type: ignore[return-value]


def decode_sensor_data(data: bytes, *, temperature_hint: str | None = None) -> SensorData:
    """Decode SensorData bytes; packed and unpacked IMU arrays are both accepted."""
    try:
        m = pb.SensorData.FromString(data)
    except DecodeError as e:
        raise CodecError(f"SensorData does not parse: {e}") from None
    f = {field.name: value for field, value in m.ListFields()}  # one pass over the set fields
    raw_t2 = f.get("temperature2")
    t2 = int32(raw_t2) if raw_t2 is not None else None
    temperature = encoding = None
    raw6 = f.get("temperature")
    if raw6 is not None:
        encoding = temperature_encoding(raw6, raw_t2, temperature_hint)
        temperature = int32(raw6) if encoding == "uint32" else zigzag_decode(raw6)
    return SensorData(
        snr=f.get("snr"),
        vbat=f.get("vbat"),
        latitude=f.get("latitude"),
        longitude=f.get("longitude"),
        gas_resistance=f.get("gasResistance"),
        temperature=temperature,
        pressure=f.get("pressure"),
        humidity=f.get("humidity"),
        light=f.get("light"),
        temperature2=t2,
        gyroscope=_triple(f.get("gyroscope", ()), "gyroscope"),
        accelerometer=_triple(f.get("accelerometer", ()), "accelerometer"),
        random=f.get("random", ""),
        temperature_encoding=encoding or temperature_hint or "sint32",
    )


def check_sensor_data(data: bytes) -> str:
    """The checks of ``decode_sensor_data`` without the decoding, for the data path: returns the
    nonce (``random``) and raises CodecError on exactly the input that decoding refuses."""
    try:
        m = pb.SensorData.FromString(data)
    except DecodeError as e:
        raise CodecError(f"SensorData does not parse: {e}") from None
    for name in ("gyroscope", "accelerometer"):
        n = len(getattr(m, name))
        if n and n != 3:
            raise CodecError(f"{name} has {n} values, expected 3")
    return m.random


def encode_sensor_data(s: SensorData) -> bytes:
    """Encode as nanopb does: tag order, packed arrays, temperature per ``temperature_encoding``."""
    m = pb.SensorData()
    for attr, name in (("snr", "snr"), ("vbat", "vbat"), ("latitude", "latitude"),
                       ("longitude", "longitude"), ("gas_resistance", "gasResistance"),
                       ("pressure", "pressure"), ("humidity", "humidity"), ("light", "light")):
        value = getattr(s, attr)
        if value is not None:
            setattr(m, name, value)
    if s.temperature is not None:
        m.temperature = (s.temperature & 0xFFFFFFFF if s.temperature_encoding == "uint32"
                         else zigzag_encode(s.temperature))
    if s.temperature2 is not None:
        m.temperature2 = s.temperature2 & 0xFFFFFFFF
    m.gyroscope.extend(s.gyroscope)
    m.accelerometer.extend(s.accelerometer)
    m.random = s.random
    return m.SerializeToString()


# ---------------------------------------------------------------------------------------------
# SensorConfig


@dataclass(frozen=True)
class SensorConfig:
    data_channel: int = ALL_CHANNELS
    upload_period: int = 300
    firmware: str = ""
    bulk_upload: int = 0
    bulk_upload_sampling_cnt: int = 0
    bulk_upload_sampling_freq: int = 0
    beep: int = 1000
    device_configurable: bool = False

    def reading(self) -> dict:
        return {"data_channel": self.data_channel, "upload_period": self.upload_period,
                "firmware": self.firmware, "bulk_upload": self.bulk_upload, "beep": self.beep}


_CONFIG_FIELDS = (("bulk_upload", "bulkUpload"), ("data_channel", "dataChannel"),
                  ("upload_period", "uploadPeriod"), ("bulk_upload_sampling_cnt", "bulkUploadSamplingCnt"),
                  ("bulk_upload_sampling_freq", "bulkUploadSamplingFreq"), ("beep", "beep"),
                  ("firmware", "firmware"), ("device_configurable", "deviceConfigurable"))


def decode_sensor_config(data: bytes) -> SensorConfig:
    try:
        m = pb.SensorConfig.FromString(data)
    except DecodeError as e:
        raise CodecError(f"SensorConfig does not parse: {e}") from None
    return SensorConfig(**{attr: getattr(m, name) for attr, name in _CONFIG_FIELDS})


def encode_sensor_config(c: SensorConfig) -> bytes:
    return pb.SensorConfig(**{name: getattr(c, attr) for attr, name in _CONFIG_FIELDS}).SerializeToString()


# ---------------------------------------------------------------------------------------------
# Envelopes


def _u32be(value: int) -> bytes:
    return struct.pack(">I", value)


@dataclass(frozen=True)
class BinPackage:
    type: int
    data: bytes
    timestamp: int
    signature: bytes

    @property
    def preimage(self) -> bytes:
        """The exact signed bytes: u32be(type) || data || u32be(timestamp)."""
        return _u32be(self.type) + self.data + _u32be(self.timestamp)


def decode_binpackage(payload: bytes) -> BinPackage:
    try:
        m = pb.BinPackage.FromString(payload)
    except DecodeError as e:
        raise CodecError(f"BinPackage does not parse ({len(payload)} bytes): {e}") from None
    if len(m.signature) != SIGNATURE_BYTES:
        raise CodecError(f"signature is {len(m.signature)} bytes, expected {SIGNATURE_BYTES}")
    if len(m.data) > MAX_DATA_BYTES:
        raise CodecError(f"data is {len(m.data)} bytes, the firmware limit is {MAX_DATA_BYTES}")
    return BinPackage(m.type, m.data, m.timestamp, m.signature)


def encode_binpackage(p: BinPackage) -> bytes:
    return pb.BinPackage(type=p.type, data=p.data, timestamp=p.timestamp,
                         signature=p.signature).SerializeToString()


@dataclass(frozen=True)
class ConfirmPackage:
    owner: bytes  # 20 bytes
    timestamp: int
    signature: bytes
    channel: int

    @property
    def preimage(self) -> bytes:
        """owner || u32be(timestamp); the channel is not signed."""
        return self.owner + _u32be(self.timestamp)

    @property
    def owner_address(self) -> str:
        return "0x" + self.owner.hex()


def decode_confirm(payload: bytes) -> ConfirmPackage:
    try:
        m = pb.ConfirmPackage.FromString(payload)
    except DecodeError as e:
        raise CodecError(f"ConfirmPackage does not parse ({len(payload)} bytes): {e}") from None
    if len(m.owner) != 20:
        raise CodecError(f"owner is {len(m.owner)} bytes, expected 20")
    if len(m.signature) != SIGNATURE_BYTES:
        raise CodecError(f"signature is {len(m.signature)} bytes, expected {SIGNATURE_BYTES}")
    return ConfirmPackage(m.owner, m.timestamp, m.signature, m.channel)


def encode_confirm(c: ConfirmPackage) -> bytes:
    return pb.ConfirmPackage(owner=c.owner, timestamp=c.timestamp, signature=c.signature,
                             channel=c.channel).SerializeToString()


# ---------------------------------------------------------------------------------------------
# JSON era (G1): {"message":{...},"signature":{"r":..,"s":..}}; the signed bytes are the exact
# text of the message object; r, s and eccPubkey are upper-case hex with swapped nibbles.

G1_KEYS = ("snr", "vbat", "latitude", "longitude", "gasResistance", "temperature", "pressure",
           "humidity", "light", "temperature2", "gyroscope", "accelerometer")


def swap_nibbles(text: str) -> str:
    """Undo (or apply) the G1 firmware's hex2str nibble swap: "95" <-> "59"."""
    if len(text) % 2:
        raise CodecError(f"hex text of odd length {len(text)}")
    return "".join(text[i + 1] + text[i] for i in range(0, len(text), 2))


_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")


def _g1_hex(text: object, name: str, size: int) -> bytes:
    if not isinstance(text, str):
        raise CodecError(f"G1 {name} is not a string")
    if len(text) != 2 * size:
        raise CodecError(f"G1 {name} is {len(text)} hex digits, expected {2 * size}")
    if not all(c in _HEX_DIGITS for c in text):  # bytes.fromhex would skip spaces
        raise CodecError(f"G1 {name} is not hex")
    return bytes.fromhex(swap_nibbles(text))


@dataclass(frozen=True)
class G1Message:
    text: bytes  # exact signed bytes (the message object)
    fields: dict = field(hash=False)
    signature: bytes  # 64 bytes r||s, nibbles restored
    public_key: bytes | None  # 65 bytes 04||X||Y when the device included eccPubkey
    timestamp: int
    random: str

    @property
    def preimage(self) -> bytes:
        return self.text

    def reading(self) -> dict:
        """G1 values are already in units; vbat is in mV; 20000 or "null" means no GPS fix."""
        f = self.fields
        out: dict = {}
        if "snr" in f:
            out["snr"] = f["snr"]
        if "vbat" in f:
            out["vbat"] = f["vbat"] / 1000
        if "latitude" in f:
            fix = isinstance(f["latitude"], (int, float)) and abs(f["latitude"]) <= 90
            out["gps_fix"] = fix
            out["latitude"] = f["latitude"] if fix else None
            out["longitude"] = f.get("longitude") if fix else None
        for src, dst in (("gasResistance", "gas_resistance"), ("temperature", "temperature"),
                         ("pressure", "pressure"), ("humidity", "humidity"), ("light", "light"),
                         ("temperature2", "temperature2"), ("gyroscope", "gyroscope"),
                         ("accelerometer", "accelerometer")):
            if src in f:
                out[dst] = f[src]
        out["random"] = self.random
        return out


# Python's JSON reader takes NaN, Infinity and 1e999 (as inf); the signed text may hold neither.
_decoder = strict_json.DECODER
G1_NUMBERS = ("snr", "vbat", "gasResistance", "temperature", "pressure", "humidity", "light", "temperature2",
              "SNR", "VBAT", "gas_resistance")
G1_MAX_ABS = 1e12  # far beyond any sensor; keeps every value printable and comparable
UINT32_MAX = 0xFFFFFFFF


def _g1_number(value: object, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise CodecError(f"G1 {name} is {type(value).__name__}, expected a number")
    if abs(value) > G1_MAX_ABS:
        raise CodecError(f"G1 {name} is out of range")


def _g1_timestamp(value: object) -> int:
    """A G1 timestamp is a decimal string (the firmware's) or an integer, in u32 seconds."""
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 10:
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise CodecError("G1 message has no integer timestamp")
    if not 0 <= value <= UINT32_MAX:
        raise CodecError(f"G1 timestamp {value} is outside 0..2^32-1")
    return value


def _g1_check_fields(message: dict) -> None:
    """Refuse values no G1 firmware prints, so nothing downstream meets a surprise type."""
    for name in G1_NUMBERS:
        if name in message:
            _g1_number(message[name], name)
    for name in ("latitude", "longitude"):
        if name in message and message[name] != "null":
            _g1_number(message[name], name)
    for name in ("gyroscope", "accelerometer"):
        if name in message:
            values = message[name]
            if not isinstance(values, list) or len(values) != 3:
                raise CodecError(f"G1 {name} is not a list of 3 numbers")
            for v in values:
                _g1_number(v, name)
    if not isinstance(message.get("random", ""), str):
        raise CodecError("G1 random is not a string")


def decode_g1(payload: bytes) -> G1Message:
    """Parse a G1 envelope keeping the message object's exact text for verification."""
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise CodecError("G1 payload is not UTF-8 text") from None
    envelope = strict_json.loads(text, "G1 payload")
    if not isinstance(envelope, dict) or not isinstance(envelope.get("message"), dict):
        raise CodecError("G1 payload has no message object")
    sig = envelope.get("signature")
    if not isinstance(sig, dict):
        raise CodecError("G1 payload has no signature object")
    # The signed bytes are the message object's text exactly as sent: find it, never re-serialise.
    index = text.find(":", text.find('"message"')) + 1
    while index < len(text) and text[index] in " \t\r\n":
        index += 1
    try:
        message, end = _decoder.raw_decode(text, index)
    except (ValueError, RecursionError):
        message, end = None, index
    if message != envelope["message"]:
        raise CodecError("G1 message object could not be located in the payload text")
    raw = text[index:end].encode("utf-8")
    timestamp = _g1_timestamp(message.get("timestamp"))
    _g1_check_fields(message)
    pub = message.get("eccPubkey", message.get("ecc_pubkey"))
    public_key = b"\x04" + _g1_hex(pub, "eccPubkey", 64) if pub is not None else None
    signature = _g1_hex(sig.get("r"), "r", 32) + _g1_hex(sig.get("s"), "s", 32)
    return G1Message(raw, message, signature, public_key, timestamp, message.get("random", ""))


def cjson_number(value: float | int) -> str:
    """Print a number as the G1 firmware's cJSON did: integers plainly, other values with 17
    significant digits. (cJSON tries "%1.15g" first, but the device's sscanf never reads it back
    exactly: every real signed text shows "%1.17g", e.g. 29.317632675170898.)"""
    if isinstance(value, int) or (float(value).is_integer() and abs(value) < 2**31):
        return str(int(value))
    return "%1.17g" % value


def float32(value: float) -> float:
    """Round to the nearest float32, as the firmware's sensor floats are."""
    return struct.unpack("<f", struct.pack("<f", value))[0]


def encode_g1_message(fields: dict) -> bytes:
    """Serialise a message object as cJSON does: insertion order, no whitespace."""

    def emit(value) -> str:
        if isinstance(value, str):
            return json.dumps(value)
        if isinstance(value, (list, tuple)):
            return "[" + ",".join(emit(v) for v in value) + "]"
        return cjson_number(value)

    return ("{" + ",".join(f"{json.dumps(k)}:{emit(v)}" for k, v in fields.items()) + "}").encode()


def encode_g1(message_text: bytes, signature: bytes) -> bytes:
    r, s = signature[:32].hex().upper(), signature[32:].hex().upper()
    return (b'{"message":' + message_text + b',"signature":{"r":"' + swap_nibbles(r).encode()
            + b'","s":"' + swap_nibbles(s).encode() + b'"}}')
