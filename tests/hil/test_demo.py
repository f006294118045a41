"""The README's first command: `w3gate demo` as a new user runs it, on real parts (mosquitto,
anvil, the gateway and the fleet as processes). It must show verified readings, the example
applets at work, and readings proven against the local chain."""
from __future__ import annotations

import os
import subprocess

from tests.support.gateway import w3gate_exe


def test_the_demo_shows_verified_readings_applets_and_proofs(tmp_path, built_applets):
    result = subprocess.run([*w3gate_exe(), "demo", "--duration", "24", "--devices", "8", "--time-scale", "120",
                             "--data-dir", str(tmp_path / "demo")], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "COLUMNS": "200"})  # wide: one reading per line
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "project pebble-demo deployed" in out
    assert out.count("✔") >= 10  # verified readings as they became durable
    assert "applet geofence: geofence-alert:" in out  # the devices start outside the Munich fence
    assert "proven against the chain: valid" in out
    assert "INVALID" not in out
