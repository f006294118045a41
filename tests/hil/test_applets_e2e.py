"""Applets on real parts: a project deployed with the CLI receives verified Pebble readings from
emulated devices through `w3gate run`, keeps state, and a runaway applet harms nothing else."""
from __future__ import annotations

import json

import pytest

from tests.hil.test_gateway_e2e import sim
from tests.support.gateway import GatewayProcess, cli, cli_json
from tests.support.wat import assemble


@pytest.fixture
def fleet(tmp_path, mosquitto):
    fleet_dir = tmp_path / "fleet"
    sim(mosquitto, fleet_dir, "--count", "4", "--profile", "riverrock-1.0.14", "--duration", "0.2")
    return fleet_dir


def _project(tmp_path, name: str, handler: str, *, extra: str = "") -> str:
    assemble("probe", tmp_path)
    path = tmp_path / f"{name}.toml"
    path.write_text(f'name = "{name}"\n[events]\npebble = true\n[[applets]]\nname = "probe"\nwasm = "probe.wasm"\n'
                    f'[[strategies]]\nevent = "PEBBLE_DATA"\napplet = "probe"\nhandler = "{handler}"\n{extra}')
    return str(path)


def test_verified_readings_reach_a_deployed_applet_and_a_spinning_one_harms_nothing(tmp_path, mosquitto, fleet):
    gw = GatewayProcess(tmp_path, mosquitto.port, applets__time_limit_s=0.2)
    cli("device", "import", str(fleet / "devices.json"), data_dir=gw.data_dir)
    cli("project", "deploy", _project(tmp_path, "echo", "start"), data_dir=gw.data_dir)
    gw.start()
    try:
        # deployed while running: picked up without a restart
        cli("project", "deploy", _project(tmp_path, "runaway", "spin"), data_dir=gw.data_dir)
        gw.wait_for(lambda s: "runaway" in s.get("applets", {}).get("projects", []), what="live deploy")
        summary = sim(mosquitto, fleet, "--messages", "3", "--time-scale", "300", "--qos", "1")
        sent = summary["published"]["data"]
        status = gw.wait_for(lambda s: s.get("applets", {}).get("pebble_records", 0) >= sent,
                             timeout=60, what="every reading dispatched to the applets")
        assert status["accepted"]["data"] == sent
        logs = cli_json("applet", "logs", "echo", "--limit", "0", data_dir=gw.data_dir)
    finally:
        gw.stop()
    events = [json.loads(line["msg"]) for line in logs if line["level"] == "info"]
    assert len(events) == sent
    assert all(e["kind"] == "data" and e["trust"] == "secure-element" and e["did"].startswith("did:io:0x")
               for e in events)
    assert all(-40 < e["reading"]["temperature"] < 60 for e in events)
    records = cli_json("records", "--limit", "0", data_dir=gw.data_dir)
    assert {r["state"] for r in records} == {"processed"}
    runaway = cli_json("applet", "logs", "runaway", "--limit", "0", data_dir=gw.data_dir)
    assert len(runaway) == sent and all("time limit" in line["msg"] for line in runaway)
