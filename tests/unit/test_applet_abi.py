"""The W3bstream v1 host ABI on wasm3, one host function at a time (module in-process)."""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess

import pytest

from gateway.applets.abi import (ENV_KEY_NOT_FOUND, FAILED, RESOURCE_NOT_FOUND, TRANS_DATA_TO_VM_FAILED,
                                 AppletInstance, EventMeta, HostError, MemoryLimit, check_module)
from gateway.applets.module import ModuleError, cap_memory, inspect
from tests.support.wat import assemble


class DictHost:
    """A host with its state in dicts: what the ABI does, without processes or files."""

    def __init__(self) -> None:
        self.logs, self.kv, self.mqtt, self.txs = [], {}, [], []
        self.environment = {"GEOFENCE_RADIUS_M": "500"}

    def log(self, level, message):
        self.logs.append((level, message))

    def kv_get(self, key):
        return self.kv.get(key)

    def kv_set(self, key, value):
        self.kv[key] = value

    def env(self, key):
        return self.environment.get(key)

    def send_tx(self, chain_id, request, operator):
        if request.get("to") == "0xdead":
            raise HostError("execution reverted")
        self.txs.append((chain_id, request))
        return "0x" + "ab" * 32

    def send_mqtt(self, topic, payload):
        self.mqtt.append((topic, payload))


@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    return assemble("probe", tmp_path_factory.mktemp("wasm"))


@pytest.fixture
def host():
    return DictHost()


@pytest.fixture
def applet(probe, host):
    return AppletInstance(probe, host)


def test_the_payload_reaches_the_applet_and_its_value_comes_back(applet, host):
    assert applet.call("start", b'{"temperature": 21.5}') == (0, b'{"temperature": 21.5}')
    assert host.logs == [("info", '{"temperature": 21.5}')]


def test_an_unknown_rid_is_code_2(applet):
    assert applet.call("bad_rid", b"x") == (RESOURCE_NOT_FOUND, None)


def test_a_pointer_outside_memory_is_refused_not_a_crash(applet, host):
    assert applet.call("bad_pointer", b"") == (FAILED, None)
    assert host.logs == []


def test_kv_missing_key_is_code_2_and_values_persist_in_the_host(applet, host):
    assert [applet.call("count", b"")[0] for _ in range(3)] == [1, 2, 3]
    assert host.kv == {"count": b"\x03"}


def test_env_returns_the_value_or_code_8(applet):
    assert applet.call("env", b"GEOFENCE_RADIUS_M") == (0, b"500")
    assert applet.call("env", b"NOT_SET") == (ENV_KEY_NOT_FOUND, None)


def test_send_tx_returns_the_hash_or_minus_one(applet, host):
    request = {"to": "0x" + "11" * 20, "value": "0", "data": "40c10f19"}
    assert applet.call("send_tx", json.dumps(request).encode()) == (0, b"0x" + b"ab" * 32)
    assert host.txs == [(4690, request)]
    assert applet.call("send_tx", b'{"to": "0xdead"}')[0] == FAILED
    assert applet.call("send_tx", b"not json")[0] == FAILED
    assert any("execution reverted" in m for _, m in host.logs)


def test_mqtt_messages_go_to_the_host(applet, host):
    assert applet.call("mqtt", b"alert!") == (0, None)
    assert host.mqtt == [("topic/out", b"alert!")]


def test_the_event_type_is_available_beyond_v1(applet):
    assert applet.call("event_type", b"", EventMeta(event_type="PEBBLE_DATA")) == (0, b"PEBBLE_DATA")


def test_traps_surface_as_errors_and_the_instance_stays_usable(applet):
    for handler in ("divide_by_zero", "deep_recursion"):
        with pytest.raises(RuntimeError):
            applet.call(handler, b"")
    assert applet.call("start", b"still here") == (0, b"still here")


def test_without_alloc_every_returned_value_is_code_5(tmp_path):
    applet = AppletInstance(assemble("noalloc", tmp_path), DictHost())
    assert applet.call("start", b"payload") == (TRANS_DATA_TO_VM_FAILED, None)


def test_an_unknown_import_is_refused_with_its_name(tmp_path):
    wasm = assemble("unknown_import", tmp_path)
    with pytest.raises(ModuleError) as refused:
        check_module(inspect(wasm))
    assert "env.ws_get_mqtt_msg" in str(refused.value)
    assert "env.ws_log i(ii) (expected i(iii))" in str(refused.value)


def test_inspect_reads_imports_exports_and_memory(probe):
    info = inspect(probe)
    assert ("env", "ws_get_db", "i(iiii)") in [(i.module, i.name, i.signature) for i in info.imports]
    assert info.exports["alloc"] == "func" and info.exports["memory"] == "memory"
    assert (info.memory_min_pages, info.memory_max_pages) == (1, 64)


def test_garbage_is_not_a_module():
    with pytest.raises(ModuleError):
        inspect(b"\0asm\x01\0\0\0\x01\xff\xff\xff\xff\x0f")
    with pytest.raises(ModuleError):
        inspect(b"hello")


def test_the_wasi_functions_tinygo_applets_import(tmp_path):
    import time

    from gateway.applets.abi import GuestAbort

    host = DictHost()
    applet = AppletInstance(assemble("wasi", tmp_path), host)
    assert applet.call("print", b"") == (0, None)
    assert host.logs == [("info", "hello from tinygo")]  # stdout is the applet's log
    assert applet.call("written", b"")[0] == 18
    assert abs(applet.call("now", b"")[0] - (int(time.time()) & 0x7FFFFFFF)) <= 2
    assert applet.call("args_and_env", b"")[0] == 0  # no args, no env, as W3bstream links WASI
    assert applet.call("random", b"")[0] == 0
    assert applet.call("bad_fd", b"")[0] == 8  # EBADF: there are no files
    with pytest.raises(GuestAbort, match=r"proc_exit\(3\)"):
        applet.call("exit", b"")


