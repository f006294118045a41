"""Fuzz targets: every decoder of outside input, and the contract each must keep.

A target takes bytes and either returns or raises the typed error its layer promises
(``W3gateError``: a ``Rejection``, ``CodecError``, ``ConfigError``, ``ProjectError`` ...). Any other
exception is a bug the fuzzer reports. Each target has a structure-aware hypothesis strategy
(valid protobuf, JSON, frame and TOML shapes carrying hostile values), used by the bounded run in
the default tests and as the seed corpus of the long coverage-guided run (``python -m tests.fuzz``).
"""
from __future__ import annotations

import atexit
import hashlib
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from hypothesis import strategies as st

from device_fw import frame as wire
from gateway.codec import pebble
from gateway.errors import W3gateError
from gateway.verify.registry import Registry, make_device
from gateway.verify.secp256k1 import Key
from gateway.verify.verifier import Verifier

NOW = 1_764_500_000  # the verifier's clock in every target, so timestamps near it pass the window
IMEI = "350916067070535"
G1_IMEI = "352656100858393"
_PRIVATE = bytes(range(1, 33))


@dataclass(frozen=True)
class Target:
    name: str
    run: Callable[[bytes], object]
    strategy: st.SearchStrategy[bytes]


_workdir = Path(tempfile.mkdtemp(prefix="w3gate-fuzz-"))


@atexit.register
def _cleanup() -> None:
    if _node_state:
        _node_state["node"].checker.close()
        _node_state["node"].committer.close()
    shutil.rmtree(_workdir, ignore_errors=True)


def _verifier() -> Verifier:
    from coincurve import PrivateKey

    registry = Registry(_workdir / "devices.json")
    public = PrivateKey(_PRIVATE).public_key.format(compressed=False).hex()
    owner = "0x" + "11" * 20
    if registry.get(IMEI) is None:
        registry.add(make_device(IMEI, public_key=public, owner=owner))
        registry.add(make_device(G1_IMEI, address=Key(bytes.fromhex(public)).address, profile="g1", owner=owner))
    return Verifier(registry, clock=lambda: NOW)


_VERIFIER = _verifier()

# -- hostile values ---------------------------------------------------------------------------------

U32 = st.one_of(st.integers(0, 0xFFFFFFFF), st.sampled_from([0, 1, NOW, NOW + 1, 0x7FFFFFFF, 0xFFFFFFFF]))
TIMESTAMPS = st.one_of(st.sampled_from([NOW, NOW - 599, NOW + 119]), U32)
TEXT = st.one_of(st.text(max_size=40), st.sampled_from(["", "\x00", "\ud7ff\ue000", "null", "A1B2C3D4E5F60718"]))
JSON_NUMBER_TEXT = st.one_of(
    st.sampled_from(["Infinity", "-Infinity", "NaN", "1e999", "-1e999", "1e-999", "-0", "0.0", "9" * 400,
                     "4294967296", "-1", "18446744073709551616", "1.7976931348623157e308", "true", "null",
                     '"1764500000"', '"-1"', '"0x10"', '" 1764500000"', "[]", "{}", '"\\u0000"']),
    st.integers().map(str), st.floats(allow_nan=False, allow_infinity=False).map(repr))


# -- Pebble protobuf --------------------------------------------------------------------------------

@st.composite
def sensor_data(draw) -> bytes:
    from gateway.codec import pebble_pb2 as pb

    m = pb.SensorData()
    for name in ("snr", "vbat", "latitude", "longitude", "gasResistance", "temperature", "pressure",
                 "humidity", "light", "temperature2"):
        if draw(st.booleans()):
            value = draw(st.integers(-2**31, 2**32 - 1))
            try:
                setattr(m, name, value)
            except ValueError:  # the field's own range (int32 / uint32)
                setattr(m, name, value & 0x7FFFFFFF)
    m.gyroscope.extend(draw(st.lists(st.integers(-2**31, 2**31 - 1), max_size=4)))
    m.accelerometer.extend(draw(st.lists(st.integers(-2**31, 2**31 - 1), max_size=4)))
    m.random = draw(TEXT)
    raw = m.SerializeToString()
    return draw(st.one_of(st.just(raw), st.binary(max_size=80), st.just(raw[:draw(st.integers(0, len(raw)))])))


