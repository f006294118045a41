"""Soak (slow, `./dev.sh soak`): a fleet runs for minutes while the gateway is killed (SIGKILL)
or stopped (SIGTERM) and restarted again and again; afterwards every reading the devices
published is stored exactly once."""
from __future__ import annotations

import random
import subprocess
import time

import pytest

from tests.hil.test_gateway_e2e import Observer
from tests.support.gateway import sim
from tests.support.gateway import GatewayProcess, cli, cli_json, w3gate_exe

pytestmark = pytest.mark.slow


def test_repeated_kills_and_restarts_lose_and_duplicate_nothing(tmp_path, mosquitto):
    fleet = tmp_path / "fleet"
    sim(mosquitto, fleet, "--count", "40", "--profile", "riverrock-1.0.14", "--duration", "0.2")
    gw = GatewayProcess(tmp_path, mosquitto.port)
    cli("device", "import", str(fleet / "devices.json"), data_dir=gw.data_dir)
    gw.start()
    observer = Observer(mosquitto)
    feed = subprocess.Popen([*w3gate_exe(), "sim", "pebble", "--broker", mosquitto.url, "--fleet-dir", str(fleet),
                             "--time-scale", "1500", "--qos", "1", "--quiet", "--duration", "90"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rng = random.Random(1)
    kills = stops = 0
    try:
        while feed.poll() is None:
            time.sleep(rng.uniform(2, 6))
            if rng.random() < 0.7:
                gw.kill()
                kills += 1
            else:
                assert gw.stop() == 0
                stops += 1
            time.sleep(rng.uniform(0.1, 2))
            gw.start()
        assert feed.returncode == 0
        published = observer.data_digests()
        deadline = time.time() + 60
        while time.time() < deadline:
            stored = [r["digest"] for r in cli_json("records", "--limit", "0", data_dir=gw.data_dir)
                      if r["kind"] == "data"]
            if set(stored) >= published:
                break
            time.sleep(1)
        assert kills >= 5 and stops >= 1
        assert published and set(stored) == published, f"{len(published - set(stored))} readings lost"
        assert len(stored) == len(set(stored)), "a reading was stored twice"
        assert gw.status()["rejected"].get("replay", 0) == 0
    finally:
        observer.stop()
        gw.stop()
