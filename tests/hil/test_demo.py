"""The README's first command: `w3gate demo` as a new user runs it, on real parts (mosquitto,
anvil, the gateway and the fleet as processes, an emulated MicroPython board on a pty and an
emulated BLE sensor on a virtual radio). It must show verified readings, the example applets at
work, readings proven against the local chain, and the two legacy sensors paired with one
command each, their readings next to the Pebbles' with their trust level."""
from __future__ import annotations

import json
import os
import re
import subprocess

from tests.support.gateway import w3gate_exe


def test_the_demo_shows_verified_readings_applets_proofs_paired_sensors_and_a_stream_to_buy(tmp_path,
                                                                                           built_applets):
    import shlex

    demo = subprocess.Popen([*w3gate_exe(), "demo", "--duration", "24", "--devices", "8", "--time-scale", "120",
                             "--data-dir", str(tmp_path / "demo")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "COLUMNS": "600"})  # wide: one reading per line
    lines = []
    for line in demo.stdout:  # the buyer's side, in the two commands the demo and `buy` print
        lines.append(line)
        if "buy a Pebble's readings yourself, in another terminal:" in line:
            words = shlex.split(line.split("another terminal: ", 1)[1].split(" (it prints", 1)[0])
            bought = subprocess.run([*w3gate_exe(), *words[1:]], capture_output=True, text=True, timeout=60)
            assert bought.returncode == 0 and bought.stdout.startswith("purchase 1:"), bought.stdout + bought.stderr
            receive = shlex.split(bought.stdout.splitlines()[-1].removeprefix("receive: "))
            received = subprocess.run([*w3gate_exe(), *receive[1:], "--count", "2", "--json"],  # as printed
                                      capture_output=True, text=True, timeout=60)
            assert received.returncode == 0, received.stdout + received.stderr
            got = [json.loads(x) for x in received.stdout.splitlines()]
            readings = [r for r in got[:-1] if "leaf" in r]  # the others: proofs of them, once anchored
            assert len(readings) == 2 and all(r["leaf"].startswith("0x") and r["record"]["payload"] for r in readings)
            assert all(r["proof"] == "valid" for r in got[:-1] if "proof" in r) and got[-1]["received"] == 2
            break
    out = "".join(lines) + demo.stdout.read()
    assert demo.wait(timeout=120) == 0, out + demo.stderr.read()
    assert "project pebble-demo deployed" in out
    assert re.search(r"dashboard: http://127\.0\.0\.1:\d+/ ", out)  # where to look, on a port of its own
    assert out.count("✔") >= 10  # verified readings as they became durable
    assert "applet geofence: geofence-alert:" in out  # the devices start outside the Munich fence
    assert "proven against the chain: valid" in out
    assert "INVALID" not in out
    # one command each, and their readings beside the Pebbles', with the trust level
    assert "$ w3gate device pair --serial" in out and "paired greenhouse" in out
    assert "$ w3gate device pair --ble w3-beehive" in out and "paired w3-beehive" in out
    assert any("greenhouse (serial)" in line and "gateway-attested data" in line for line in out.splitlines())
    assert any("w3-beehive (ble)" in line and "gateway-attested" in line for line in out.splitlines())
    assert any("secure-element data" in line for line in out.splitlines())


def test_a_new_user_pairs_the_demo_sensors_with_one_command_each(tmp_path, built_applets):
    """`w3gate demo --no-pair` leaves the pairing to the user: the two printed commands, run as
    they are, pair the emulated serial board and BLE sensor, whose readings then show up."""
    import shlex
    import time

    demo = subprocess.Popen([*w3gate_exe(), "demo", "--no-pair", "--no-chain", "--duration", "40", "--devices", "2",
                             "--data-dir", str(tmp_path / "demo")], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "COLUMNS": "400"})
    lines, commands = [], []
    deadline = time.monotonic() + 60
    while len(commands) < 2 and time.monotonic() < deadline:
        line = demo.stdout.readline()
        lines.append(line)
        if "yourself, in another terminal:" in line:
            commands.append(line.split("another terminal: ", 1)[1].strip())
    assert len(commands) == 2, "".join(lines)
    for command in commands:
        words = shlex.split(command)
        env = dict(os.environ)
        while "=" in words[0]:  # VAR=value prefixes, as a shell takes them
            key, value = words.pop(0).split("=", 1)
            env[key] = value
        words[0:1] = w3gate_exe()
        paired = subprocess.run(words, capture_output=True, text=True, env=env, timeout=120)
        assert paired.returncode == 0 and "first signed frame" in paired.stdout, paired.stdout + paired.stderr
    out = "".join(lines) + demo.communicate(timeout=120)[0]
    assert demo.returncode == 0
    assert any("greenhouse (serial)" in line and "gateway-attested" in line for line in out.splitlines()), out
    assert any("w3-beehive (ble)" in line and "gateway-attested" in line for line in out.splitlines()), out
    assert any("secure-element" in line for line in out.splitlines())