@st.composite
def binpackage(draw) -> bytes:
    from gateway.codec import pebble_pb2 as pb

    kind = draw(st.sampled_from([0, 1, 2]))
    if kind == 1:
        config = pb.SensorConfig(dataChannel=draw(U32), uploadPeriod=draw(U32), firmware=draw(TEXT),
                                 beep=draw(U32), deviceConfigurable=draw(st.booleans()))
        data = config.SerializeToString()
    else:
        data = draw(sensor_data())
    signature = draw(st.one_of(st.binary(min_size=64, max_size=64), st.binary(max_size=70)))
    raw = pb.BinPackage(type=kind, data=data, timestamp=draw(TIMESTAMPS), signature=signature).SerializeToString()
    unknown_type = b"\x08" + _varint(draw(st.integers(3, 2**64 - 1)))  # an enum value no firmware has
    return draw(st.one_of(st.just(raw), st.just(raw + draw(st.binary(max_size=8))), st.just(unknown_type + raw)))


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        out.append((value & 0x7F) | (0x80 if value > 0x7F else 0))
        value >>= 7
        if not value:
            return bytes(out)


def run_pebble_data(data: bytes) -> object:
    admitted = _VERIFIER.admit("data", IMEI, data)
    _VERIFIER._inflight.discard(admitted.replay_key)  # admitted, never concluded: forget it
    if isinstance(admitted.content, bytes):
        return pebble.decode_sensor_data(admitted.content).reading()
    return admitted.content.reading()


@st.composite
def confirm(draw) -> bytes:
    from gateway.codec import pebble_pb2 as pb

    owner = draw(st.one_of(st.binary(min_size=20, max_size=20), st.binary(max_size=30)))
    signature = draw(st.one_of(st.binary(min_size=64, max_size=64), st.binary(max_size=70)))
    return pb.ConfirmPackage(owner=owner, timestamp=draw(TIMESTAMPS), signature=signature,
                             channel=draw(U32)).SerializeToString()


def run_confirm(data: bytes) -> object:
    admitted = _VERIFIER.admit("confirm", IMEI, data)
    _VERIFIER._inflight.discard(admitted.replay_key)
    return admitted.content.owner_address


def genuine_reading(nonce: str, timestamp: int = NOW) -> bytes:
    """A DATA package the registered Pebble (``IMEI``) really signed."""
    from coincurve import PrivateKey

    from gateway.verify.secp256k1 import sign

    data = pebble.encode_sensor_data(pebble.SensorData(vbat=410, temperature=2150, random=nonce))
    package = pebble.BinPackage(pebble.PackageType.DATA, data, timestamp, b"")
    digest = hashlib.sha256(package.preimage).digest()
    return pebble.encode_binpackage(pebble.BinPackage(package.type, data, timestamp,
                                                      sign(PrivateKey(_PRIVATE), digest)))


# -- G1 JSON ----------------------------------------------------------------------------------------

G1_FIELDS = ["snr", "vbat", "latitude", "longitude", "gasResistance", "temperature", "pressure", "humidity",
             "light", "temperature2", "gyroscope", "accelerometer", "timestamp", "random", "eccPubkey", "SNR"]


@st.composite
def g1_value(draw, name: str) -> str:
    if name == "timestamp":
        return draw(st.one_of(st.just(f'"{NOW}"'), st.just(str(NOW)), JSON_NUMBER_TEXT))
    if name in ("gyroscope", "accelerometer"):
        items = draw(st.lists(JSON_NUMBER_TEXT, max_size=4))
        return draw(st.one_of(st.just("[" + ",".join(items) + "]"), JSON_NUMBER_TEXT))
    if name == "eccPubkey":
        return json.dumps(draw(st.one_of(st.text("0123456789ABCDEF", min_size=126, max_size=130),
                                         st.just(pebble.swap_nibbles("07" * 64)), TEXT)))
    if name == "random":
        return draw(st.one_of(TEXT.map(json.dumps), JSON_NUMBER_TEXT))
    return draw(st.one_of(JSON_NUMBER_TEXT, st.just('"null"'), TEXT.map(json.dumps)))


