"""Applets built with the public W3bstream AssemblyScript SDK run unchanged on w3gate's host:
each host function through the SDK-built abi-probe, and the hostile applet contained."""
from __future__ import annotations

import asyncio
import hashlib
import json

import pytest

from gateway.applets.abi import ENV_KEY_NOT_FOUND, NO_DB_CONTEXT, RESOURCE_NOT_FOUND, AppletInstance, EventMeta, HostError
from gateway.applets.module import inspect
from gateway.applets.pool import AppletEvent, Limits, ProjectWorker
from gateway.applets.state import ProjectState

T_PROBE = ("CREATE TABLE IF NOT EXISTS t_probe (f_id INTEGER, f_name TEXT, f_big INTEGER, f_value REAL, "
           "f_flag BOOLEAN)")


class StateHost:
    """The worker's host, in-process: KV and SQL in a real ProjectState, chain calls recorded."""

    def __init__(self, state: ProjectState) -> None:
        self.state, self.logs, self.mqtt, self.txs, self.metrics = state, [], [], [], []

    def log(self, level, message):
        self.logs.append((level, message))

    def kv_get(self, key):
        return self.state.kv_get(key)

    def kv_set(self, key, value):
        self.state.kv_set(key, value)

    def sql_exec(self, request):
        self.state.sql_exec(request)

    def sql_query(self, request):
        return self.state.sql_query(request)

    def env(self, key):
        return {"PROBE_TOPIC": "probe/out"}.get(key)

    def send_tx(self, chain_id, request, operator):
        self.txs.append((chain_id, request, operator))
        return "0x" + "cd" * 32

    def call_contract(self, chain_id, request):
        if request.get("to") == "0x" + "00" * 20:
            raise HostError("no code at that address")
        return bytes.fromhex("00" * 31 + "2a")

    def send_mqtt(self, topic, payload):
        self.mqtt.append((topic, payload))

    def api_call(self, request):
        return {"Status": "200 OK", "StatusCode": 200, "Proto": "HTTP/1.1", "Header": {}, "Body": ""}

    def submit_metrics(self, metrics):
        self.metrics.append(metrics)


@pytest.fixture
def probe(built_applets, tmp_path):
    state = ProjectState(tmp_path / "state.sqlite", schema=[T_PROBE])
    host = StateHost(state)
    yield AppletInstance((built_applets / "abi-probe.wasm").read_bytes(), host), host
    state.close()


def test_data_and_logs(probe):
    applet, host = probe
    assert applet.call("echo", b"\x00binary\xff") == (0, b"\x00binary\xff")
    assert applet.call("start", b"hello")[0] == 0
    assert any("payload=hello" in m for _, m in host.logs)
    assert applet.call("log_levels", b"")[0] == 0  # every level accepted, even 99 and -1


def test_kv_through_the_sdk(probe):
    applet, host = probe
    assert applet.call("kv_roundtrip", b"value")[0] == 0  # and the missing key gave 2
    assert applet.call("kv_get", b"probe:missing")[0] == RESOURCE_NOT_FOUND
    assert applet.call("kv_get", b"colour=blue") == (0, b"blue")
    assert [applet.call("kv_incr", b"")[0] for _ in range(3)] == [1, 2, 3]
    assert host.state.kv_get("probe:counter") == b"3"


def test_env(probe):
    applet, _ = probe
    assert applet.call("env_get", b"PROBE_TOPIC") == (0, b"probe/out")
    assert applet.call("env_get", b"NOPE")[0] == ENV_KEY_NOT_FOUND


def test_sql_with_w3bstream_statements_and_result_shaping(probe):
    applet, _ = probe
    assert applet.call("sql_roundtrip", b"", rid=7)[0] == 0
    row = json.loads(applet.call("sql_query", json.dumps({"statement": "SELECT * FROM t_probe WHERE f_id = ?",
                                                           "params": [{"int32": 7}]}).encode())[1])
    # typed as upstream's PostgreSQL returns them: the BOOLEAN written as true reads back true, not 1
    assert row == {"f_id": 7, "f_name": "probe", "f_big": 9007199254740993, "f_value": 21.5, "f_flag": True}
    insert = {"statement": "INSERT INTO t_probe (f_id, f_name) VALUES (?, ?)", "params": [{"int32": 8}, {"string": "b"}]}
    assert applet.call("sql_exec", json.dumps(insert).encode())[0] == 0
    rows = json.loads(applet.call("sql_query", b'{"statement": "SELECT f_id FROM t_probe ORDER BY f_id"}')[1])
    assert rows == [{"f_id": 7}, {"f_id": 8}]  # several rows: an array
    assert applet.call("sql_query", b'{"statement": "SELECT * FROM t_probe WHERE f_id = 99"}') == (0, b"")  # none: empty
    assert applet.call("sql_exec", b'{"statement": "INSERT INTO nowhere VALUES (1)"}')[0] == -1