def test_the_rest_of_wasi_answers_as_a_sandbox_without_files_or_sockets(tmp_path):
    import time

    from gateway.applets.abi import HOST_FUNCTIONS

    applet = AppletInstance(assemble("wasi_sandbox", tmp_path), DictHost())
    assert applet.call("read_stdin", b"")[0] == 0  # empty standard input: 0 bytes, end of file
    assert applet.call("no_preopens", b"")[0] == 8  # EBADF: no directory is preopened
    assert applet.call("open_file", b"")[0] == 8  # so no path can be opened
    assert applet.call("stdout_is_a_terminal", b"")[0] == 2  # a character device
    assert applet.call("seek_stdout", b"")[0] == 70  # ESPIPE
    assert applet.call("close_file", b"")[0] == 8
    assert applet.call("accept", b"")[0] == 8  # no sockets
    assert applet.call("raise", b"")[0] == 52  # ENOSYS
    started = time.monotonic()
    assert applet.call("sleep", b"")[0] == 42 and time.monotonic() - started >= 0.02
    preview1 = {name for module, name in HOST_FUNCTIONS if module == "wasi_snapshot_preview1"}
    assert len(preview1) == 46  # every function of WASI preview1 (sock_accept included) links


# --- the memory cap holds while the guest runs --------------------------------------------------

def _wat(source: str, tmp_path) -> bytes:
    """A module from WAT text, assembled by wabt's wat2wasm."""
    name = hashlib.sha256(source.encode()).hexdigest()[:12]
    (tmp_path / f"{name}.wat").write_text(source)
    subprocess.run([shutil.which("wat2wasm") or "wat2wasm", str(tmp_path / f"{name}.wat"), "-o",
                    str(tmp_path / f"{name}.wasm")], check=True)
    return (tmp_path / f"{name}.wasm").read_bytes()


def _grower(tmp_path, memory: str = "1") -> bytes:
    """A module whose memory is declared ``(memory <memory>)`` and handlers that grow it."""
    return _wat(f"""(module
      (memory (export "memory") {memory})
      ;; grow a page at a time until refused: the page count reached
      (func (export "grow_all") (param $rid i32) (result i32)
        (loop $l (br_if $l (i32.ne (memory.grow (i32.const 1)) (i32.const -1))))
        (memory.size))
      ;; one grow of 1000 pages: its result, -1 when refused
      (func (export "grow_huge") (param $rid i32) (result i32) (memory.grow (i32.const 1000)))
      ;; an allocator that traps when memory cannot grow, as AssemblyScript's does
      (func (export "alloc_or_trap") (param $rid i32) (result i32)
        (if (i32.eq (memory.grow (i32.const 100)) (i32.const -1)) (then unreachable))
        (memory.size))
      (func (export "div_zero") (param $rid i32) (result i32) (i32.div_u (i32.const 1) (i32.const 0))))""",
                tmp_path)


@pytest.mark.parametrize("declared, max_pages, reached", [
    ("1", 8, 8),  # no maximum declared: the cap becomes it
    ("1 64", 8, 8),  # a larger maximum is lowered to the cap
    ("1 65536", 300, 300),  # a cap past 127 pages (two LEB128 bytes)
    ("1 4", 8, 4),  # a smaller maximum is the module's own, and kept
])
def test_memory_never_grows_past_the_cap_or_the_declared_maximum(tmp_path, declared, max_pages, reached):
    applet = AppletInstance(_grower(tmp_path, declared), DictHost(), max_pages=max_pages)
    assert applet.call("grow_all", b"") == (reached, None)  # memory.grow returned -1 at the limit
    assert applet.call("grow_huge", b"") == (-1, None)  # the guest sees the refusal and carries on
    assert applet.memory_pages == reached == applet.memory_cap


def test_a_trap_after_a_refused_grow_is_a_memory_limit_failure(tmp_path):
    applet = AppletInstance(_grower(tmp_path), DictHost(), max_pages=128)
    assert applet.call("alloc_or_trap", b"") == (101, None)  # room for 100 more pages: no failure
    with pytest.raises(MemoryLimit, match=r"memory.grow past the cap of 128 pages \(8 MiB\) was refused, "
                                          r"then the applet failed: trap: \[trap\] unreachable executed"):
        applet.call("alloc_or_trap", b"")


def test_a_trap_unrelated_to_memory_is_a_plain_trap_even_after_a_refused_grow(tmp_path):
    applet = AppletInstance(_grower(tmp_path), DictHost(), max_pages=8)
    assert applet.call("grow_huge", b"") == (-1, None)  # refused in an earlier event, which coped
    with pytest.raises(RuntimeError, match="divide by zero") as trapped:
        applet.call("div_zero", b"")
    assert not isinstance(trapped.value, MemoryLimit)


def test_a_module_that_cannot_fit_under_the_cap_is_refused(tmp_path):
    with pytest.raises(ModuleError, match="needs 16 memory pages at start, the limit is 8"):
        AppletInstance(_grower(tmp_path, "16"), DictHost(), max_pages=8)
    imported = _wat('(module (import "env" "memory" (memory 1)) (export "memory" (memory 0)))', tmp_path)
    with pytest.raises(ModuleError, match="imports its memory"):
        cap_memory(imported, 8)
