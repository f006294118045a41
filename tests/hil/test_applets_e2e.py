"""Applets on real parts: a project deployed with the CLI receives verified Pebble readings from
emulated devices through `w3gate run`, keeps state, and a runaway applet harms nothing else."""
from __future__ import annotations

import json

import pytest

from tests.support.gateway import sim
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
        # each project at its own pace; the buffer's processed cursor follows the slower one
        status = gw.wait_for(lambda s: s["buffer"].get("processed_upto", 0) >= sent,
                             timeout=60, what="every reading processed by both projects")
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


def _post(url: str, body: bytes, token: str | None) -> tuple[int, dict]:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def test_w3bstream_events_over_http_and_mqtt_reach_the_applet(tmp_path, mosquitto):
    import paho.mqtt.client as mqtt
    import queue

    gw = GatewayProcess(tmp_path, mosquitto.port, api__max_event_bytes=1000)
    project = tmp_path / "events.toml"
    assemble("probe", tmp_path)
    project.write_text('name = "events"\n[[applets]]\nname = "probe"\nwasm = "probe.wasm"\n'
                       '[[strategies]]\nevent = "DEFAULT"\napplet = "probe"\nhandler = "start"\n'
                       '[[strategies]]\nevent = "COUNT"\napplet = "probe"\nhandler = "count"\n')
    cli("project", "deploy", str(project), data_dir=gw.data_dir)
    token = cli_json("publisher", "add", "events", "sensor-7", data_dir=gw.data_dir)["token"]
    gw.start()
    acks: queue.Queue = queue.Queue()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="event-client")
    client.on_message = lambda c, u, m: acks.put((m.topic, json.loads(m.payload)))
    client.connect("127.0.0.1", mosquitto.port)
    client.subscribe("ack/#")
    client.loop_start()
    try:
        url = gw.wait_for(lambda s: (s.get("api") or {}).get("url"), what="event API")["api"]["url"]
        event_url = f"{url}/srv-applet-mgr/v0/event/events"
        status, body = _post(event_url + "?eventID=ABC-1", b'{"speed": 42}', token)
        assert status == 200, body
        assert body["channel"] == "events" and body["publisherKey"] == "sensor-7" and body["eventID"] == "abc-1"
        assert body["results"] == [{"appletName": "probe", "instanceID": body["results"][0]["instanceID"],
                                    "handler": "start", "returnValue": {"speed": 42}, "code": 0}]
        assert _post(event_url + "?eventType=COUNT", b"", token)[1]["results"][0]["code"] == 1
        assert _post(event_url, b"x", "w3b_wrong")[0] == 401
        assert _post(event_url, b"x", None)[0] == 401
        assert _post(f"{url}/srv-applet-mgr/v0/event/nowhere", b"x", token)[0] == 401  # as a bad token: no probing
        assert _post(event_url, b"x" * 2000, token)[0] == 413
        client.publish(f"events/push/{token}/COUNT", b"", qos=1)
        topic, ack = acks.get(timeout=10)
        assert topic == "ack/sensor-7" and ack["results"][0]["code"] == 2  # KV kept across transports
        client.publish("events/push/w3b_wrong/COUNT", b"", qos=1)  # refused: no ack, nothing runs
        client.publish(f"events/push/{token}/COUNT/ts=1&id=Second", b"", qos=1)
        topic, ack = acks.get(timeout=10)
        assert ack["eventID"] == "second" and ack["results"][0]["code"] == 3
        status = gw.wait_for(lambda s: s["api"]["unauthorized"] == 4, what="refusals counted")["api"]
        assert status["too_large"] == 1 and status["accepted"] == 4

        tokens = gw.data_dir / "projects" / "events" / "publishers.json"
        good = tokens.read_bytes()
        tokens.write_text('{"half-written')  # a failure inside the gateway, on both transports
        assert _post(event_url, b"x", token) == (500, {"error": "internal: the gateway failed on this event (logged)"})
        client.publish(f"events/push/{token}/COUNT", b"", qos=1)
        gw.wait_for(lambda s: s["api"]["internal"] == 2, what="both failures counted")
        tokens.write_bytes(good)
        client.publish(f"events/push/{token}/COUNT/ts=1&id=Third", b"", qos=1)
        topic, ack = acks.get(timeout=10)
        assert ack["eventID"] == "third" and ack["results"][0]["code"] == 4  # the API kept serving
        assert gw.log_text().count("Traceback") == 1  # logged once, for the first of its kind
    finally:
        client.loop_stop()
        client.disconnect()
        gw.stop()
