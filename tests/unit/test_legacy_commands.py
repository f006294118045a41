"""Commands to legacy devices (gateway/legacy/bridge.py, gateway/applets/system_api.py): a project
commands only the devices its file lists, a command takes its seq from a durable per-device
counter before its event commits and is sent once it does, resent until the device acknowledges
it, and the acknowledgement is recorded on the device."""
from __future__ import annotations

import asyncio
import base64
import json
import os
from types import SimpleNamespace

import pytest

from device_fw import frame as wire
from gateway.applets.pool import HostAnswer
from gateway.applets.project import ProjectError, parse_project_file
from gateway.applets.system_api import HostCalls
from gateway.legacy.attest import Attester
from gateway.legacy.bridge import CommandError, LegacyBridge
from gateway.legacy.registry import LegacyRegistry, new_legacy_device
from gateway.legacy.verifier import LegacyVerifier
from tests.support.wat import assemble


class Line:
    """A serial link: what the gateway wrote down it, per link name."""

    def __init__(self) -> None:
        self.written: list[tuple[str, bytes]] = []
        self.up = True

    def write(self, link: str, data: bytes) -> bool:
        if self.up:
            self.written.append((link, data))
        return self.up

    def commands(self, device) -> list[tuple[int, dict]]:
        """(seq, command) of every COMMAND frame written, checked with the device's key."""
        out = []
        for _, data in self.written:
            kind, _, seq, payload = wire.decode(data[1:-1], lambda d: device.key_bytes)
            if kind == wire.COMMAND:
                out.append((seq, json.loads(payload)))
        return out


@pytest.fixture
def bench(tmp_path):
    registry = LegacyRegistry(tmp_path / "legacy_devices.json")
    door = new_legacy_device("door", transport="serial")
    registry.add(door)
    registry.add(new_legacy_device("other", transport="serial"))
    stored: list[dict] = []
    bridge = LegacyBridge(registry, LegacyVerifier(registry), Attester(os.urandom(32)),
                          lambda doc, done: (stored.append(doc), done(len(stored))), lambda rejection, link: None,
                          seq_path=tmp_path / "legacy_seq.json")
    line = bridge.downlinks["serial"] = Line()
    return SimpleNamespace(registry=registry, bridge=bridge, line=line, door=door, stored=stored, seq=iter(range(1, 1000)))


def hear(bench, frame_type=wire.READING, payload: dict | None = None, key: bytes | None = None) -> None:
    """A frame from the door on serial:/dev/ttyACM0."""
    data = wire.encode(frame_type, bytes.fromhex(bench.door.device_id), next(bench.seq),
                       json.dumps(payload or {"temperature": 20.0}).encode(), key or bench.door.key_bytes)
    bench.bridge.on_data("serial:/dev/ttyACM0", data)


def test_a_command_goes_down_where_the_device_was_heard_under_a_growing_seq(bench):
    hear(bench)
    assert bench.bridge.send_command("door", {"relay": 1}) is True
    assert bench.bridge.send_command(bench.door.device_id, {"relay": 0}) is True
    (first, one), (second, zero) = bench.line.commands(bench.door)
    assert (one, zero) == ({"relay": 1}, {"relay": 0}) and second > first
    assert {link for link, _ in bench.line.written} == {"serial:/dev/ttyACM0"}
    reopened = LegacyRegistry(bench.registry.path).get(bench.door.device_id)
    assert reopened.command_seq == second and reopened.command["command"] == {"relay": 0}  # kept on disk
    assert bench.bridge.status()["commands_sent"] == 2


