"""The bytes a Pebble puts on the wire, written for the emulator alone, as the firmware builds them:
nanopb's SensorData/SensorConfig/BinPackage/ConfirmPackage (tag order, packed IMU arrays, the
temperature as uint32 or sint32 by firmware), the exact preimages it signs, and G1's JSON printed
as cJSON does with nibble-swapped hex.

The schema comes from the shared ``pebble.proto`` through the emulator's own generated module
(``pebble_pb2`` here; see its generator, gateway/codec/generate.py). The encoding rules are this
module's; the gateway's decoder is separate code, and a test checks that the two agree on every
firmware profile. See docs/pebble-wire.md.
"""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass

from hardware.errors import EmulatorError
from hardware.pebble import pebble_pb2 as pb

NO_FIX = 2_000_000_000  # SensorData latitude/longitude without a GPS fix
DATA, CONFIG = 0, 1  # BinPackage.type


def u32be(value: int) -> bytes:
    return struct.pack(">I", value)


def zigzag(value: int) -> int:
    """sint32's varint form of a signed 32-bit value."""
    return ((value << 1) ^ (value >> 31)) & 0xFFFFFFFF


@dataclass(frozen=True)
class SensorData:
    """A reading as the firmware holds it: scaled integers, None for a channel not sent."""

    snr: int | None = None
    vbat: int | None = None
    latitude: int | None = None
    longitude: int | None = None
    gas_resistance: int | None = None
    temperature: int | None = None  # signed centi-degrees; on the wire per temperature_encoding
    pressure: int | None = None
    humidity: int | None = None
    light: int | None = None
    temperature2: int | None = None  # signed centi-degrees; on the wire as two's complement
    gyroscope: tuple[int, int, int] = (0, 0, 0)
    accelerometer: tuple[int, int, int] = (0, 0, 0)
    random: str = ""
    temperature_encoding: str = "sint32"  # "uint32" up to Riverrock 1.0.9


_PLAIN_FIELDS = (("snr", "snr"), ("vbat", "vbat"), ("latitude", "latitude"), ("longitude", "longitude"),
                 ("gas_resistance", "gasResistance"), ("pressure", "pressure"), ("humidity", "humidity"),
                 ("light", "light"))


def encode_sensor_data(s: SensorData) -> bytes:
    """SensorData as nanopb writes it: the fields that are set, in tag order; field 6 is the raw
    varint of a uint32 or a sint32 (the .proto declares uint32 so both can be written)."""
    m = pb.SensorData()
    for attr, name in _PLAIN_FIELDS:
        value = getattr(s, attr)
        if value is not None:
            setattr(m, name, value)
    if s.temperature is not None:
        m.temperature = s.temperature & 0xFFFFFFFF if s.temperature_encoding == "uint32" else zigzag(s.temperature)
    if s.temperature2 is not None:
        m.temperature2 = s.temperature2 & 0xFFFFFFFF
    m.gyroscope.extend(s.gyroscope)  # packed = true in the .proto, as nanopb packs numeric arrays
    m.accelerometer.extend(s.accelerometer)
    m.random = s.random
    return m.SerializeToString()


def encode_sensor_config(*, data_channel: int, upload_period: int, firmware: str) -> bytes:
    """The SensorConfig of packDevConf(): every field set, beep 1000, deviceConfigurable false."""
    return pb.SensorConfig(bulkUpload=0, dataChannel=data_channel, uploadPeriod=upload_period,
                           bulkUploadSamplingCnt=0, bulkUploadSamplingFreq=0, beep=1000, firmware=firmware,
                           deviceConfigurable=False).SerializeToString()


def package_preimage(type_: int, data: bytes, timestamp: int) -> bytes:
    """The bytes a BinPackage's signature covers: u32be(type) || data || u32be(timestamp)."""
    return u32be(type_) + data + u32be(timestamp)


def encode_binpackage(type_: int, data: bytes, timestamp: int, signature: bytes) -> bytes:
    return pb.BinPackage(type=type_, data=data, timestamp=timestamp, signature=signature).SerializeToString()


def confirm_preimage(owner: bytes, timestamp: int) -> bytes:
    """owner (20 raw bytes) || u32be(timestamp): the channel is not signed."""
    return owner + u32be(timestamp)


def encode_confirm(owner: bytes, timestamp: int, signature: bytes, channel: int) -> bytes:
    return pb.ConfirmPackage(owner=owner, timestamp=timestamp, signature=signature,
                             channel=channel).SerializeToString()


def signature_of(payload: bytes) -> bytes:
    """The signature of a BinPackage payload (fault injection)."""
    return pb.BinPackage.FromString(payload).signature


def with_signature(payload: bytes, signature: bytes) -> bytes:
    """A BinPackage payload with another signature (fault injection)."""
    package = pb.BinPackage.FromString(payload)
    package.signature = signature
    return package.SerializeToString()


# -- G1 (JSON) ------------------------------------------------------------------------------------

G1_HEAD, G1_SIGNATURE = b'{"message":', b',"signature":'


def swap_nibbles(text: str) -> str:
    """G1's hex2str() prints each byte with its two nibbles swapped: 0x59 is "95"."""
    if len(text) % 2:
        raise EmulatorError(f"hex text of odd length {len(text)}", reason="bad_hex")
    return "".join(text[i + 1] + text[i] for i in range(0, len(text), 2))


def float32(value: float) -> float:
    """The nearest float32, as the firmware's sensor floats are."""
    return struct.unpack("<f", struct.pack("<f", value))[0]


def cjson_number(value: float | int) -> str:
    """A number as the device's cJSON printed it: integers plainly, anything else with 17
    significant digits (every real signed text shows "%1.17g", e.g. 29.317632675170898)."""
    if isinstance(value, int) or (float(value).is_integer() and abs(value) < 2**31):
        return str(int(value))
    return "%1.17g" % value


def encode_g1_message(fields: dict) -> bytes:
    """The message object as cJSON PrintUnformatted writes it: insertion order, no whitespace.
    These exact bytes are what the device signs."""

    def emit(value) -> str:
        if isinstance(value, str):
            return json.dumps(value)
        if isinstance(value, (list, tuple)):
            return "[" + ",".join(emit(v) for v in value) + "]"
        return cjson_number(value)

    return ("{" + ",".join(f"{json.dumps(k)}:{emit(v)}" for k, v in fields.items()) + "}").encode()


def encode_g1(message_text: bytes, signature: bytes) -> bytes:
    """The envelope {"message":...,"signature":{"r":...,"s":...}}, r and s upper-case, nibble-swapped."""
    r, s = (swap_nibbles(half.hex().upper()).encode() for half in (signature[:32], signature[32:]))
    return G1_HEAD + message_text + G1_SIGNATURE + b'{"r":"' + r + b'","s":"' + s + b'"}}'


def split_g1(payload: bytes) -> tuple[bytes, bytes]:
    """(message text, r||s) of an envelope ``encode_g1`` made (fault injection)."""
    cut = payload.rindex(G1_SIGNATURE)
    halves = json.loads(payload[cut + len(G1_SIGNATURE):-1])
    return payload[len(G1_HEAD):cut], bytes.fromhex(swap_nibbles(halves["r"]) + swap_nibbles(halves["s"]))