@st.composite
def g1(draw) -> bytes:
    names = draw(st.lists(st.sampled_from(G1_FIELDS), max_size=8))
    if draw(st.booleans()):
        names.append("timestamp")
    body = "{" + ",".join(f'"{n}":{draw(g1_value(n))}' for n in names) + "}"
    hexes = st.one_of(st.text("0123456789ABCDEF", min_size=64, max_size=64), TEXT)
    signature = '{"r":' + json.dumps(draw(hexes)) + ',"s":' + json.dumps(draw(hexes)) + "}"
    shapes = ['{"message":%s,"signature":%s}', '{"signature":%s,"message":%s}', '{"message": %s ,"signature":%s}',
              '{"message":%s,"signature":%s,"message":{}}', '{"message":%s}%s', '["message",%s,%s]']
    shape = draw(st.sampled_from(shapes))
    text = shape % ((signature, body) if shape.startswith('{"signature"') else (body, signature))
    return text.encode("utf-8", "surrogatepass")


def run_g1(data: bytes) -> object:
    if data[:1] != b"{":
        data = b"{" + data
    admitted = _VERIFIER.admit("data", G1_IMEI, data)
    _VERIFIER._inflight.discard(admitted.replay_key)
    _VERIFIER.forget_keys()
    return json.dumps(admitted.content.reading(), allow_nan=False)


# -- legacy frames (serial, BLE) -------------------------------------------------------------------

LEGACY_ID = bytes.fromhex("0011223344556677")
LEGACY_KEY = bytes(range(32))


_legacy: list = []


def _legacy_bridge():
    """One bridge for all inputs (what it learns, such as seqs, carries over as on a real link)."""
    if _legacy:
        bridge, outcomes = _legacy
        outcomes.clear()
        bridge.link_lost("serial:fuzz")  # a fresh stream: no half frame left from the last input
        return bridge, outcomes
    from gateway.legacy.bridge import LegacyBridge
    from gateway.legacy.attest import Attester
    from gateway.legacy.registry import LegacyDevice, LegacyRegistry
    from gateway.legacy.verifier import LegacyVerifier

    registry = LegacyRegistry(_workdir / "legacy.json")
    if registry.get(LEGACY_ID.hex()) is None:
        registry.add(LegacyDevice(LEGACY_ID.hex(), "fuzz", LEGACY_KEY.hex(), "serial"))
    outcomes: list[str] = []
    bridge = LegacyBridge(registry, LegacyVerifier(registry, rate=1e9, burst=1e9), Attester(_PRIVATE),
                          lambda doc, done: outcomes.append("accepted"),
                          lambda rejection, link: outcomes.append(rejection.reason),
                          seq_path=_workdir / "legacy_seq.json")
    _legacy[:] = [bridge, outcomes]
    return bridge, outcomes


@st.composite
def legacy_stream(draw) -> bytes:
    frames = []
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.one_of(st.sampled_from([wire.READING, wire.HELLO, wire.CONFIG_ACK, wire.CONFIG,
                                               wire.COMMAND_ACK, wire.COMMAND]), st.integers(0, 255)))
        payload = draw(st.one_of(
            st.dictionaries(st.sampled_from(["t", "h", "p", "temperature", "seq", "", "command_seq", "relay",
                                             "error"]), st.one_of(JSON_NUMBER_TEXT, st.sampled_from(['"x"', "true"])),
                            max_size=4).map(lambda d: ("{" + ",".join(f'"{k}":{v}' for k, v in d.items()) + "}")
                                            .encode()),
            st.binary(max_size=40), st.just(b"[" * 300 + b"]" * 300)))
        seq = draw(st.one_of(U32, st.sampled_from([0xFFFFFFFF, 0, 1, 0x80000000])))
        key = draw(st.sampled_from([LEGACY_KEY, bytes(32)]))
        device = draw(st.sampled_from([LEGACY_ID, bytes(8)]))
        raw = wire.encode(kind, device, seq, payload[:wire.MAX_PAYLOAD], key)
        frames.append(draw(st.one_of(st.just(raw), st.just(raw[:draw(st.integers(0, len(raw)))]),
                                     st.binary(max_size=30))))
    return b"".join(frames)


def run_legacy(data: bytes) -> object:
    bridge, outcomes = _legacy_bridge()
    for start in range(0, len(data), 20):  # BLE notifications and serial reads arrive in pieces
        bridge.on_data("serial:fuzz", data[start:start + 20])
    bridge.on_data("serial:fuzz", b"\x00")
    expected = data.count(b"\x00") + 1
    assert len(outcomes) <= expected, (outcomes, expected)  # never more outcomes than frames
    return outcomes


