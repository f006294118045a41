# The legacy-device frame: what the firmware sends over UART (and BLE) and the gateway checks.
# One source for both sides: this module runs under MicroPython on the boards and under CPython
# in the gateway (gateway/ingest/serial.py), so it uses only what both have (no typing,
# dataclasses or hmac module; hashlib.sha256, binascii.crc32 and struct are everywhere).
#
# wire   0x00 COBS(frame) 0x00   0x00 never occurs inside a frame, so a reader resyncs at the next
#                                0x00; the leading one cuts off whatever noise came before
# frame  ver u8 = 1 | type u8 | device id 8 bytes | seq u32 | len u16 | payload | crc32 u32 | mac
#        (integers big-endian; crc32 and mac cover ver..payload; mac = HMAC-SHA256(key)[:16])
# types  1 reading (payload: compact JSON), 2 hello (payload: JSON firmware info),
#        3 config ack, 4 command ack, 0x81 config and 0x82 command (gateway -> device, payload
#        JSON, also authenticated)
#
# payloads (compact JSON; unknown keys are ignored by both sides)
#   READING     {"temperature": 21.53, "humidity": 45.2, "pressure": 1013.25, "up": <uptime s>}
#               (a key per value the enabled sensors measured; units degC, %RH, hPa)
#   HELLO       {"fw": "w3gate-fw 0.1", "board": <sys.platform>, "sensors": [available],
#                "period_ms": n, "heap_free": bytes, "heap_used": bytes, "boot": <boot count>}
#               sent at boot (and on each BLE connection); the gateway answers with CONFIG
#   CONFIG      {"period_ms": n (>= 100), "sensors": [enabled], "repl": true (optional: stop the
#                firmware and return to the REPL, so a paired board can be paired again)};
#               keys left out keep their value
#   CONFIG_ACK  the settings now in force {"period_ms", "sensors", "config_seq": <the CONFIG's seq>}
#               or {"error": "<reason>", "config_seq": n}
#   COMMAND     {"relay": 0 | 1}: outputs to set now (sent for a project's applet, reacting to a
#               contract log, say: docs/applets.md); an unknown output, a board without it or a bad
#               value changes nothing and is answered with an error
#   COMMAND_ACK the outputs' state now {"relay": 0 | 1, "command_seq": <the COMMAND's seq>}, or
#               {"error": "<reason>", "command_seq": n}; the last applied COMMAND received again
#               (a resend whose ACK was lost) is answered with the state and "repeat": true
#   READING also carries the outputs' state ("relay": 0 | 1) once a COMMAND has set one
# seq    a device's frames carry a u32 that only grows, across reboots too: the firmware keeps a
#        reservation in flash and writes it once per block of seqs. The gateway refuses a seq it
#        has seen (replay). CONFIG frames carry the gateway's own growing counter for the device,
#        and the device ignores one whose seq is not above the last it applied; COMMAND frames
#        likewise, with a counter of their own (a command played back is never applied twice).
#
# Why both a CRC and a MAC: line noise (bad CRC) is counted apart from a wrong key or a forgery
# (good CRC, bad MAC). Why a MAC and not a signature: MicroPython has SHA-256 but no ECDSA; the
# key is provisioned at flash time and the gateway attests what it verified with its own key.

import binascii
import hashlib
import struct

VERSION = 1
READING = 1
HELLO = 2
CONFIG_ACK = 3
COMMAND_ACK = 4
CONFIG = 0x81
COMMAND = 0x82
HEADER = 16  # ver, type, device id, seq, len
MAC_BYTES = 16
MAX_PAYLOAD = 512
MAX_FRAME = HEADER + MAX_PAYLOAD + 4 + MAC_BYTES


class FrameError(Exception):
    # reason: "corrupt" (framing, length or CRC), "unsupported" (version), "unknown_device",
    # "bad_mac" (intact, but not made with the device's key)
    def __init__(self, reason, detail=""):
        super().__init__(reason + (": " + detail if detail else ""))
        self.reason = reason
        self.detail = detail


def hmac_sha256(key, message):
    # RFC 2104 with SHA-256 (block size 64); MicroPython has no hmac module
    if len(key) > 64:
        key = hashlib.sha256(key).digest()
    key = key + bytes(64 - len(key))
    inner = hashlib.sha256(bytes(b ^ 0x36 for b in key) + message).digest()
    return hashlib.sha256(bytes(b ^ 0x5C for b in key) + inner).digest()


def prepared_hmac(key):
    # hmac_sha256 with the key's pads worked out once: a board signs every frame with one key
    if len(key) > 64:
        key = hashlib.sha256(key).digest()
    key = key + bytes(64 - len(key))
    ipad = bytes(b ^ 0x36 for b in key)
    opad = bytes(b ^ 0x5C for b in key)

    def mac(_key, message):
        return hashlib.sha256(opad + hashlib.sha256(ipad + message).digest()).digest()
    return mac


