"""The AssemblyScript applets in applets/ build with the pinned asc and SDK, import only the
W3bstream v1 host ABI (plus w3gate's ws_get_event_type), export what a node needs, and the
example applets behave as their READMEs say when run on wasm3 with minimal host stubs.
(The real host is gateway/applets/; these stubs only smoke-test the builds.)"""
from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "applets" / "build"

V1_ABI = {
    "env.ws_log", "env.ws_get_data", "env.ws_set_data", "env.ws_get_db", "env.ws_set_db",
    "env.ws_set_sql_db", "env.ws_get_sql_db", "env.ws_send_tx", "env.ws_send_tx_with_operator",
    "env.ws_call_contract", "env.ws_get_env", "env.ws_send_mqtt_msg", "env.ws_api_call",
    "stat.ws_submit_metrics", "env.abort", "env.trace", "env.seed",
    "env.ws_get_event_type",  # w3gate extension (rc54's signature)
}

# applet -> handlers it must export (besides memory and alloc)
HANDLERS = {
    "pebble-validator": {"start"},
    "geofence-alert": {"start"},
    "erc20-reward": {"start"},
    "abi-probe": {"start", "log_levels", "echo", "kv_roundtrip", "kv_get", "kv_incr", "env_get",
                  "sql_exec", "sql_query", "sql_roundtrip", "send_mqtt", "send_tx",
                  "send_tx_with_operator", "call_contract", "api_call", "metrics", "event_type",
                  "bad_pointers", "trace_seed", "trap_abort"},
    "hostile": {"start", "well_behaved", "spin", "memory_bomb", "alloc_bomb", "deep_recursion", "trap",
                "div_zero"},
    "no-alloc": {"start", "get_db"},
    "unknown-import": {"start"},
    "log-kv": {"start"},
}


@pytest.fixture(scope="module")
def manifest(built_applets) -> dict:
    """applets/build/manifest.json, once the build brought every applet up to date."""
    return json.loads((built_applets / "manifest.json").read_text())


def test_every_applet_is_built_and_listed(manifest):
    assert set(manifest) == set(HANDLERS)
    for name, entry in manifest.items():
        wasm = (BUILD / entry["file"]).read_bytes()
        assert wasm[:4] == b"\0asm"
        assert entry["size"] == len(wasm)
        assert entry["sha256"] == hashlib.sha256(wasm).hexdigest()


@pytest.mark.parametrize("name", sorted(HANDLERS))
def test_imports_stay_within_the_v1_abi(manifest, name):
    imports = set(manifest[name]["imports"])
    if name == "unknown-import":
        assert imports - V1_ABI == {"env.ws_get_mqtt_msg"}
    else:
        assert imports <= V1_ABI, imports - V1_ABI
    # Signatures as the v1 node links them (pywasm3 notation).
    types = manifest[name]["import_types"]
    for imp, sig in {"env.ws_log": "i(iii)", "env.ws_get_data": "i(iii)", "env.ws_get_db": "i(iiii)",
                     "env.ws_send_tx": "i(iiiii)", "env.abort": "v(iiii)", "env.seed": "F()",
                     "env.trace": "v(iiFFFFF)"}.items():
        if imp in types:
            assert types[imp] == sig, imp


@pytest.mark.parametrize("name", sorted(HANDLERS))
def test_exports_memory_alloc_and_handlers(manifest, name):
    exports = set(manifest[name]["exports"])
    assert "memory" in exports
    assert ("alloc" in exports) == (name != "no-alloc")
    assert HANDLERS[name] <= exports


# --- smoke runs on wasm3 ---------------------------------------------------------------------


class StubHost:
    """Just enough of the v1 host to run the example applets: KV, env, log, MQTT and tx stubs."""

    def __init__(self, wasm: bytes, imports: dict[str, str], env: dict[str, str] | None = None):
        wasm3 = pytest.importorskip("wasm3")
        self.kv: dict[bytes, bytes] = {}
        self.env = env or {}
        self.logs: list[tuple[int, str]] = []
        self.mqtt: list[tuple[str, str]] = []
        self.txs: list[tuple[int, dict]] = []
        self.payload = b""
        self._env = wasm3.Environment()
        self.runtime = self._env.new_runtime(256 * 1024)
        module = self._env.parse_module(wasm)
        self.runtime.load(module)  # load before linking (pywasm3)
        for name, sig in imports.items():
            ns, field = name.split(".")
            module.link_function(ns, field, sig, getattr(self, field, self._unsupported))

    def _unsupported(self, *args):
        return -1

    def mem(self):
        return self.runtime.get_memory(0)  # fresh view each time: memory may have moved

    def read(self, ptr: int, size: int) -> bytes:
        return bytes(self.mem()[ptr:ptr + size])

    def give(self, data: bytes, ptr_ptr: int, len_ptr: int) -> int:
        addr = self.runtime.find_function("alloc")(len(data))
        mem = self.mem()
        mem[addr:addr + len(data)] = data
        mem[ptr_ptr:ptr_ptr + 4] = struct.pack("<I", addr)
        mem[len_ptr:len_ptr + 4] = struct.pack("<I", len(data))
        return 0

    def abort(self, msg, file, line, col):
        def as_string(ptr):
            size = struct.unpack("<I", self.read(ptr - 4, 4))[0] if ptr >= 4 else 0
            return self.read(ptr, size).decode("utf-16-le")
        raise RuntimeError(f"abort: {as_string(msg)} at {as_string(file)}:{line}:{col}")

    def ws_log(self, level, ptr, size):
        self.logs.append((level, self.read(ptr, size).decode()))
        return 0

    def ws_get_data(self, rid, ptr_ptr, len_ptr):
        return self.give(self.payload, ptr_ptr, len_ptr)

    def ws_get_db(self, kptr, klen, ptr_ptr, len_ptr):
        key = self.read(kptr, klen)
        return self.give(self.kv[key], ptr_ptr, len_ptr) if key in self.kv else 2

    def ws_set_db(self, kptr, klen, vptr, vlen):
        self.kv[self.read(kptr, klen)] = self.read(vptr, vlen)
        return 0

    def ws_get_env(self, kptr, klen, ptr_ptr, len_ptr):
        key = self.read(kptr, klen).decode()
        return self.give(self.env[key].encode(), ptr_ptr, len_ptr) if key in self.env else 8

    def ws_send_mqtt_msg(self, tptr, tlen, mptr, mlen):
        self.mqtt.append((self.read(tptr, tlen).decode(), self.read(mptr, mlen).decode()))
        return 0

    def ws_send_tx(self, chain_id, ptr, size, ptr_ptr, len_ptr):
        self.txs.append((chain_id, json.loads(self.read(ptr, size))))
        return self.give(b"0x" + b"ab" * 32, ptr_ptr, len_ptr)

    def run(self, payload: dict | bytes, handler: str = "start", rid: int = 1) -> int:
        self.payload = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        return self.runtime.find_function(handler)(rid)


