"""The README's first command: `w3gate demo` as a new user runs it, on real parts (mosquitto,
anvil, the gateway and the fleet as processes, an emulated MicroPython board on a pty and an
emulated BLE sensor on a virtual radio). It must show verified readings, the example applets at
work, readings proven against the local chain, and the two legacy sensors paired with one
command each, their readings next to the Pebbles' with their trust level."""
from __future__ import annotations

import os
import subprocess

from tests.support.gateway import w3gate_exe


def test_the_demo_shows_verified_readings_applets_proofs_and_paired_sensors(tmp_path, built_applets):
    result = subprocess.run([*w3gate_exe(), "demo", "--duration", "24", "--devices", "8", "--time-scale", "120",
                             "--data-dir", str(tmp_path / "demo")], capture_output=True, text=True, timeout=180,
                            env={**os.environ, "COLUMNS": "200"})  # wide: one reading per line
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "project pebble-demo deployed" in out
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