def test_the_device_answer_is_recorded_on_it_and_counted(bench):
    hear(bench)
    bench.bridge.send_command("door", {"relay": 1})
    ((seq, _),) = bench.line.commands(bench.door)
    hear(bench, wire.COMMAND_ACK, {"relay": 1, "command_seq": seq})
    door = bench.registry.find("door")
    assert door.command_ack["seq"] == seq and door.command_ack["result"] == {"relay": 1, "command_seq": seq}
    assert "command_ack" in door.public_dict() and "key" not in door.public_dict()  # what `device sensors` shows
    assert [d["kind"] for d in bench.stored][-1] == "command_ack"  # and attested evidence in the buffer
    hear(bench, wire.COMMAND_ACK, {"error": "unknown output valve (relay)", "command_seq": seq + 1})
    status = bench.bridge.status()
    assert (status["command_acks"], status["command_errors"]) == (2, 1)
    assert "error" in bench.registry.find("door").command_ack["result"]


def test_a_command_for_a_device_not_heard_yet_waits_and_goes_down_when_it_is(bench):
    assert bench.bridge.send_command("door", {"relay": 1}) is False
    assert bench.line.commands(bench.door) == []
    hear(bench, wire.HELLO, {"fw": "w3gate-fw 0.1"})
    ((seq, command),) = bench.line.commands(bench.door)
    assert command == {"relay": 1}
    hear(bench, wire.COMMAND_ACK, {"relay": 1, "command_seq": seq})
    hear(bench, wire.HELLO, {"fw": "w3gate-fw 0.1"})  # a reboot: acknowledged, so not sent again
    assert len(bench.line.commands(bench.door)) == 1


def test_carrying_out_the_same_effect_again_resends_the_same_seq_and_an_older_one_is_superseded(bench):
    hear(bench)
    _, seq = bench.bridge.prepare_command("door", {"relay": 1}, allowed=["door"])
    _, newer = bench.bridge.prepare_command("door", {"relay": 0}, allowed=["door"])
    bench.bridge.send_command("door", {"relay": 0}, seq=newer)
    bench.bridge.send_command("door", {"relay": 0}, seq=newer)  # after a crash, from the outbox
    assert bench.bridge.send_command("door", {"relay": 1}, seq=seq) is False  # older: the device would ignore it
    assert bench.line.commands(bench.door) == [(newer, {"relay": 0}), (newer, {"relay": 0})]
    assert bench.bridge.status()["commands"] == 1


@pytest.mark.parametrize(("device", "command", "allowed", "reason"), [
    ("door", {"relay": 1}, [], "not_allowed"),  # the default: no device
    ("other", {"relay": 1}, ["door"], "not_allowed"),
    ("ghost", {"relay": 1}, ["door"], "not_allowed"),  # a device the project may not name: existing or not
    ("ghost", {"relay": 1}, ["ghost"], "unknown_device"),  # listed, but not paired (or unpaired since)
    ("door", [1], ["door"], "bad_command"),
    ("door", {}, ["door"], "bad_command"),
    ("door", {"relay": float("nan")}, ["door"], "bad_command"),
    ("door", {"note": "x" * 600}, ["door"], "too_large"),
])
def test_a_command_that_cannot_be_sent_is_refused_with_its_reason_and_takes_no_seq(bench, device, command, allowed,
                                                                                    reason):
    with pytest.raises(CommandError) as refused:
        bench.bridge.prepare_command(device, command, allowed=allowed)
    assert refused.value.reason == reason
    assert bench.registry.find("door").command_seq == 0


def test_send_command_refuses_an_unknown_device_and_an_oversized_command(bench):
    with pytest.raises(CommandError) as unknown:
        bench.bridge.send_command("ghost", {"relay": 1})
    with pytest.raises(CommandError) as large:
        bench.bridge.send_command("door", {"note": "x" * 600})
    assert (unknown.value.reason, large.value.reason) == ("unknown_device", "too_large")


# -- the system API an applet calls ----------------------------------------------------------------

def api(bench, body: object, command_devices: list[str]) -> dict | HostAnswer:
    project = SimpleNamespace(name="door-opener", operators=[], command_devices=command_devices)
    calls = HostCalls(SimpleNamespace(projects={"door-opener": project}), None, bench.bridge)
    request = {"Method": "POST", "Url": "w3bstream://w3bstream.com/system/device_command",
               "Body": base64.b64encode(json.dumps(body).encode()).decode()}
    return asyncio.run(calls("api_call", {"project": "door-opener", "request": request, "event": "e1"}))