# -- files a user edits: configuration and projects --------------------------------------------------

CONFIG_KEYS = ["data_dir", "mqtt.port", "mqtt.keepalive", "mqtt.host", "mqtt.client_id", "verify.max_payload",
               "verify.max_age_s", "buffer.full_policy", "buffer.segment_records", "applets.time_limit_s",
               "api.enabled", "api.port", "api.listen", "chain.enabled", "chain.network", "chain.registry",
               "serial.ports", "ble.enabled", "log.level", "legacy.rate", "nosuch.key", "mqtt.nosuch"]
TOML_VALUES = st.sampled_from(["-1", "0", "1", "65536", "28831.7", "nan", "inf", "-inf", '"maybe"', "true",
                               '""', '"\\u0000"', "[]", '["/dev/tty*", 5]', "{}", "1e400", "9" * 30,
                               '"DEBUG"', '"loud"', "1979-05-27T07:32:00Z", '"0x' + "1" * 40 + '"'])


@st.composite
def config_toml(draw) -> bytes:
    lines: dict[str, list[str]] = {}
    for key in draw(st.lists(st.sampled_from(CONFIG_KEYS), max_size=5)):
        section, _, name = key.rpartition(".")
        lines.setdefault(section, []).append(f"{name} = {draw(TOML_VALUES)}")
    text = "\n".join(lines.pop("", []))
    for section, entries in lines.items():
        text += f"\n[{section}]\n" + "\n".join(entries)
    return draw(st.one_of(st.just(text.encode()), st.just(text.encode()[:draw(st.integers(0, len(text)))])))


def run_config(data: bytes) -> object:
    from gateway.config import load_config

    path = _workdir / "w3gate.toml"
    path.write_bytes(data)
    return load_config(path, env={}, data_dir=_workdir / "data")


PROJECT_SHAPES = [
    'name = "p"\n[[applets]]\nname = "a"\nwasm = {wasm}\n[[strategies]]\nevent = {v}\napplet = "a"\nhandler = {v}\n',
    'name = {v}\napplets = {v}\n', 'name = "p"\n[[applets]]\nname = {v}\nwasm = {v}\n',
    'name = "p"\n[[applets]]\nname = "a"\nwasm = {wasm}\n[events]\npebble = {v}\n[env]\nk = {v}\n',
    'name = "p"\n[[applets]]\nname = "a"\nwasm = {wasm}\n[[cron]]\nexpression = {v}\nevent = {v}\n',
    'name = "p"\n[[applets]]\nname = "a"\nwasm = {wasm}\n[[monitors]]\nkind = {v}\naddress = {v}\n',
    'name = "p"\n[[applets]]\nname = "a"\nwasm = {wasm}\nevents = {v}\ndatabase = {v}\noperators = {v}\n',
    'name = "p"\ncommand_devices = {v}\n[[applets]]\nname = "a"\nwasm = {wasm}\n',
]


@st.composite
def project_toml(draw) -> bytes:
    shape = draw(st.sampled_from(PROJECT_SHAPES))
    values = st.one_of(TOML_VALUES, st.sampled_from(['"start"', '"DEFAULT"', '"* * * * *"', '"contract_log"',
                                                     '"chain_height"', "[1]", '[{a = 1}]']))
    wasm = draw(st.sampled_from(['"app.wasm"', '"nosuch.wasm"', '"/dev/null"', '"."', "5"]))
    text = shape.replace("{wasm}", wasm)
    while "{v}" in text:
        text = text.replace("{v}", draw(values), 1)
    return text.encode()


def run_project(data: bytes) -> object:
    from gateway.applets.project import parse_project_file

    if not (_workdir / "app.wasm").exists():
        from tests.support.wat import assemble

        (_workdir / "app.wasm").write_bytes(assemble("probe", _workdir))
    path = _workdir / "project.toml"
    path.write_bytes(data)
    return parse_project_file(path)


# -- an applet's module, as the host reads and rewrites it before wasm3 runs it ----------------------

_MODULE: list[bytes] = []


def _probe_module() -> bytes:
    if not _MODULE:
        from tests.support.wat import assemble

        _MODULE.append(assemble("probe", _workdir))
    return _MODULE[0]


