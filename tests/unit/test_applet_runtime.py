"""Projects: deployed from TOML, routed by event type (DEFAULT fallback, every match runs),
redeployed live, refused when an applet cannot run here."""
from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from gateway.applets.project import ProjectError, ProjectStore
from gateway.applets.runtime import AppletRuntime, Event
from gateway.layout import DataDir
from tests.support.wat import assemble


def _project_file(directory: Path, *, env: str = 'NAME = "first"', extra: str = "") -> Path:
    assemble("probe", directory)
    path = directory / "project.toml"
    path.write_text(f'''
name = "probe-project"
[events]
pebble = true
[[applets]]
name = "probe"
wasm = "probe.wasm"
[[strategies]]
event = "PEBBLE_DATA"
applet = "probe"
handler = "start"
[[strategies]]
event = "PEBBLE_DATA"
applet = "probe"
handler = "count"
[[strategies]]
event = "DEFAULT"
applet = "probe"
handler = "env"
[env]
{env}
{extra}
''')
    return path


def _handle(runtime: AppletRuntime, events: list[Event]):
    async def go():
        await runtime.reload()
        try:
            return await runtime.handle(events)
        finally:
            await runtime.close()
    return asyncio.run(go())


def test_every_matching_strategy_runs_and_others_fall_back_to_default(tmp_path):
    store = ProjectStore(DataDir(tmp_path / "data"))
    project = store.deploy(_project_file(tmp_path))
    assert project.pebble and set(project.applets) == {"probe"}
    responses = _handle(AppletRuntime(store), [
        Event("probe-project", b'{"t": 1}', event_type="PEBBLE_DATA", publisher="351358813281791"),
        Event("probe-project", b"NAME", event_type="SOMETHING_ELSE"),
        Event("nowhere", b"x")])
    data, other, missing = (r.to_json() for r in responses)
    assert [(r["handler"], r["code"], r["returnValue"]) for r in data["results"]] == \
        [("start", 0, {"t": 1}), ("count", 1, None)]
    assert data["publisherKey"] == "351358813281791" and data["channel"] == "probe-project"
    assert [(r["handler"], r["returnValue"]) for r in other["results"]] == [("env", "first")]
    assert missing["error"] == "project 'nowhere' is not deployed" and missing["results"] == []
    log = [json.loads(line) for line in store.files("probe-project").applet_log.read_text().splitlines()]
    assert {"applet": "probe", "level": "info", "msg": '{"t": 1}'}.items() <= log[0].items()


def test_a_redeploy_is_picked_up_without_a_restart_and_state_is_kept(tmp_path):
    store = ProjectStore(DataDir(tmp_path / "data"))
    store.deploy(_project_file(tmp_path))
    runtime = AppletRuntime(store)

    async def go():
        await runtime.reload()
        first = await runtime.handle([Event("probe-project", b"NAME"),
                                      Event("probe-project", b"", event_type="PEBBLE_DATA")])
        store.deploy(_project_file(tmp_path, env='NAME = "second"'))
        assert await runtime.reload()
        second = await runtime.handle([Event("probe-project", b"NAME"),
                                       Event("probe-project", b"", event_type="PEBBLE_DATA")])
        await runtime.close()
        return first, second
    first, second = asyncio.run(go())
    assert first[0].results[0]["returnValue"] == "first" and second[0].results[0]["returnValue"] == "second"
    assert first[1].results[1]["code"] == 1 and second[1].results[1]["code"] == 2  # KV survived


def test_an_applet_with_unknown_imports_is_refused_at_deploy(tmp_path):
    assemble("unknown_import", tmp_path)
    path = tmp_path / "bad.toml"
    path.write_text('name = "bad"\n[[applets]]\nname = "mqtt"\nwasm = "unknown_import.wasm"\n')
    with pytest.raises(ProjectError, match="env.ws_get_mqtt_msg"):
        ProjectStore(DataDir(tmp_path / "data")).deploy(path)
    assert ProjectStore(DataDir(tmp_path / "data")).all() == []


@pytest.mark.parametrize("module", ["/dev/zero", "/dev/full", "fifo"])
def test_a_module_that_is_not_a_regular_file_is_refused_without_reading_it(tmp_path, module):
    if module == "fifo":
        os.mkfifo(tmp_path / "fifo")  # nobody writes to it: opening it must not wait
    path = tmp_path / "odd.toml"
    path.write_text(f'name = "odd"\n[[applets]]\nname = "a"\nwasm = "{module}"\n')
    with pytest.raises(ProjectError, match="is not a regular file"):
        ProjectStore(DataDir(tmp_path / "data")).deploy(path)


