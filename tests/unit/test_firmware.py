"""The legacy-sensor firmware (device_fw/), run by the real MicroPython interpreter (unix port)
with its serial link on a pty, checked frame by frame with the gateway's codec."""
from __future__ import annotations

import os

import pytest

from device_fw import frame as wire
from tests.support.firmware import FirmwareProcess


@pytest.fixture
def firmware(tmp_path):
    fw = FirmwareProcess(tmp_path / "board")
    yield fw
    fw.stop()


def test_boot_says_hello_then_sends_authenticated_readings_with_growing_seqs(firmware):
    frames = firmware.start().frames(6)
    hello, readings = frames[0], frames[1:]
    assert hello[0] == wire.HELLO and hello[1] == firmware.device_id
    assert hello[3]["fw"].startswith("w3gate-fw") and hello[3]["heap_free"] > 0 and hello[3]["boot"] == 1
    assert [f[0] for f in readings] == [wire.READING] * 5
    seqs = [f[2] for f in frames]
    assert seqs == sorted(seqs) and len(set(seqs)) == 6
    assert all(15 < f[3]["temperature"] < 30 and 900 < f[3]["pressure"] < 1100 for f in readings)


def test_seqs_keep_growing_across_a_restart(firmware):
    before = firmware.start().frames(5)[-1][2]
    firmware.stop()
    after = firmware.start().frames(1)[0]
    assert after[0] == wire.HELLO and after[3]["boot"] == 2
    assert after[2] > before


def test_a_config_is_applied_acknowledged_and_kept_across_a_restart(firmware):
    firmware.start().frames(2)
    seq = firmware.send_config({"period_ms": 20, "sensors": ["sim"]})
    ack = firmware.until(wire.CONFIG_ACK)
    assert ack[3] == {"period_ms": 20, "sensors": ["sim"], "config_seq": seq}
    firmware.stop()
    hello = firmware.start().frames(1)[0]
    assert hello[3]["period_ms"] == 20


def test_stale_forged_and_invalid_configs_change_nothing(firmware):
    firmware.start().frames(1)
    applied = firmware.send_config({"period_ms": 30})
    assert firmware.until(wire.CONFIG_ACK)[3]["period_ms"] == 30
    firmware.send_config({"period_ms": 500}, seq=applied)  # played back: same seq
    firmware.send_config({"period_ms": 500}, key=os.urandom(32))  # wrong key
    bad = firmware.send_config({"period_ms": "fast"})
    ack = firmware.until(wire.CONFIG_ACK)  # only the invalid one is answered, with an error
    assert ack[3]["config_seq"] == bad and "period_ms" in ack[3]["error"]
    ok = firmware.send_config({"sensors": ["sim"]})
    assert firmware.until(wire.CONFIG_ACK)[3] == {"period_ms": 30, "sensors": ["sim"], "config_seq": ok}


def test_a_command_sets_the_relay_is_acknowledged_reported_and_kept_across_a_restart(firmware):
    firmware.start().frames(1)
    assert firmware.relay() is None  # never driven
    seq = firmware.send_command({"relay": 1})
    assert firmware.until(wire.COMMAND_ACK)[3] == {"relay": 1, "command_seq": seq}
    assert firmware.relay() == "1"
    assert firmware.until(wire.READING)[3]["relay"] == 1  # readings report it from then on
    firmware.stop()
    (firmware.directory / "relay.out").unlink()  # a board's pins come up low after a reset
    hello = firmware.start().frames(1)[0]
    assert hello[0] == wire.HELLO and firmware.relay() == "1"  # driven again at boot
    firmware.send_command({"relay": 0}, seq=seq)  # played back after the reboot: not applied again
    off = firmware.send_command({"relay": 0}, seq=seq - 1)  # older still: ignored without a word
    assert off < seq
    newer = firmware.send_command({"relay": 0}, seq=seq + 1)
    acks = [firmware.until(wire.COMMAND_ACK)[3] for _ in range(2)]
    assert acks == [{"relay": 1, "command_seq": seq, "repeat": True}, {"relay": 0, "command_seq": newer}]
    assert firmware.relay() == "0"