def host_for(manifest, name, env=None) -> StubHost:
    entry = manifest[name]
    return StubHost((BUILD / entry["file"]).read_bytes(), entry["import_types"], env)


def pebble(reading: dict, device: str = "351358810263514", **extra) -> dict:
    return {"device": device, "kind": "data", "timestamp": 1700000000, "received": 1700000000.25,
            "trust": "secure-element", "reading": reading, **extra}


def test_every_module_loads_on_wasm3(manifest):
    for name in manifest:
        host = host_for(manifest, name)
        for handler in HANDLERS[name]:
            host.runtime.find_function(handler)  # compiles lazily; runs the AS start section


def test_pebble_validator_flags_and_keeps_statistics(manifest):
    host = host_for(manifest, "pebble-validator")
    ok = {"temperature": 21.5, "humidity": 45.1, "pressure": 1013.2, "vbat": 4.1, "gps_fix": True}
    assert host.run(pebble(ok)) == 0
    assert host.run(pebble({"temperature": 19, "vbat": 4})) == 0  # integers, missing channels
    assert host.run(pebble({**ok, "temperature": 120.0, "vbat": 2.5})) == 1
    flagged = host.logs[-1]
    assert flagged[0] == 3 and "351358810263514" in flagged[1]
    assert "temperature=120" in flagged[1] and "vbat=2.5" in flagged[1] and "humidity" not in flagged[1]
    stats = json.loads(host.kv[b"stats:351358810263514"])
    assert stats == {"count": 3, "flagged": 1, "min_t": 19.0, "max_t": 21.5, "sum_t": 40.5, "n_t": 2}
    assert host.run(b"not json") == 2
    assert host.run({"kind": "data"}) == 2
    assert host.run({**pebble({}), "kind": "confirm"}) == 2  # not a reading: not counted
    assert json.loads(host.kv[b"stats:351358810263514"])["count"] == 3


def test_geofence_alerts_once_per_exit(manifest):
    env = {"GEOFENCE_LAT": "52.52", "GEOFENCE_LON": "13.405", "GEOFENCE_RADIUS_M": "1000"}
    host = host_for(manifest, "geofence-alert", env)
    inside = {"gps_fix": True, "latitude": 52.521, "longitude": 13.405}
    outside = {"gps_fix": True, "latitude": 52.55, "longitude": 13.405}  # ~3.3 km north
    assert host.run(pebble(inside)) == 0 and host.mqtt == []
    assert host.run(pebble(outside)) == 0
    assert host.run(pebble(outside)) == 0
    assert host.run(pebble({**outside, "gps_fix": False})) == 0
    assert len(host.mqtt) == 1
    topic, message = host.mqtt[0]
    assert topic == "backend/351358810263514/alert"
    alert = json.loads(message)
    assert alert["device"] == "351358810263514" and alert["latitude"] == 52.55
    assert 3300 < alert["distance_m"] < 3400
    assert host.run(pebble(inside)) == 0
    assert "back inside" in host.logs[-1][1]
    assert host.kv[b"geofence:351358810263514"] == b"in"
    host.env.clear()
    assert host.run(pebble(outside)) == 4  # no config


def test_erc20_reward_mints_every_n_valid_readings(manifest):
    owner = "0x" + "12" * 20
    env = {"TOKEN_ADDRESS": "0x" + "Ab" * 20, "CHAIN_ID": "31337", "REWARD_EVERY": "3"}
    host = host_for(manifest, "erc20-reward", env)
    good = {"temperature": 21.5, "vbat": 4.1}
    codes = [host.run(pebble(good, owner=owner)) for _ in range(5)]
    codes.append(host.run(pebble({"temperature": 99.0}, owner=owner)))  # not counted
    codes.append(host.run(pebble(good, owner=owner)))
    assert codes == [0, 0, 0, 0, 0, 1, 0]
    assert len(host.txs) == 2
    chain_id, tx = host.txs[0]
    assert chain_id == 31337 and tx["to"] == "0x" + "ab" * 20 and tx["value"] == "0"
    assert tx["data"] == "40c10f19" + "00" * 12 + "12" * 20 + f"{10**18:064x}"
    tally = json.loads(host.kv[b"reward:351358810263514"])
    assert tally == {"valid": 6, "paid": 2, "last_tx": "0x" + "ab" * 32}
    assert ("0x" + "ab" * 32) in host.logs[-1][1]
