"""Fixtures of the HIL tests: a fleet of emulated Pebbles and `w3gate run` serving them."""
from __future__ import annotations

import pytest

from tests.support.gateway import GatewayProcess, cli, sim


@pytest.fixture
def fleet(tmp_path, mosquitto):
    """Six emulated Pebbles of every firmware profile, registered with the gateway's data dir."""
    fleet_dir = tmp_path / "fleet"
    sim(mosquitto, fleet_dir, "--count", "6", "--profile", "mixed", "--duration", "0.2")
    return fleet_dir


@pytest.fixture
def gateway(tmp_path, mosquitto, fleet):
    gw = GatewayProcess(tmp_path, mosquitto.port)
    cli("device", "import", str(fleet / "devices.json"), data_dir=gw.data_dir)
    gw.start()
    yield gw
    gw.stop()
