"""Applets run in a worker process: runaway, trapping and growing applets are contained, every
event gets a result, state survives restarts and failed events leave none."""
from __future__ import annotations

import asyncio
import hashlib
import json
import time

import pytest

from gateway.applets.abi import EventMeta
from gateway.applets.pool import AppletEvent, Limits, ProjectWorker
from tests.support.wat import assemble


@pytest.fixture(scope="module")
def modules(tmp_path_factory):
    """The probe applet, deployed content-addressed as the runtime keeps modules."""
    directory = tmp_path_factory.mktemp("modules")
    wasm = assemble("probe", directory)
    sha = hashlib.sha256(wasm).hexdigest()
    (directory / f"{sha}.wasm").write_bytes(wasm)
    return directory, sha


def _events(sha: str, handlers: list[str], payload: bytes = b"x") -> list[AppletEvent]:
    return [AppletEvent(f"e{i}", sha, h, payload, EventMeta(event_type="DEFAULT")) for i, h in enumerate(handlers)]


def _run(coro):
    return asyncio.run(coro)


def _worker(modules, tmp_path, **kwargs) -> ProjectWorker:
    directory, _ = modules
    return ProjectWorker("demo", modules_dir=directory, state_path=tmp_path / "state.sqlite",
                         stderr_path=tmp_path / "worker.stderr", log_path=tmp_path / "applet.log", **kwargs)


def test_a_batch_runs_in_order_and_kv_is_committed(modules, tmp_path):
    _, sha = modules

    async def go():
        worker = _worker(modules, tmp_path)
        try:
            return await worker.run(_events(sha, ["count"] * 5 + ["start"], b"hello"))
        finally:
            await worker.close()
    results = _run(go())
    assert [r.code for r in results] == [1, 2, 3, 4, 5, 0]
    assert results[-1].return_value == b"hello"
    log = [json.loads(line) for line in (tmp_path / "applet.log").read_text().splitlines()]
    assert [(e["level"], e["msg"]) for e in log] == [("info", "hello")]

    async def again():  # a new worker process, the same project state on disk
        worker = _worker(modules, tmp_path)
        try:
            return await worker.run(_events(sha, ["count"]))
        finally:
            await worker.close()
    assert _run(again())[0].code == 6


def test_a_spinning_applet_is_stopped_at_its_limit_and_the_others_still_run(modules, tmp_path):
    _, sha = modules

    async def go():
        worker = _worker(modules, tmp_path, limits=Limits(time_s=0.3))
        try:
            started = time.monotonic()
            results = await worker.run(_events(sha, ["count", "spin", "count", "start"], b"after"))
            return results, time.monotonic() - started, worker.restarts
        finally:
            await worker.close()
    results, elapsed, restarts = _run(go())
    assert [r.code for r in results] == [1, -1, 2, 0]
    assert "time limit" in results[1].error
    assert results[3].return_value == b"after"
    assert restarts >= 1 and elapsed < 5


def test_traps_are_results_and_undo_the_events_state(modules, tmp_path):
    _, sha = modules

    async def go():
        worker = _worker(modules, tmp_path)
        try:
            return await worker.run(_events(sha, ["count", "count_then_trap", "divide_by_zero",
                                                  "deep_recursion", "count", "no_such_handler"]))
        finally:
            await worker.close()
    results = _run(go())
    assert [r.code for r in results] == [1, -1, -1, -1, 2, 1]  # the trapped increment is gone
    assert "unreachable" in results[1].error
    assert "divide by zero" in results[2].error
    assert "stack" in results[3].error.lower()
    assert "no handler 'no_such_handler'" in results[5].error


def test_memory_growth_stops_at_the_cap_inside_the_guest(modules, tmp_path):
    _, sha = modules

    async def go():
        worker = _worker(modules, tmp_path, limits=Limits(max_pages=16))
        try:
            return await worker.run(_events(sha, ["grow", "count"])), worker.restarts
        finally:
            await worker.close()
    (grow, after), restarts = _run(go())
    # probe's memory declares a maximum of 64 pages: the cap lowered it to 16, so memory.grow
    # returned -1 at 16 pages and the guest, which copes with that, reports its memory size
    assert (grow.code, grow.error) == (16, None)
    assert after.code == 1 and after.error is None and restarts == 0


@pytest.mark.parametrize("reuse, expected", [
    (False, [10101, 10101, 10101, 10101]),  # W3bstream: every event sees a freshly instantiated module
    (True, [10101, 10202, 160303, 160404]),  # the project's opt-in: memory and globals carry over
])
def test_every_event_sees_a_fresh_instance_unless_the_project_reuses_them(modules, tmp_path, reuse, expected):
    _, sha = modules

    async def go():
        worker = _worker(modules, tmp_path, limits=Limits(max_pages=16), reuse=reuse)
        try:
            return await worker.run(_events(sha, ["remember", "remember", "grow", "remember", "remember"]))
        finally:
            await worker.close()
    results = _run(go())
    assert [r.code for r in results[:2] + results[3:]] == expected and results[2].code == 16
    assert all(r.error is None for r in results)


def test_a_transaction_is_not_sent_twice_when_its_batch_is_run_again(modules, tmp_path):
    _, sha = modules
    sent = []

    async def host_call(fn, args):
        assert fn == "send_tx"
        sent.append(args)
        return "0x" + f"{len(sent):064x}"

    async def go():
        worker = _worker(modules, tmp_path, limits=Limits(time_s=0.3), host_call=host_call)
        try:
            payload = json.dumps({"to": "0x" + "22" * 20, "value": "0", "data": "00"}).encode()
            events = [AppletEvent("tx-event", sha, "send_tx", payload), AppletEvent("spin", sha, "spin", b"")]
            return await worker.run(events)
        finally:
            await worker.close()
    tx, spin = _run(go())
    assert len(sent) == 1 and sent[0]["chain_id"] == 4690
    assert tx.code == 0 and tx.return_value == b"0x" + b"0" * 63 + b"1"
    assert "time limit" in spin.error


def test_mqtt_messages_come_back_with_the_result(modules, tmp_path):
    _, sha = modules

    async def go():
        worker = _worker(modules, tmp_path)
        try:
            return await worker.run(_events(sha, ["mqtt"], b"geofence!"))
        finally:
            await worker.close()
    assert _run(go())[0].mqtt == [("topic/out", b"geofence!")]