def test_forged_unknown_and_invalid_commands_change_nothing(firmware):
    firmware.start().frames(1)
    ok = firmware.send_command({"relay": 1})
    assert firmware.until(wire.COMMAND_ACK)[3]["relay"] == 1
    firmware.send_command({"relay": 0}, key=os.urandom(32))  # wrong key: no answer at all
    unknown = firmware.send_command({"relay": 0, "valve": 1})
    assert firmware.until(wire.COMMAND_ACK)[3] == {"error": "unknown output valve (relay)", "command_seq": unknown}
    for bad in ({"relay": 2}, {"relay": "on"}, {}, [1], b"not json", b'"relay"'):
        seq = firmware.send_command(bad)
        ack = firmware.until(wire.COMMAND_ACK)[3]
        assert ack["command_seq"] == seq and ack["error"], (bad, ack)
    assert firmware.relay() == "1" and ok < seq
    assert firmware.proc.poll() is None


def test_an_output_that_cannot_be_driven_is_answered_with_an_error(tmp_path):
    fw = FirmwareProcess(tmp_path / "board")
    try:
        fw.start().frames(1)
        (fw.directory / "relay.out").mkdir()  # the output cannot be driven: as a missing pin would
        seq = fw.send_command({"relay": 1})
        ack = fw.until(wire.COMMAND_ACK)[3]
        assert ack["command_seq"] == seq and ack["error"]
        assert fw.proc.poll() is None
    finally:
        fw.stop()


def test_garbage_and_a_torn_frame_on_the_line_do_not_stop_the_firmware(firmware):
    firmware.start().frames(1)
    firmware.write(os.urandom(500))
    torn = wire.encode(wire.CONFIG, firmware.device_id, 5000, b'{"period_ms":40}', firmware.key)
    firmware.write(torn[: len(torn) // 2])
    seq = firmware.send_config({"period_ms": 40})
    assert firmware.until(wire.CONFIG_ACK)[3]["config_seq"] == seq
    assert firmware.proc.poll() is None


def test_a_repl_request_ends_the_firmware_cleanly(firmware):
    firmware.start().frames(1)
    firmware.send_config({"repl": True})
    assert firmware.until(wire.CONFIG_ACK)[3]["repl"] is True
    assert firmware.proc.wait(10) == 0


def test_the_firmware_runs_in_a_small_heap(tmp_path):
    """docs/firmware.md: the firmware runs its loop, with config changes and commands, in 56 KiB of
    heap (48 KiB is not enough)."""
    fw = FirmwareProcess(tmp_path / "small", heap_kb=56, period_ms=10)
    try:
        frames = fw.start().frames(40)
        for n in range(3):
            fw.send_config({"period_ms": 10 + n})
            fw.until(wire.CONFIG_ACK)
            fw.send_command({"relay": n % 2})
            assert fw.until(wire.COMMAND_ACK)[3]["relay"] == n % 2
        more = fw.frames(40)
        assert more[-1][2] > frames[-1][2] and fw.proc.poll() is None
    finally:
        fw.stop()


def test_without_device_json_the_firmware_says_how_to_pair(tmp_path):
    import subprocess

    from hardware.board import micropython_exe
    from tests.support.firmware import ROOT

    (tmp_path / "empty").mkdir()
    out = subprocess.run([micropython_exe(), "-m", "device_fw.main"], cwd=tmp_path / "empty", capture_output=True,
                         text=True, timeout=10, env={**os.environ, "MICROPYPATH": str(ROOT)})
    assert out.returncode == 0 and "w3gate device pair" in out.stdout


def test_the_simulated_sensor_repeats_its_readings_for_a_seed(tmp_path):
    """Its noise comes from the seed; only the slow drift with uptime differs between runs."""
    values = []
    for n in range(2):
        fw = FirmwareProcess(tmp_path / f"seed{n}", sim_seed=7)
        try:
            values.append([f[3]["temperature"] for f in fw.start().frames(4)[1:]])
        finally:
            fw.stop()
    assert all(abs(a - b) < 0.05 for a, b in zip(*values))