@st.composite
def wasm_module(draw) -> bytes:
    """The probe applet damaged: bytes flipped, cut off, repeated or inserted (sections then
    claim sizes, counts and indices they do not have)."""
    data = bytearray(_probe_module())
    for _ in range(draw(st.integers(0, 4))):
        at = draw(st.integers(8, len(data) - 1))
        op = draw(st.sampled_from(["flip", "cut", "insert", "repeat"]))
        if op == "flip":
            data[at] = draw(st.integers(0, 255))
        elif op == "cut":
            del data[at:]
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        else:
            data[at:at] = data[at:at + draw(st.integers(1, 16))]
        if len(data) <= 9:
            break
    return bytes(data)


def run_module(data: bytes) -> object:
    """What deploy and the worker do to a module before wasm3 sees it: read its sections, cap its
    memory, count its refused grows, export its globals (``runnable`` unwrapped: no cache)."""
    from gateway.applets.module import inspect, runnable

    inspect(data)
    return runnable.__wrapped__(data, 64)


# -- the record buffer's files, as a power cut or a failing SD card leaves them ----------------------

def _record(seq: int, rx: str) -> str:
    return (f'"{seq}":{{"seq":{seq},"rx":{rx},"device":"{IMEI}","kind":"data","wire":"protobuf",'
            f'"ts":{NOW},"digest":"{seq:064x}","payload":"CAA="}}')


@st.composite
def segment_file(draw) -> bytes:
    """Segment text: a valid TinyDB segment of records 1..n, then damaged the ways disks damage."""
    n = draw(st.integers(0, 6))
    rx = st.one_of(st.just(str(NOW)), JSON_NUMBER_TEXT)
    text = '{"records":{' + ",".join(_record(seq, draw(rx)) for seq in range(1, n + 1)) + "}}"
    raw = text.encode()
    cut = draw(st.integers(0, len(raw)))
    return draw(st.one_of(
        st.just(raw), st.just(raw[:cut]), st.just(raw[:cut] + b"\x00" * draw(st.integers(1, 64))),
        st.just(raw[:cut] + draw(st.binary(max_size=16)) + raw[cut:]),
        st.just(raw.replace(b'"seq":1,', b'"seq":7,', 1)), st.just(raw.replace(b'"records"', b'"_default"'))))


def run_segment(data: bytes) -> object:
    """Open the store over a damaged active segment and read everything back."""
    from gateway.buffer.store import RecordStore

    root = Path(tempfile.mkdtemp(dir=_workdir))
    try:
        (root / "segments").mkdir()
        (root / "segments" / "seg-000000000001.json").write_bytes(data)
        store = RecordStore(root)
        try:
            held = list(store.iter_records())
            store.append([{"rx": NOW, "device": IMEI, "kind": "data", "digest": "00", "payload": ""}])
            seqs = [doc["seq"] for doc in store.iter_records()]
            assert len(seqs) == len(set(seqs)) == len(held) + 1, "a seq was handed out twice"
            return store.damage
        finally:
            store.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)


# -- what the dashboard takes from stored records -------------------------------------------------

_history: list = []


@st.composite
def stored_record(draw) -> bytes:
    """A record as the buffer holds it: a legacy sensor's verified frame whose JSON it chose (a
    sensor with its key can send anything), or a Pebble's signed data package. First byte: which."""
    if draw(st.booleans()):
        return b"\x00" + draw(binpackage())
    kind = draw(st.sampled_from([wire.READING, wire.HELLO, wire.CONFIG_ACK, wire.COMMAND_ACK]))
    value = st.one_of(JSON_NUMBER_TEXT, st.sampled_from(['"x"', "true", "null", "[]", "{}", '"' + "\u202e" * 90 + '"',
                                                         "9" * 5000, "-0", "1e400", "[" * 200 + "]" * 200]))
    fields = draw(st.dictionaries(st.sampled_from(["temperature", "humidity", "pressure", "battery", "vbat", "snr",
                                                   "latitude", "longitude", "gps_fix", "fw", "board", "relay",
                                                   "command_seq"]),
                                  value, max_size=8))
    body = ("{" + ",".join(f'"{k}":{v}' for k, v in fields.items()) + "}").encode()
    body = draw(st.one_of(st.just(body), st.binary(max_size=40)))
    return bytes([1 + kind]) + wire.encode(kind, LEGACY_ID, 1, body[:wire.MAX_PAYLOAD], LEGACY_KEY)


