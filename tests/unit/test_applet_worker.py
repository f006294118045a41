"""Applets run in a worker process: runaway, trapping and growing applets are contained, every
event gets a result, state survives restarts and failed events leave none."""
from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import time

import pytest

from gateway.applets.abi import EventMeta
from gateway.applets.pool import AppletEvent, HostAnswer, Limits, ProjectWorker
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
    assert [r.code for r in results] == [1, -1, -1, -1, 2, -1]  # the trapped increment is gone
    assert "unreachable" in results[1].error
    assert "divide by zero" in results[2].error
    assert "stack" in results[3].error.lower()
    assert results[5].error == "func not imported: the applet exports no handler 'no_such_handler'"  # upstream's words


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


def _effects_log():
    carried: list[tuple[list[dict], list[dict]]] = []

    async def on_effects(committed, voided):
        carried.append(([{k: v for k, v in e.items() if k != "id"} for e in committed], voided))
    return carried, on_effects


def test_mqtt_messages_are_sent_after_their_commit_and_only_for_kept_events(modules, tmp_path):
    _, sha = modules
    carried, on_effects = _effects_log()

    async def go():
        worker = _worker(modules, tmp_path, on_effects=on_effects)
        try:
            results = await worker.run(_events(sha, ["mqtt", "send_tx_then_trap"], b"geofence!"))
        finally:
            await worker.close()
        again = _worker(modules, tmp_path, on_effects=on_effects)  # after a clean stop: nothing is left to do
        try:
            return results, await again.recover()
        finally:
            await again.close()
    results, left = _run(go())
    assert results[0].code == 0 and "trap" in results[1].error
    message = {"kind": "mqtt", "topic": "topic/out", "payload": base64.b64encode(b"geofence!").decode()}
    assert carried == [([message], [])] and left == 0


def test_effects_a_crash_kept_from_happening_are_carried_out_once_at_the_next_start(modules, tmp_path):
    _, sha = modules
    carried, on_effects = _effects_log()

    async def crash(committed, voided):
        raise OSError("the gateway died between the commit and the send")

    async def go():
        worker = _worker(modules, tmp_path, on_effects=crash)
        try:
            await worker.run(_events(sha, ["mqtt", "count"], b"once"))
        finally:
            await worker.close()
        restarted = _worker(modules, tmp_path, on_effects=on_effects)
        try:
            first = await restarted.recover()
            await restarted.run(_events(sha, ["count"]))  # its commit drops what recover carried out
            second = await restarted.recover()
        finally:
            await restarted.close()
        return first, second
    assert _run(go()) == (1, 0)
    assert [c[0][0]["payload"] for c in carried] == [base64.b64encode(b"once").decode()]


def test_a_transaction_is_sent_only_if_its_event_is_kept_and_voided_otherwise(modules, tmp_path):
    _, sha = modules
    carried, on_effects = _effects_log()
    signed = []

    async def host_call(fn, args):  # the chain holds what it signs until the effects say (gateway/chain)
        signed.append(args["event"])
        tx_hash = "0x" + f"{len(signed):064x}"
        return HostAnswer(tx_hash, {"kind": "tx", "hash": tx_hash, "operator": ""})

    async def go():
        worker = _worker(modules, tmp_path, host_call=host_call, on_effects=on_effects)
        try:
            payload = json.dumps({"to": "0x" + "22" * 20, "value": "0", "data": "00"}).encode()
            return await worker.run([AppletEvent("kept", sha, "send_tx", payload),
                                     AppletEvent("failed", sha, "send_tx_then_trap", payload)])
        finally:
            await worker.close()
    kept, failed = _run(go())
    assert kept.code == 0 and failed.code == -1 and "trap" in failed.error
    tx = lambda n: {"kind": "tx", "hash": "0x" + f"{n:064x}", "operator": ""}  # noqa: E731
    assert carried == [([tx(1)], [tx(2)])]