def answer_of(reply: dict) -> tuple[int, dict]:
    return reply["StatusCode"], json.loads(base64.b64decode(reply["Body"]))


def test_an_applet_command_is_pending_until_its_event_commits(bench):
    hear(bench)
    answer = api(bench, {"device": "door", "command": {"relay": 1}}, ["door"])
    assert isinstance(answer, HostAnswer)
    code, body = answer_of(answer.value)
    assert code == 200 and body["state"] == "pending" and body["device"] == bench.door.device_id
    assert answer.effect == {"kind": "device_command", "device": bench.door.device_id, "command": {"relay": 1},
                             "seq": body["seq"]}
    assert bench.line.commands(bench.door) == []  # nothing sent before the commit


@pytest.mark.parametrize(("body", "allowed", "status", "reason"), [
    ({"device": "door", "command": {"relay": 1}}, [], 403, "not_allowed"),
    ({"device": "ghost", "command": {"relay": 1}}, ["ghost"], 404, "unknown_device"),
    ({"device": "door", "command": "open"}, ["door"], 400, "bad_command"),
    ({"command": {"relay": 1}}, ["door"], 400, "bad_command"),
    ({"device": "door", "command": {"pad": "x" * 600}}, ["door"], 400, "too_large"),
])
def test_an_applet_command_refused_says_why(bench, body, allowed, status, reason):
    code, answer = answer_of(api(bench, body, allowed))
    assert (code, answer["reason"]) == (status, reason) and answer["error"]


def test_without_legacy_devices_the_route_answers_503(bench):
    bench.bridge = None
    code, answer = answer_of(api(bench, {"device": "door", "command": {"relay": 1}}, ["door"]))
    assert (code, answer["reason"]) == (503, "no_devices")


def test_a_project_lists_the_devices_it_may_command(tmp_path):
    assemble("probe", tmp_path)
    applets = '[[applets]]\nname = "a"\nwasm = "probe.wasm"\n'
    (tmp_path / "p.toml").write_text('name = "p"\ncommand_devices = ["door", "00112233445566ff"]\n' + applets)
    assert parse_project_file(tmp_path / "p.toml")[0].command_devices == ["door", "00112233445566ff"]
    (tmp_path / "p.toml").write_text('name = "p"\n' + applets)
    assert parse_project_file(tmp_path / "p.toml")[0].command_devices == []
    (tmp_path / "p.toml").write_text('name = "p"\ncommand_devices = "door"\n' + applets)
    with pytest.raises(ProjectError, match="command_devices"):
        parse_project_file(tmp_path / "p.toml")


# -- the test applet of tests/hil/test_device_command.py -------------------------------------------

class CommandHost(SimpleNamespace):
    """What the hand-written device_command applet asks of its host."""

    def log(self, level, message):
        self.logs.append((level, message))

    def env(self, key):
        return {"RELAY": "1"}.get(key)

    def api_call(self, request):
        self.requests.append(request)
        return {"StatusCode": 200, "Body": base64.b64encode(b'{"state":"pending"}').decode()}


def test_the_test_applet_turns_a_contract_log_into_a_device_command_request(tmp_path):
    from gateway.applets.abi import AppletInstance
    from gateway.chain.monitors import log_json

    host = CommandHost(logs=[], requests=[])
    applet = AppletInstance(assemble("device_command", tmp_path), host)
    log = log_json({"address": "0x" + "11" * 20, "topics": [bytes(32), bytes.fromhex("00112233445566ff") + bytes(24)],
                    "data": b"", "blockNumber": 7, "transactionHash": bytes(32), "transactionIndex": 0,
                    "blockHash": bytes(32), "logIndex": 0})
    code, returned = applet.call("start", json.dumps(log).encode())
    assert code == 0 and json.loads(returned)["StatusCode"] == 200
    (request,) = host.requests
    assert (request["Method"], request["Url"]) == ("POST", "/system/device_command")
    assert json.loads(base64.b64decode(request["Body"])) == {"device": "00112233445566ff", "command": {"relay": 1}}
    assert applet.call("start", b'{"topics": ["0x01"]}')[0] == -3  # a log naming no device: nothing asked
    assert len(host.requests) == 1