def test_sql_results_keep_the_types_their_columns_declare(tmp_path):
    state = ProjectState(tmp_path / "s.sqlite", schema=[
        "CREATE TABLE t (id SERIAL, ok BOOLEAN, at TIMESTAMP, day DATE, v DOUBLE PRECISION, name VARCHAR(20), "
        "raw BYTEA, n BIGINT, gone TEXT)"])
    insert = {"statement": "INSERT INTO t (id, ok, at, day, v, name, raw, n, gone) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
              "params": [{"int32": 1}, {"bool": False}, {"time": "2026-11-30T18:00:00Z"}, {"string": "2026-11-30"},
                         {"float64": 0.5}, {"string": "x"}, {"bytes": "AAE="}, {"int64": 2 ** 53 + 1}, {"string": "y"}]}
    state.sql_exec(json.dumps(insert).encode())
    state.sql_exec(b'{"statement": "UPDATE t SET gone = NULL"}')
    row = json.loads(state.sql_query(b'{"statement": "SELECT * FROM t"}'))
    assert row == {"id": 1, "ok": False, "at": "2026-11-30T18:00:00Z", "day": "2026-11-30", "v": 0.5, "name": "x",
                   "raw": "AAE=", "n": 2 ** 53 + 1, "gone": None}
    assert json.loads(state.sql_query(b'{"statement": "SELECT ok OR 1 AS e FROM t"}')) == {"e": 1}  # an expression: SQLite's
    state.close()


def test_sql_without_a_database_is_code_9(built_applets, tmp_path):
    state = ProjectState(tmp_path / "s.sqlite")
    applet = AppletInstance((built_applets / "abi-probe.wasm").read_bytes(), StateHost(state))
    assert applet.call("sql_exec", b'{"statement": "SELECT 1"}')[0] == NO_DB_CONTEXT
    state.close()


def test_chain_mqtt_api_and_metrics(probe):
    applet, host = probe
    tx = {"to": "0x" + "11" * 20, "value": "0", "data": "40c10f19", "chainId": 4690}
    assert applet.call("send_tx", json.dumps(tx).encode()) == (0, b"0x" + b"cd" * 32)
    assert host.txs[0][0] == 4690 and host.txs[0][1]["data"] == "40c10f19"
    assert applet.call("send_tx_with_operator", json.dumps({**tx, "operatorName": "minter"}).encode())[0] == 0
    assert host.txs[1][2] == "minter"
    assert applet.call("call_contract", json.dumps({"to": "0x" + "11" * 20, "data": "70a08231"}).encode()) == \
        (0, b"0x" + b"00" * 31 + b"2a")
    assert applet.call("call_contract", json.dumps({"to": "0x" + "00" * 20, "data": "00"}).encode())[0] == -1
    assert applet.call("send_mqtt", b"hello")[0] == 0 and host.mqtt == [("probe/out", b"hello")]
    assert applet.call("metrics", b'{"score": 87}')[0] == 0 and host.metrics == [{"score": 87}]
    assert applet.call("metrics", b"[1, 2]")[0] == -1
    code, response = applet.call("api_call", b'{"Method": "GET", "Url": "/system/hello", "Header": {}, "Body": ""}')
    assert code == 0 and json.loads(response)["StatusCode"] == 200


def test_event_type_trace_and_abort(probe):
    applet, host = probe
    assert applet.call("event_type", b"", EventMeta(event_type="PEBBLE_DATA")) == (0, b"PEBBLE_DATA")
    assert applet.call("trace_seed", b"")[0] == 0
    assert any(m.startswith("trace: abi-probe trace") for _, m in host.logs)
    from gateway.applets.abi import GuestAbort
    with pytest.raises(GuestAbort, match="abi-probe abort: boom at .*abi-probe/index.ts:"):
        applet.call("trap_abort", b"boom")