def cobs_encode(data):
    out = bytearray()
    block = bytearray()
    for b in data:
        if b == 0:
            out.append(len(block) + 1)
            out += block
            block = bytearray()
        else:
            block.append(b)
            if len(block) == 254:
                out.append(255)
                out += block
                block = bytearray()
    out.append(len(block) + 1)
    out += block
    return bytes(out)


def cobs_decode(data):
    out = bytearray()
    i = 0
    n = len(data)
    while i < n:
        code = data[i]
        if code == 0:
            raise FrameError("corrupt", "zero byte inside a COBS frame")
        end = i + code
        if end > n:
            raise FrameError("corrupt", "COBS block runs past the frame")
        out += data[i + 1:end]
        i = end
        if code != 255 and i < n:
            out.append(0)
    return bytes(out)


def encode(frame_type, device_id, seq, payload, key, mac=hmac_sha256):
    # The wire bytes of one frame, delimiters included
    if len(device_id) != 8:
        raise ValueError("a device id is 8 bytes")
    if len(payload) > MAX_PAYLOAD:
        raise ValueError("payload over %d bytes" % MAX_PAYLOAD)
    body = struct.pack(">BB8sIH", VERSION, frame_type, device_id, seq & 0xFFFFFFFF, len(payload)) + payload
    crc = binascii.crc32(body) & 0xFFFFFFFF
    return b"\x00" + cobs_encode(body + struct.pack(">I", crc) + mac(key, body)[:MAC_BYTES]) + b"\x00"


def decode(raw, key_of, mac=hmac_sha256):
    # (type, device id, seq, payload) of one frame (COBS-encoded, delimiter removed);
    # key_of(device_id) -> key or None. Raises FrameError. The gateway passes a faster ``mac``
    # (CPython's hmac, in C) with the same result.
    return decode_frame(cobs_decode(raw), key_of, mac)


def decode_frame(frame, key_of, mac=hmac_sha256):
    # decode() of a frame already taken out of its COBS encoding (as the gateway stores it)
    if len(frame) < HEADER + 4 + MAC_BYTES:
        raise FrameError("corrupt", "frame of %d bytes is too short" % len(frame))
    version, frame_type, device_id, seq, length = struct.unpack(">BB8sIH", frame[:HEADER])
    if len(frame) != HEADER + length + 4 + MAC_BYTES:
        raise FrameError("corrupt", "length field says %d payload bytes, frame has %d"
                         % (length, len(frame) - HEADER - 4 - MAC_BYTES))
    body = frame[:HEADER + length]
    (crc,) = struct.unpack(">I", frame[HEADER + length:HEADER + length + 4])
    if binascii.crc32(body) & 0xFFFFFFFF != crc:
        raise FrameError("corrupt", "CRC mismatch")
    if version != VERSION:
        raise FrameError("unsupported", "frame version %d" % version)
    key = key_of(device_id)
    if key is None:
        raise FrameError("unknown_device", "device " + binascii.hexlify(device_id).decode())
    if not _same(mac(key, body)[:MAC_BYTES], frame[HEADER + length + 4:]):
        raise FrameError("bad_mac", "device " + binascii.hexlify(device_id).decode())
    return frame_type, device_id, seq, frame[HEADER:HEADER + length]


def parse(frame):
    # (type, device id, seq, payload) of a frame that was checked before (a stored record)
    frame_type, device_id, seq, length = struct.unpack(">xB8sIH", frame[:HEADER])
    return frame_type, device_id, seq, frame[HEADER:HEADER + length]


def _same(a, b):
    # constant-time comparison (no hmac.compare_digest on MicroPython)
    if len(a) != len(b):
        return False
    diff = 0
    for x, y in zip(a, b):
        diff |= x ^ y
    return diff == 0


class Deframer:
    # Splits a byte stream at 0x00 into raw frames. Garbage between frames ends up in a frame
    # that fails to decode (counted), and an overlong run without a delimiter is dropped: the
    # reader resyncs at the next 0x00 whatever came before.

    def __init__(self, max_frame=2 * MAX_FRAME):
        self.max_frame = max_frame
        self._buf = bytearray()
        self.dropped = 0  # bytes thrown away without a delimiter

    def feed(self, data):
        parts = bytes(data).split(b"\x00")
        frames = []
        for k, part in enumerate(parts):
            if len(self._buf) + len(part) > self.max_frame:
                self.dropped += len(self._buf) + len(part)  # no delimiter in sight: give it up
                self._buf = bytearray()
                part = b""
            self._buf += part
            if k < len(parts) - 1:  # a delimiter followed this part
                if self._buf:
                    frames.append(bytes(self._buf))
                self._buf = bytearray()
        return frames