def run_dashboard(data: bytes) -> object:
    """The dashboard's reading of a record: plotted values only finite numbers in range, text cut,
    and what the page receives plain JSON (no NaN), whatever the record says."""
    import base64

    from gateway.dashboard.readings import MAX_TEXT, ReadingHistory, reading_of

    if not data:
        return None
    kinds = {wire.READING: "data", wire.HELLO: "hello", wire.CONFIG_ACK: "config_ack", wire.COMMAND_ACK: "command_ack"}
    if data[0] == 0:
        doc = {"wire": "protobuf", "kind": "data", "device": IMEI}
    else:
        doc = {"wire": "legacy", "kind": kinds.get(data[0] - 1, "data"), "device": LEGACY_ID.hex()}
    doc.update(seq=1, rx=float(NOW), payload=base64.b64encode(data[1:]).decode())
    reading = reading_of(doc, "riverrock-1.0.14")
    if reading is None:
        return None
    if not _history:
        _history.append(ReadingHistory())
    history = _history[0]
    history.add([reading])
    page = {"series": history.series(reading.device), "summaries": history.summaries()}
    json.dumps(page, allow_nan=False)  # raises on NaN or infinity
    if reading.position is not None:
        assert -90 <= reading.position[2] <= 90 and -180 <= reading.position[3] <= 180, reading.position
    assert all(len(v) <= MAX_TEXT for v in reading.facts.values() if isinstance(v, str)), reading.facts
    return reading


# -- the node's message handler, end to end ---------------------------------------------------------

NODE_TOPICS = [f"device/{IMEI}/data", f"device/nrf-{G1_IMEI}/data", f"device/{IMEI}/confirm",
               f"device/{IMEI}/query", "device/000/data", "device//data", "device/x/y/z", "device", "/",
               "p/push/tok/DEFAULT", "p/push/tok/DEFAULT/ts=1e999&id=x", "a/push//", "ack/x"]
_node_state: dict = {}


def _node():
    """One in-process node (no broker: its link never connects, acknowledgements go nowhere but are
    counted) with the real verifier, signature worker and durable buffer."""
    if not _node_state:
        import asyncio

        from gateway.config import load_config
        from gateway.node import Node

        data_dir = _workdir / "node"
        data_dir.mkdir(exist_ok=True)
        (data_dir / "devices.json").write_bytes((_workdir / "devices.json").read_bytes())
        loop = asyncio.new_event_loop()
        node = Node(load_config(None, env={}, data_dir=data_dir))
        node.verifier.clock = lambda: NOW
        loop.run_until_complete(node.checker.start())
        _node_state.update(loop=loop, node=node)
    return _node_state["loop"], _node_state["node"]


def split_messages(data: bytes) -> list[tuple[str, bytes]]:
    """Node input: repeated (topic byte, u16be length, payload); a topic byte past the known topics
    is the length of a topic text taken from the input."""
    out, i = [], 0
    while i + 3 <= len(data) and len(out) < 8:
        pick, length = data[i], int.from_bytes(data[i + 1:i + 3], "big")
        i += 3
        if pick < len(NODE_TOPICS):
            topic = NODE_TOPICS[pick]
        else:
            topic, i = data[i:i + pick - len(NODE_TOPICS)].decode("utf-8", "replace"), i + pick - len(NODE_TOPICS)
        out.append((topic, data[i:i + length]))
        i += length
    return out


def join_messages(messages: list[tuple[int, bytes]]) -> bytes:
    return b"".join(bytes([pick]) + len(payload).to_bytes(2, "big") + payload for pick, payload in messages)


_nonce = iter(range(1, 1 << 62))


def run_node(data: bytes) -> object:
    """Every message ends in exactly one acknowledgement, none as a bug, and a genuine reading
    sent after them is accepted."""
    from gateway.ingest.mqtt import Inbound

    loop, node = _node()
    messages = split_messages(data) + [(NODE_TOPICS[0], genuine_reading(f"{next(_nonce):016X}"))]
    handled, accepted = node.sink.handled, node.counters.accepted["data"]

    async def feed() -> None:
        for mid, (topic, payload) in enumerate(messages, 1):
            node.link.on_message(Inbound(topic, payload, mid, 1, False, NOW))  # what the link calls
        await node.checker.drain()
        await node.committer.drain()
        await node.event_api.drain_mqtt()
    loop.run_until_complete(feed())
    assert node.sink.handled - handled == len(messages), "a message was not acknowledged exactly once"
    assert node.link.handler_errors == 0 and not node.counters.rejected["internal"], node.counters.rejected
    assert node.counters.accepted["data"] > accepted, "the genuine reading after the hostile ones was refused"
    return None


