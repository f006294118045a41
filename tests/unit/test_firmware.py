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
    """docs/firmware.md: the firmware runs its loop, with config changes, in 56 KiB of heap (48 KiB is not enough)."""
    fw = FirmwareProcess(tmp_path / "small", heap_kb=56, period_ms=10)
    try:
        frames = fw.start().frames(40)
        for n in range(3):
            fw.send_config({"period_ms": 10 + n})
            fw.until(wire.CONFIG_ACK)
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