def test_bad_pointers_are_refused_by_every_host_function(probe):
    applet, _ = probe
    count, report = applet.call("bad_pointers", b"")
    assert count == 0, report


def test_without_alloc_returned_data_is_code_5(built_applets, tmp_path):
    state = ProjectState(tmp_path / "s.sqlite")
    applet = AppletInstance((built_applets / "no-alloc.wasm").read_bytes(), StateHost(state))
    assert applet.call("start", b"{}")[0] == 5
    assert applet.call("get_db", b"")[0] == 5  # the key exists (not 2), but it cannot be handed over
    state.close()


def run_hostile(built_applets, tmp_path, handlers: list[str]) -> tuple[bytes, list]:
    """The hostile applet's ``handlers`` as one batch in a worker with tight limits: (module, results)."""
    wasm = (built_applets / "hostile.wasm").read_bytes()
    sha = hashlib.sha256(wasm).hexdigest()
    (tmp_path / f"{sha}.wasm").write_bytes(wasm)

    async def go():
        worker = ProjectWorker("hostile", modules_dir=tmp_path, state_path=tmp_path / "state.sqlite",
                               limits=Limits(time_s=0.5, max_pages=256, address_space_mb=768),
                               stderr_path=tmp_path / "worker.stderr")
        try:
            return await worker.run([AppletEvent(f"e{i}", sha, h, b"") for i, h in enumerate(handlers)])
        finally:
            await worker.close()
    return wasm, asyncio.run(go())


def test_hostile_handlers_are_contained_while_the_others_keep_running(built_applets, tmp_path):
    handlers = ["well_behaved", "spin", "well_behaved", "memory_bomb", "well_behaved", "alloc_bomb", "well_behaved",
                "deep_recursion", "trap", "div_zero", "well_behaved"]
    wasm, results = run_hostile(built_applets, tmp_path, handlers)
    outcome = {h + str(i): (r.code, r.error) for i, (h, r) in enumerate(zip(handlers, results))}
    for name in ("well_behaved0", "well_behaved2", "well_behaved4", "well_behaved6", "well_behaved10"):
        assert outcome[name] == (0, None), name  # nothing before them harmed them
    code, error = outcome["spin1"]
    assert code == -1 and "time limit: the event ran longer than 0.5 s and was stopped" in error
    # memory_bomb grows 16 pages at a time from its 1 page: memory.grow returned -1 at the
    # 256-page cap (241 + 16 > 256), the guest saw it and returned the pages it added
    start_pages = inspect(wasm).memory_min_pages
    added, error = outcome["memory_bomb3"]
    assert error is None and 256 - 16 < start_pages + added <= 256
    # alloc_bomb leaves the failure to AssemblyScript's allocator, which traps when it cannot grow
    code, error = outcome["alloc_bomb5"]
    assert code == -1 and error.startswith("memory limit: memory.grow past the cap of 256 pages (16 MiB) "
                                           "was refused, then the applet failed: trap:")
    assert outcome["deep_recursion7"] == (-1, "trap: [trap] stack overflow")
    assert outcome["trap8"] == (-1, "trap: [trap] unreachable executed")
    assert outcome["div_zero9"] == (-1, "trap: [trap] integer divide by zero")


def test_in_a_mixed_batch_every_hostile_event_fails_alone(built_applets, tmp_path):
    hostile = ["memory_bomb", "alloc_bomb", "deep_recursion", "trap", "div_zero"]
    handlers = [hostile[i // 8 % len(hostile)] if i % 8 == 7 else "well_behaved" for i in range(200)]
    handlers[50] = handlers[150] = "spin"  # each kills its worker: the others of its batch run again
    _, results = run_hostile(built_applets, tmp_path, handlers)
    innocent = [(i, r.code, r.error) for i, (h, r) in enumerate(zip(handlers, results))
                if h == "well_behaved" and (r.code, r.error) != (0, None)]
    assert innocent == []
    assert all(r.code == -1 for h, r in zip(handlers, results) if h not in ("well_behaved", "memory_bomb"))