node_input = st.lists(st.tuples(st.integers(0, len(NODE_TOPICS) - 1),
                                st.one_of(binpackage(), confirm(), g1(), st.binary(max_size=1100))),
                      min_size=1, max_size=6).map(join_messages)

# -- verifiable credentials (w3gate vc verify) ------------------------------------------------------

_VC_KEY = bytes(range(3, 35))


def _as_json(text: str) -> object:
    """The value a JSON text reads as (Infinity and 1e999 as float inf, written back as Infinity)."""
    try:
        return json.loads(text)
    except ValueError:
        return text


@st.composite
def credential(draw) -> bytes:
    """A compact JWT-VC: a genuine one's header and claims with hostile values put in, then
    re-signed by the issuer's own key (so the checks behind the signature are reached) or not."""
    from gateway.credentials import vc

    key = vc.public_jwk(_VC_KEY)
    issuer = vc.address_of_jwk(key)[1]
    batch = {"root": "0x" + "11" * 32, "sequence": 0, "count": 4, "firstMs": 1000, "lastMs": 2000,
             "tx": "0x" + "22" * 32, "block": 7, "records": 2}
    payload = {"iss": vc.did_of(issuer), "sub": vc.did_of("0x" + "ab" * 20), "nbf": NOW, "iat": NOW,
               "vc": {"@context": vc.CONTEXT, "type": vc.TYPES, "credentialSubject": {
                   "id": vc.did_of("0x" + "ab" * 20), "device": IMEI, "deviceKind": "pebble",
                   "trust": "secure-element", "ownerNote": "no owner registered",
                   "records": {"fromMs": 0, "toMs": 3000, "count": 2, "anchored": 2, "unanchored": 0,
                               "firstReceivedMs": 1500, "lastReceivedMs": 1600},
                   "anchors": {"chainId": 31337, "registry": "0x" + "cd" * 20, "batches": [batch]}}}}
    header = {"alg": "ES256K", "typ": "JWT", "kid": vc.did_of(issuer) + "#key-0", "jwk": key}
    hostile = st.one_of(JSON_NUMBER_TEXT.map(_as_json), TEXT, st.none(), st.booleans(),
                        st.lists(st.integers(), max_size=3), st.dictionaries(TEXT, st.integers(), max_size=2))
    places = [(payload, "iss"), (payload, "nbf"), (payload, "sub"), (payload, "exp"), (payload["vc"], "type"),
              (payload["vc"]["credentialSubject"], "deviceKind"), (payload["vc"]["credentialSubject"], "owner"),
              (payload["vc"]["credentialSubject"]["records"], "count"),
              (payload["vc"]["credentialSubject"]["records"], "firstReceivedMs"),
              (payload["vc"]["credentialSubject"]["anchors"], "batches"), (batch, "root"), (batch, "records"),
              (header, "alg"), (header, "jwk"), (header["jwk"], "x"), (header, "kid"), (header, "crit")]
    for i in draw(st.lists(st.integers(0, len(places) - 1), max_size=3)):
        where, name = places[i]
        where[name] = draw(hostile)
    if draw(st.booleans()):
        return vc.sign_jwt(header, payload, _VC_KEY).encode()
    signature = draw(st.one_of(st.just(b"x" * 64), st.binary(max_size=80)))
    return b".".join(vc.b64url(json.dumps(part).encode()).encode() for part in (header, payload)) + b"." + \
        vc.b64url(signature).encode()


def run_vc(data: bytes) -> object:
    """`w3gate vc verify --offline`: a verdict with a named reason, never another exception."""
    from gateway.credentials import vc

    verdict = vc.verify(data, None, now=NOW)
    assert verdict.reason == "valid" if verdict.ok else verdict.reason in vc.REASONS, verdict
    if not verdict.ok:
        raise vc.Invalid(verdict.detail, reason=verdict.reason)
    return verdict


_MARKET = "0x" + "ab" * 20
_BUYER_SECRET = bytes(range(32))