def test_device_sensors_shows_the_newest_command_and_the_answer(bench, tmp_path):
    from click.testing import CliRunner

    from gateway.cli import main

    def listing() -> str:
        result = CliRunner().invoke(main, ["device", "sensors", "--data-dir", str(tmp_path)])
        assert result.exit_code == 0, result.output
        return next(line for line in result.output.splitlines() if "door" in line)

    hear(bench)
    bench.bridge.send_command("door", {"relay": 1})
    ((seq, _),) = bench.line.commands(bench.door)
    assert listing().endswith(f'command {seq} {{"relay": 1}}: not acknowledged yet')
    hear(bench, wire.COMMAND_ACK, {"relay": 1, "command_seq": seq})
    assert listing().endswith(f'command {seq} {{"relay": 1}}: {{"relay": 1}}')


def test_a_command_is_sent_once_its_event_is_kept_never_for_a_failed_one_and_a_rerun_resends_its_seq(bench, tmp_path):
    import hashlib
    from functools import partial

    from gateway.applets.abi import EventMeta
    from gateway.applets.pool import AppletEvent, ProjectWorker
    from gateway.applets.runtime import AppletRuntime
    from gateway.chain.monitors import log_json

    wasm = assemble("device_command", tmp_path)
    sha = hashlib.sha256(wasm).hexdigest()
    (tmp_path / f"{sha}.wasm").write_bytes(wasm)
    project = SimpleNamespace(name="opener", operators=[], command_devices=["door"])
    runtime = AppletRuntime(store=None)
    runtime.command_device = lambda name, e: bench.bridge.send_command(e["device"], e["command"], seq=e["seq"],
                                                                       project=name)
    calls = HostCalls(SimpleNamespace(projects={"opener": project}), None, bench.bridge)
    log = json.dumps(log_json({"address": "0x" + "11" * 20, "topics": [bytes(32), bytes.fromhex(bench.door.device_id)
                                                                        + bytes(24)],
                               "data": b"", "blockNumber": 7, "transactionHash": bytes(32), "transactionIndex": 0,
                               "blockHash": bytes(32), "logIndex": 0})).encode()
    hear(bench)

    def worker(on_effects) -> ProjectWorker:
        return ProjectWorker("opener", modules_dir=tmp_path, state_path=tmp_path / "state.sqlite", env={"RELAY": "1"},
                             host_call=calls, on_effects=on_effects, stderr_path=tmp_path / "worker.stderr",
                             log_path=tmp_path / "applet.log")

    async def crash(committed, voided):
        raise OSError("the gateway died between the commit and the send")

    async def go():
        first = worker(crash)  # the kept event's command is committed, then the gateway dies
        try:
            kept, failed = await first.run([AppletEvent("kept", sha, "start", log, EventMeta()),
                                            AppletEvent("failed", sha, "command_then_trap", log, EventMeta())])
        finally:
            await first.close()
        assert bench.line.commands(bench.door) == []  # nothing went down before the effects ran
        restarted = worker(partial(runtime._carry_out, "opener"))
        try:
            await restarted.recover()
        finally:
            await restarted.close()
        return kept, failed
    kept, failed = asyncio.run(go())
    assert kept.code == 0 and failed.code == -1 and "trap" in failed.error
    seq = answer_of(json.loads(kept.return_value))[1]["seq"]
    assert bench.line.commands(bench.door) == [(seq, {"relay": 1})]  # the kept one, once; the failed one never
    runtime._command("opener", {"kind": "device_command", "device": bench.door.device_id, "command": {"relay": 1},
                                "seq": seq})  # carried out again: the same seq, which the device applies once
    assert bench.line.commands(bench.door) == [(seq, {"relay": 1})] * 2