def test_a_strategy_naming_a_missing_handler_is_refused(tmp_path):
    path = _project_file(tmp_path, extra='[[strategies]]\nevent = "X"\napplet = "probe"\nhandler = "nope"\n')
    with pytest.raises(ProjectError, match="exports no handler 'nope'"):
        ProjectStore(DataDir(tmp_path / "data")).deploy(path)


def test_a_handler_of_another_type_is_refused_at_deploy_with_the_reason(tmp_path):
    path = _project_file(tmp_path, extra='[[strategies]]\nevent = "X"\napplet = "probe"\nhandler = "reduce"\n')
    with pytest.raises(ProjectError, match=r"handler 'reduce' is \(i32, i32\) -> i32, but a handler is called "
                                           r"as \(i32 rid\) -> i32: a flow operator .* is not a handler"):
        ProjectStore(DataDir(tmp_path / "data")).deploy(path)


@pytest.mark.parametrize("value, reuse", [('"fresh"', False), ('"reuse"', True), (None, False)])
def test_a_project_chooses_fresh_instances_or_opts_in_to_reuse(tmp_path, value, reuse):
    path = _project_file(tmp_path)
    if value is not None:
        path.write_text(f"instances = {value}\n" + path.read_text())
    assert ProjectStore(DataDir(tmp_path / "data")).deploy(path).reuse_instances is reuse


def test_an_unknown_instance_policy_is_refused(tmp_path):
    path = _project_file(tmp_path)
    path.write_text('instances = "pooled"\n' + path.read_text())
    with pytest.raises(ProjectError, match="'instances' is \"fresh\""):
        ProjectStore(DataDir(tmp_path / "data")).deploy(path)


def test_cron_jobs_deliver_upstreams_payload_on_schedule(tmp_path):
    from gateway.applets.triggers import CronScheduler

    store = ProjectStore(DataDir(tmp_path / "data"))
    store.deploy(_project_file(tmp_path, extra='[[cron]]\nexpression = "* * * * * */10"\nevent = "TICK"\n'))
    runtime = AppletRuntime(store)

    async def go():
        await runtime.reload()
        scheduler = CronScheduler(runtime)
        t0 = 1_800_000_000.0  # a multiple of ten seconds
        assert scheduler.due(t0 + 1) == []  # scheduled: next run at t0 + 10
        assert scheduler.due(t0 + 9.9) == []
        (event,) = scheduler.due(t0 + 10.2)
        assert scheduler.due(t0 + 10.5) == []  # once per slot
        responses = await runtime.handle([event])
        await runtime.close()
        return event, responses
    event, (response,) = asyncio.run(go())
    assert event.event_type == "TICK" and event.event_id.endswith("_monitor")
    payload = json.loads(event.payload)
    assert payload["Timestamp"] == "2027-01-15T08:00:10Z" and len(payload["ID"]) == 16
    assert [r["handler"] for r in response.results] == ["env"]  # TICK has no strategy: DEFAULT runs


def test_a_bad_cron_expression_is_refused_at_deploy(tmp_path):
    path = _project_file(tmp_path, extra='[[cron]]\nexpression = "every minute"\nevent = "TICK"\n')
    with pytest.raises(ProjectError, match="not a cron expression"):
        ProjectStore(DataDir(tmp_path / "data")).deploy(path)


@pytest.mark.parametrize("monitor, reason", [
    ('kind = "chain_height"\nevent = "H"\n', "needs 'height'"),
    ('kind = "contract_log"\naddress = "0x12"\n', "needs 'address'"),
    ('kind = "contract_log"\naddress = "0x' + "ab" * 20 + '"\ntopics = ["0x1"]\n', "topics"),
    ('kind = "mempool"\n', "'chain_height' or 'contract_log'"),
])
def test_a_bad_chain_monitor_is_refused_at_deploy(tmp_path, monitor, reason):
    path = _project_file(tmp_path, extra=f"[[monitors]]\n{monitor}")
    with pytest.raises(ProjectError, match=reason):
        ProjectStore(DataDir(tmp_path / "data")).deploy(path)