@st.composite
def sealed_reading(draw) -> bytes:
    """What a buyer's broker hands `w3gate market receive`: a reading sealed to the buyer (so the
    reading's checks are reached) with hostile values in it, or a message's fields replaced."""
    import base64

    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    from gateway.market.seal import Sealer, ephemeral_key, public_bytes

    buyer = X25519PrivateKey.from_private_bytes(_BUYER_SECRET)
    payload = draw(st.binary(max_size=64))
    fields = {"address": "0x" + "22" * 20, "signature": "11" * 64,
              "payload_sha256": hashlib.sha256(payload).hexdigest(), "received_ms": 1_700_000_000_123}
    record = {"rx": 1_700_000_000.123, "device": IMEI, "payload": base64.b64encode(payload).decode()}
    reading = {"seq": 1, "device": IMEI, "record": record, "leaf_fields": fields}
    hostile = st.one_of(JSON_NUMBER_TEXT.map(_as_json), TEXT, st.none(), st.booleans(), st.lists(st.integers(),
                                                                                                max_size=3))
    places = [(fields, "address"), (fields, "signature"), (fields, "payload_sha256"), (fields, "received_ms"),
              (record, "rx"), (record, "payload"), (reading, "record"), (reading, "leaf_fields")]
    for i in draw(st.lists(st.integers(0, len(places) - 1), max_size=2)):
        where, name = places[i]
        where[name] = draw(hostile)
    leaf = draw(st.binary(min_size=32, max_size=32))
    sealer = Sealer(ephemeral_key(b"node", 31337, _MARKET, 1), public_bytes(buyer), 31337, _MARKET, 1)
    message = json.loads(sealer.seal(draw(st.integers(0, 2**64 - 1)), leaf, json.dumps(reading).encode()))
    for name in draw(st.lists(st.sampled_from(sorted(message)), max_size=2)):
        message[name] = draw(hostile)
    return json.dumps(message).encode()


def run_market(data: bytes) -> object:
    """`w3gate market receive`: a message opens and checks, or a named refusal."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    from gateway.market.delivery import check_reading
    from gateway.market.seal import open_message

    opened = open_message(X25519PrivateKey.from_private_bytes(_BUYER_SECRET), data, chain_id=31337, market=_MARKET,
                          purchase=1)
    return check_reading(opened["plaintext"], opened["leaf"]) if opened["kind"] == "reading" else opened


ENDPOINT_PART = st.one_of(TEXT, st.sampled_from(["mqtt://", "mqtts://", "http://", "@", ":", "/", "#", "+", "%00",
                                                 "%", "[", "]", "::1", "65536", "user:pw@"]))


def run_endpoint(data: bytes) -> object:
    """A buyer's delivery URL, as read from the chain: parsed or refused with a reason."""
    from gateway.market.endpoint import parse_endpoint

    return parse_endpoint(data.decode("utf-8", "replace"), 1)


TARGETS: dict[str, Target] = {t.name: t for t in (
    Target("pebble_data", run_pebble_data, binpackage()),
    Target("pebble_confirm", run_confirm, confirm()),
    Target("g1_json", run_g1, g1()),
    Target("legacy_frames", run_legacy, legacy_stream()),
    Target("config_file", run_config, config_toml()),
    Target("project_file", run_project, project_toml()),
    Target("applet_module", run_module, wasm_module()),
    Target("buffer_segment", run_segment, segment_file()),
    Target("node_handler", run_node, node_input),
    Target("dashboard_reading", run_dashboard, stored_record()),
    Target("credential", run_vc, credential()),
    Target("market_reading", run_market, sealed_reading()),
    Target("market_endpoint", run_endpoint, st.lists(ENDPOINT_PART, max_size=8).map(lambda p: "".join(p).encode())),
)}


def check(target: Target, data: bytes) -> str:
    """Run one input; returns the outcome class ("ok" or the error's reason). Anything but a typed
    error propagates: that is the bug the fuzzer is looking for."""
    try:
        target.run(data)
    except W3gateError as e:
        return e.reason
    return "ok"


def seeds(target: Target, count: int) -> list[bytes]:
    """``count`` structure-aware inputs from the target's strategy (for the long run's corpus)."""
    from hypothesis import HealthCheck, given, settings

    out: list[bytes] = []

    @settings(max_examples=count, database=None, deadline=None, suppress_health_check=list(HealthCheck))
    @given(target.strategy)
    def collect(data: bytes) -> None:
        out.append(data)
    collect()
    return out

