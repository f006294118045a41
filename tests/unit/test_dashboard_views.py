"""The dashboard's JSON views and its history of readings, against a real RecordStore written
through a real GroupCommitter (the store touched only from its thread), and the dashboard's
routes on a real aiohttp server: security headers, the login, static files, server-sent events
(capped, ended when the server stops) and proofs. Device-supplied strings are hostile: they come
back as plain data, cut to size, and numbers that are not numbers are never plotted."""
from __future__ import annotations

import ast
import asyncio
import base64
import hashlib
import json
import statistics
import time
from pathlib import Path
from types import SimpleNamespace

import aiohttp
import pytest

from device_fw import frame as wire
from gateway.applets.runtime import ProjectCounts
from gateway.buffer.commit import GroupCommitter
from gateway.buffer.store import RecordStore, StoreConfig
from gateway.codec.record import legacy_doc, pebble_doc
from gateway.dashboard import readings as readings_module
from gateway.dashboard.readings import POINTS, ReadingHistory, read_after, reading_of
from gateway.dashboard.server import MAX_STREAMS, SECURITY_HEADERS, DashboardServer
from gateway.dashboard.views import DashboardViews, log_tail
from gateway.legacy.registry import new_legacy_device
from gateway.status import Counters
from gateway.supervisor import Health
from gateway.verify.registry import Registry, make_device
from hardware.pebble.encoding import (
    CONFIG,
    DATA,
    NO_FIX,
    SensorData,
    encode_binpackage,
    encode_sensor_config,
    encode_sensor_data,
)

GATEWAY = Path(__file__).resolve().parents[2] / "gateway"
HOSTILE = '<img src=x onerror="alert(1)">' + "\u202e" + "A" * 200
ADDRESS = "0x7c6D376B125b43ea5ba5dd0F84E00a4f0c3ad63F"


# -- records as the sources make them ----------------------------------------------------------------

def pebble_reading(imei: str, t: float, *, temperature: float = 21.5, lat: float | None = 52.52,
                   lon: float | None = 13.4, vbat: float = 4.1, snr: float = 12.0) -> dict:
    data = encode_sensor_data(SensorData(
        snr=round(snr * 100), vbat=round(vbat * 100), temperature=round(temperature * 100), humidity=4512,
        pressure=101325, latitude=NO_FIX if lat is None else round(lat * 1e7),
        longitude=NO_FIX if lon is None else round(lon * 1e7), random=hashlib.sha256(str(t).encode()).hexdigest()[:16]))
    payload = encode_binpackage(DATA, data, int(t), bytes(64))
    return pebble_doc(device=imei, address=ADDRESS, kind="data", wire="protobuf", timestamp=int(t),
                      digest=hashlib.sha256(payload).digest(), payload=payload, received=t)


def pebble_config(imei: str, t: float, firmware: str) -> dict:
    payload = encode_binpackage(CONFIG, encode_sensor_config(data_channel=8183, upload_period=60, firmware=firmware),
                                int(t), bytes(64))
    return pebble_doc(device=imei, address=ADDRESS, kind="config", wire="protobuf", timestamp=int(t),
                      digest=hashlib.sha256(payload).digest(), payload=payload, received=t)


def legacy_frame(device_id: str, kind_type: int, payload: bytes, t: float, seq: int) -> dict:
    frame = wire.cobs_decode(wire.encode(kind_type, bytes.fromhex(device_id), seq, payload, bytes(32))[1:-1])
    kind = {wire.READING: "data", wire.HELLO: "hello"}[kind_type]
    return legacy_doc(device=device_id, attester=ADDRESS, kind=kind, device_seq=seq, frame=frame,
                      digest=hashlib.sha256(frame).digest(), received_ms=round(t * 1000), attestation=bytes(65))


# -- a node: the real store, committer and registry; its other parts as the figures they keep ----------

class Bench:
    """A store in tmp_path written through its committer, and a node around it."""

    def __init__(self, tmp_path: Path, *, imeis: tuple[str, ...] = ("350916067070535",), legacy=None,
                 logs: dict[str, str] | None = None) -> None:
        self.store = RecordStore(tmp_path / "records", StoreConfig(segment_records=50))
        self.committer = GroupCommitter(self.store, min_interval_s=0)
        registry = Registry(tmp_path / "devices.json")
        for imei in imeis:
            registry.add(make_device(imei, address=ADDRESS, owner=ADDRESS if imei.endswith("5") else None))
        projects = {}
        for name, text in (logs or {}).items():
            (tmp_path / "projects" / name).mkdir(parents=True)
            (tmp_path / "projects" / name / "applet.log").write_text(text)
            projects[name] = None
        runtime = SimpleNamespace(
            projects=projects, per_project={name: ProjectCounts(events=10, failed=1) for name in projects},
            workers={}, store=SimpleNamespace(files=lambda n: SimpleNamespace(applet_log=tmp_path / "projects" / n
                                                                               / "applet.log")))
        counters = Counters({"accepted": {"data": 3}})
        counters.reject("pebble", "bad_signature", imeis[0] if imeis else None)
        counters.reject("legacy", "bad_mac")
        counters.reject("pebble", "replay", "999999999999999")  # a claim from nowhere: on no row
        self.node = SimpleNamespace(
            config=SimpleNamespace(data_dir=tmp_path, mqtt=SimpleNamespace(host="127.0.0.1", port=1883)),
            started=time.time() - 60, health=Health(), registry=registry, store=self.store, committer=self.committer,
            counters=counters, sink=SimpleNamespace(handled=3, last_handled=time.time()),
            checker=SimpleNamespace(backlog=0), link=SimpleNamespace(connected=True, drops=0, connects=1,
                                                                     sessions_lost=0),
            upkeep=SimpleNamespace(stats={}), anchoring=None, market=None, chain=None, runtime=runtime, legacy=legacy,
            event_api=SimpleNamespace(counters={}))

    async def write(self, docs: list[dict]) -> list[int]:
        seqs = []
        done = asyncio.get_running_loop().create_future()

        def stored(seq):
            seqs.append(seq)
            if len(seqs) == len(docs) and not done.done():
                done.set_result(None)
        for doc in docs:
            self.committer.submit(doc, stored)
        await done
        self.node.upkeep.stats = await self.committer.call(self.store.stats)
        return seqs

    def close(self) -> None:
        self.committer.close()
        self.store.close()


def a_legacy(devices, heard_on: dict[str, str]):
    return SimpleNamespace(
        registry=devices, bridge=SimpleNamespace(heard_on=heard_on, status=lambda: {
            "devices": len(devices), "accepted": 4, "configs_sent": 1, "links": sorted(set(heard_on.values()))}),
        serial=SimpleNamespace(ports={"/dev/ttyACM0": None}), ble=None)


# -- the history of readings ---------------------------------------------------------------------------

def test_a_reading_keeps_its_plotted_values_its_fix_and_its_devices_latest_facts():
    t = 1767225600.5
    r = reading_of({**pebble_reading("350916067070535", t, temperature=-3.25), "seq": 7}, "riverrock-1.0.14")
    assert (r.device, r.family, r.kind, r.seq) == ("350916067070535", "pebble", "data", 7)
    assert r.point == (t, 7, -3.25, 45.12, 1013.25, 4.1)
    assert r.position == (t, 7, 52.52, 13.4)
    assert r.facts == {"battery": 4.1, "signal": 12.0}
    no_fix = reading_of({**pebble_reading("350916067070535", t, lat=None, lon=None), "seq": 8})
    assert no_fix.position is None and no_fix.point is not None
    config = reading_of({**pebble_config("350916067070535", t, HOSTILE), "seq": 9})
    assert config.point is None and config.facts == {"firmware": HOSTILE[:readings_module.MAX_TEXT]}


def test_hostile_legacy_values_are_never_plotted_and_their_strings_are_cut():
    device = "00112233aabbccdd"
    frames = [(wire.READING, b'{"temperature": NaN, "humidity": "wet", "pressure": true, "battery": 1e999}'),
              (wire.READING, b'{"temperature": 19.5, "latitude": 91, "longitude": 10}'),
              (wire.READING, b'[1, 2, 3]'),
              (wire.HELLO, json.dumps({"fw": HOSTILE, "board": ["not", "text"]}).encode())]
    out = [reading_of({**legacy_frame(device, kind, payload, 1767225600.0 + i, i + 1), "seq": i + 1})
           for i, (kind, payload) in enumerate(frames)]
    assert out[0].point is None  # NaN, a string, a bool, infinity: nothing to plot
    assert out[1].point[2] == 19.5 and out[1].position is None  # latitude 91 is nowhere
    assert out[2].point is None and out[2].family == "legacy"
    assert out[3].facts == {"firmware": HOSTILE[:readings_module.MAX_TEXT]}
    garbage = reading_of({"device": device, "seq": 5, "rx": 1.0, "kind": "data", "wire": "legacy", "payload": "%%%"})
    assert garbage.point is None  # a payload that no longer decodes is seen, not plotted
    assert reading_of({"seq": 1, "rx": 1.0}) is None and reading_of({"device": "x", "seq": "1", "rx": 1.0}) is None


def test_the_history_is_seeded_from_the_store_then_follows_it_newest_only_and_bounded(tmp_path, monkeypatch):
    imei = "350916067070535"
    bench = Bench(tmp_path)

    async def go():
        t0 = time.time() - 1000
        await bench.write([pebble_reading(imei, t0 + i, temperature=10 + i / 10) for i in range(POINTS + 20)])
        history = ReadingHistory()
        await history.seed(bench.committer, bench.store, {imei: "riverrock-1.0.14"})
        seeded = history.series(imei)
        assert len(seeded["points"]) == POINTS  # bounded: the newest POINTS of the POINTS + 20
        assert [p[1] for p in seeded["points"]] == list(range(21, POINTS + 21))
        assert seeded["last_seq"] == history.last_seq == POINTS + 20
        assert await history.poll(bench.committer, bench.store, {}) == []  # nothing new
        seqs = await bench.write([pebble_reading(imei, t0 + 500), pebble_config(imei, t0 + 501, "1.0.15")])
        new = await history.poll(bench.committer, bench.store, {})
        assert [r.seq for r in new] == seqs
        summary = history.summaries()[imei]
        assert summary["firmware"] == "1.0.15" and summary["last_seq"] == seqs[-1]
        assert summary["last_kind"] == "config" and summary["battery"] == 4.1
        assert len(history.series(imei)["points"]) == POINTS and history.series(imei)["points"][-1][1] == seqs[0]
        # a flood between two polls: only the newest PER_POLL are read, and none twice
        monkeypatch.setattr(readings_module, "PER_POLL", 10)
        flood = await bench.write([pebble_reading(imei, t0 + 600 + i) for i in range(40)])
        new = await history.poll(bench.committer, bench.store, {})
        assert [r.seq for r in new] == flood[-10:]
        assert await history.poll(bench.committer, bench.store, {}) == []

    try:
        asyncio.run(go())
    finally:
        bench.close()


def test_the_store_is_read_only_on_its_own_thread(tmp_path, monkeypatch):
    bench = Bench(tmp_path)
    threads = set()
    original = read_after

    def spy(*args):
        import threading
        threads.add(threading.current_thread().name)
        return original(*args)

    monkeypatch.setattr(readings_module, "read_after", spy)

    async def go():
        await bench.write([pebble_reading("350916067070535", time.time())])
        views = DashboardViews(bench.node)
        await views.tick()
        await bench.write([pebble_reading("350916067070535", time.time() + 1)])
        await views.tick()

    try:
        asyncio.run(go())
    finally:
        bench.close()
    assert threads and all(name.startswith("w3gate-store") for name in threads)


def test_a_ring_keeps_the_newest_items_in_order_with_their_gaps_and_costs_its_bytes():
    import tracemalloc

    ring = readings_module.Ring("<dqdddd", 5)
    for seq in range(1, 9):
        ring.append((1000.0 + seq, seq, seq / 4, None if seq % 2 else 50.0, None, 3.5))
    assert len(ring) == 5
    assert ring.items() == [(1000.0 + s, s, s / 4, None if s % 2 else 50.0, None, 3.5) for s in range(4, 9)]
    tracemalloc.start()
    history = ReadingHistory()
    for seq in range(1, 50 * POINTS + 1):  # 50 devices, each with a full history of points and fixes
        history.add([readings_module.Reading(f"dev{seq % 50}", "pebble", "data", seq, float(seq),
                                             point=(float(seq), seq, 21.5, 45.0, 1013.25, 4.1),
                                             position=(float(seq), seq, 52.52, 13.4))])
    used, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert all(len(h.points) == len(h.track) == POINTS for h in history.devices.values())
    assert used < 2e6, used  # ~24 KB a device (and the bytearrays' slack), not the ~120 KB of tuples


def test_the_history_forgets_the_device_heard_from_longest_ago(monkeypatch):
    monkeypatch.setattr(readings_module, "DEVICES", 3)
    history = ReadingHistory()
    for seq, device in enumerate(["a", "b", "c", "a", "d"], start=1):
        history.add([readings_module.Reading(device, "legacy", "data", seq, float(seq),
                                             point=(float(seq), seq, 1.0, None, None, None))])
    assert list(history.devices) == ["c", "a", "d"]


# -- the snapshot ----------------------------------------------------------------------------------------

def test_the_snapshot_lists_every_device_with_its_facts_and_hostile_strings_stay_data(tmp_path):
    sensor = new_legacy_device(HOSTILE, transport="serial", config={"period_ms": 500})
    legacy = a_legacy([sensor], {sensor.device_id: "serial:/dev/ttyACM0"})
    log = "\n".join([json.dumps({"t": 1.0, "event": "e", "applet": "alerts", "level": "info", "msg": "x" * 5000}),
                     '{"t": 2.0, "event": "e", "applet": "alerts", "level": "er',  # a line cut by a crash
                     json.dumps({"t": 3.0, "event": "e", "applet": HOSTILE, "level": "error", "msg": HOSTILE}),
                     json.dumps(["not", "an", "entry"])]) + "\n"
    bench = Bench(tmp_path, imeis=("350916067070535", "350916067070536"), legacy=legacy, logs={"alerts": log})

    async def go():
        now = time.time()
        await bench.write([pebble_reading("350916067070535", now - 5), pebble_config("350916067070535", now - 4, "1.0.15"),
                           legacy_frame(sensor.device_id, wire.HELLO, json.dumps({"fw": HOSTILE}).encode(), now - 3, 1),
                           legacy_frame(sensor.device_id, wire.READING, b'{"temperature": 19.5}', now - 2, 2)])
        views = DashboardViews(bench.node)
        await views.tick()
        return views.snapshot()

    try:
        snapshot = asyncio.run(go())
    finally:
        bench.close()
    json.dumps(snapshot, allow_nan=False)  # what the page receives: plain JSON
    rows = {r["id"]: r for r in snapshot["devices"]["rows"]}
    assert next(iter(rows)) == sensor.device_id  # the most recently heard first
    pebble = rows["350916067070535"]
    assert (pebble["trust"], pebble["registration"], pebble["firmware"], pebble["battery"], pebble["signal"]) == \
        ("secure-element", "proposed", "1.0.15", 4.1, 12.0)
    assert rows["350916067070536"]["registration"] == "created" and "last_seen" not in rows["350916067070536"]
    legacy_row = rows[sensor.device_id]
    assert legacy_row["name"] == HOSTILE and legacy_row["trust"] == "gateway-attested"
    assert legacy_row["firmware"] == HOSTILE[:readings_module.MAX_TEXT] and legacy_row["link"] == "serial:/dev/ttyACM0"
    assert sensor.key not in json.dumps(snapshot)  # the HMAC key never leaves the registry
    assert snapshot["rejections"] == {"pebble": {"bad_signature": 1, "replay": 1}, "legacy": {"bad_mac": 1}}
    assert pebble["rejected"] == {"bad_signature": 1} and legacy_row["rejected"] == {}
    assert "999999999999999" not in rows
    assert snapshot["legacy"]["links"] == [{"link": "serial:/dev/ttyACM0", "transport": "serial", "up": True,
                                            "devices": [HOSTILE]}]
    (alerts,) = snapshot["applets"]
    assert (alerts["project"], alerts["events"], alerts["failures"]) == ("alerts", 10, 1)
    assert [e["t"] for e in alerts["log"]] == [1.0, 3.0]  # the cut line and the non-entry are skipped
    assert len(alerts["log"][0]["msg"]) == 300 and alerts["log"][1]["msg"] == HOSTILE
    assert snapshot["anchoring"] is None and snapshot["buffer"]["unanchored_records"] is None
    assert snapshot["buffer"]["records"] == 4
    assert snapshot["system"]["memory_total"] > 0 and snapshot["system"]["disk_free"] > 0
    assert snapshot["gateway"]["degraded"] == {}


def test_the_log_tail_reads_only_the_end_of_a_large_log(tmp_path):
    path = tmp_path / "applet.log"
    line = lambda i: json.dumps({"t": i, "event": "e", "applet": "a", "level": "info", "msg": "m" * 200})
    path.write_text("".join(line(i) + "\n" for i in range(5000)))
    assert [e["t"] for e in log_tail(path, 3)] == [4997, 4998, 4999]
    assert log_tail(tmp_path / "missing.log") == []


def test_a_snapshot_of_50_devices_costs_well_under_a_few_milliseconds(tmp_path):
    imeis = tuple(str(350916067070000 + i) for i in range(50))
    bench = Bench(tmp_path, imeis=imeis, logs={f"p{i}": "" for i in range(3)})

    async def go():
        now = time.time() - 400
        await bench.write([pebble_reading(imei, now + i) for i in range(POINTS) for imei in imeis][:10000])
        views = DashboardViews(bench.node)
        await views.tick()
        times = []
        for _ in range(200):
            began = time.perf_counter()
            json.dumps(views.snapshot(), separators=(",", ":"), allow_nan=False)
            times.append(time.perf_counter() - began)
        return views, statistics.median(times)

    try:
        views, median = asyncio.run(go())
    finally:
        bench.close()
    assert views.snapshot()["devices"]["total"] == 50
    print(f"snapshot of 50 devices, built and encoded: median {median * 1e3:.2f} ms")
    assert median < 0.002


# -- the routes ----------------------------------------------------------------------------------------

async def _serve(bench: Bench, **kwargs) -> tuple[DashboardServer, asyncio.Event, asyncio.Task, str]:
    server = DashboardServer(bench.node, **kwargs)
    stop = asyncio.Event()
    task = asyncio.create_task(server.serve("127.0.0.1", 0, stop))
    while server.port is None:
        await asyncio.sleep(0.01)
    return server, stop, task, server.url


def test_the_pages_and_api_answer_with_security_headers_and_only_their_own_files(tmp_path):
    bench = Bench(tmp_path)

    async def go():
        await bench.write([pebble_reading("350916067070535", time.time())])
        _server, stop, task, url = await _serve(bench)
        out = {}
        async with aiohttp.ClientSession() as http:
            for path in ("/", "/static/app.js", "/static/style.css", "/api/snapshot", "/api/history/350916067070535",
                         "/api/history/nobody", "/static/index.html", "/static/..%2Fserver.py", "/static/views.py",
                         "/api/proof/12", "/api/proof/-1", "/api/proof/1e3", "/nothing"):
                async with http.get(url + path) as response:
                    out[path] = (response.status, dict(response.headers), await response.read())
            async with http.get(url + "/static/app.js", headers={"Accept-Encoding": "identity"}) as response:
                etag = response.headers["ETag"]
                plain = await response.read()
            async with http.get(url + "/static/app.js", headers={"If-None-Match": etag}) as response:
                out["304"] = response.status
        stop.set()
        await task
        return out, plain

    try:
        out, plain = asyncio.run(go())
    finally:
        bench.close()
    for path, (status, headers, _) in ((p, v) for p, v in out.items() if p != "304"):
        for name, value in SECURITY_HEADERS.items():
            assert headers.get(name) == value, (path, name)
    assert "frame-ancestors 'none'" in SECURITY_HEADERS["Content-Security-Policy"]
    assert out["/"][0] == 200 and out["/"][1]["Content-Type"].startswith("text/html") and b"app.js" in out["/"][2]
    assert out["/static/app.js"][1]["Content-Type"].startswith("text/javascript")
    assert plain == (GATEWAY / "dashboard" / "static" / "app.js").read_bytes() and out["304"] == 304
    assert b"innerHTML" not in plain and b"insertAdjacentHTML" not in plain and b"eval(" not in plain
    snapshot = json.loads(out["/api/snapshot"][2])
    assert snapshot["devices"]["total"] == 1 and out["/api/snapshot"][1]["Cache-Control"] == "no-store"
    history = json.loads(out["/api/history/350916067070535"][2])
    assert len(history["points"]) == 1 and history["series"] == ["temperature", "humidity", "pressure", "battery"]
    assert out["/api/history/nobody"][0] == 404
    for path in ("/static/index.html", "/static/..%2Fserver.py", "/static/views.py", "/nothing"):
        assert out[path][0] == 404, path
    assert out["/api/proof/12"][0] == 404 and json.loads(out["/api/proof/12"][2])["error"] == "no_anchoring"
    assert out["/api/proof/-1"][0] == 400 and out["/api/proof/1e3"][0] == 400


def test_with_a_password_every_page_asks_for_it_and_healthz_does_not(tmp_path):
    bench = Bench(tmp_path)
    secret = tmp_path / "password"
    secret.write_text("s3cret\n")
    secret.chmod(0o600)

    async def go():
        _server, stop, task, url = await _serve(bench, password_file=str(secret))
        out = {}
        async with aiohttp.ClientSession() as http:
            for path in ("/", "/static/app.js", "/api/snapshot", "/api/events", "/api/proof/1", "/healthz"):
                async with http.get(url + path) as response:
                    out[path] = (response.status, response.headers.get("Content-Security-Policy"))
            async with http.get(url + "/api/snapshot", headers={"Authorization": "Basic " + base64.b64encode(b"any:s3cret").decode()}) as response:
                out["login"] = (response.status, None)
        stop.set()
        await task
        return out

    try:
        out = asyncio.run(go())
    finally:
        bench.close()
    assert out.pop("/healthz")[0] == 200 and out.pop("login")[0] == 200
    assert {path: status for path, (status, _) in out.items()} == {path: 401 for path in out}
    assert all(csp == SECURITY_HEADERS["Content-Security-Policy"] for _, csp in out.values())


async def _read_event(response) -> tuple[str, dict]:
    event, data = None, None
    while True:
        line = (await asyncio.wait_for(response.content.readline(), 10)).decode()
        if line.startswith("event: "):
            event = line[7:].strip()
        elif line.startswith("data: "):
            data = json.loads(line[6:])
        elif line == "\n" and event:
            return event, data
        elif line == "":
            raise EOFError


def test_live_updates_carry_new_points_are_capped_and_end_when_the_server_stops(tmp_path):
    imei = "350916067070535"
    bench = Bench(tmp_path)

    async def go():
        await bench.write([pebble_reading(imei, time.time() - 10)])
        server, stop, task, url = await _serve(bench)
        async with aiohttp.ClientSession() as http:
            streams = [await http.get(url + "/api/events") for _ in range(MAX_STREAMS)]
            assert all(s.status == 200 and s.headers["Content-Type"] == "text/event-stream" for s in streams)
            assert streams[0].headers["Content-Security-Policy"] == SECURITY_HEADERS["Content-Security-Policy"]
            kind, first = await _read_event(streams[0])
            assert kind == "snapshot" and "devices" in first["state"]
            async with http.get(url + "/api/events") as refused:
                assert refused.status == 503 and (await refused.json())["error"] == "busy"
            seqs = await bench.write([pebble_reading(imei, time.time(), temperature=30.25)])
            while True:  # updates come about once a second; the one with the new reading
                kind, update = await _read_event(streams[0])
                assert kind == "update" and update["after"] <= update["upto"]
                if imei in update["new"]:
                    break
            (point,) = update["new"][imei]["points"]
            assert point[1] == seqs[0] and point[2] == 30.25
            assert update["upto"] == seqs[0]
            began = time.monotonic()
            stop.set()
            await task  # the server stops although eight streams are open
            assert time.monotonic() - began < 5
            for s in streams:  # and every stream has ended
                with pytest.raises((EOFError, aiohttp.ClientPayloadError, aiohttp.ClientConnectionError)):
                    while True:
                        await _read_event(s)
                s.close()
            assert server.streams == 0

    try:
        asyncio.run(go())
    finally:
        bench.close()


def test_a_proof_is_made_by_the_anchorers_journal_on_the_chain_thread(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from gateway.proofs.errors import AnchorError

    chain_thread = ThreadPoolExecutor(1, thread_name_prefix="chain")
    asked = []

    def proof_for(seq):
        import threading
        asked.append(threading.current_thread().name)
        if seq == 2:
            raise AnchorError("record 2 is in no sealed batch (yet)", reason="not_sealed")
        return {"format": "w3gate-proof/1", "record": {"seq": seq}, "root": "0x" + "ab" * 32}

    bench = Bench(tmp_path)
    bench.node.chain = SimpleNamespace(call=lambda fn, *a: asyncio.get_running_loop().run_in_executor(chain_thread, fn, *a))
    bench.node.anchoring = SimpleNamespace(
        anchorer=SimpleNamespace(proof_for=proof_for, head=10, batches=[]), backlog={},
        status=lambda: {"network": "anvil"}, trouble=lambda: None)

    async def go():
        _server, stop, task, url = await _serve(bench)
        async with aiohttp.ClientSession() as http, http.get(url + "/api/proof/1") as one, \
                http.get(url + "/api/proof/2") as two:
            out = (one.status, await one.json(), two.status, await two.json())
        stop.set()
        await task
        return out

    try:
        status, body, status2, body2 = asyncio.run(go())
    finally:
        bench.close()
        chain_thread.shutdown()
    assert (status, body["record"], body["root"]) == (200, {"seq": 1}, "0x" + "ab" * 32)
    assert (status2, body2["error"]) == (404, "not_sealed")
    assert set(asked) == {"chain_0"}


def test_the_dashboard_is_a_reader_at_the_top_nothing_below_imports_it():
    for path in sorted(GATEWAY.rglob("*.py")):
        if path.parent.name == "dashboard" or path.name == "node.py":
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names} | \
                {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert not [n for n in names if n.startswith("gateway.dashboard")], path


def test_the_pages_files_are_installed_with_the_package():
    text = (GATEWAY.parent / "setup.cfg").read_text()
    assert "gateway.dashboard = static/*" in text


def test_a_refresh_that_fails_leaves_the_server_up_and_the_page_says_so(tmp_path):
    bench = Bench(tmp_path, logs={"alerts": ""})

    def broken(name):
        raise PermissionError(f"projects/{name}: permission denied")

    bench.node.runtime.store.files = broken

    async def go():
        _server, stop, task, url = await _serve(bench)
        async with aiohttp.ClientSession() as http:
            for _ in range(50):
                async with http.get(url + "/api/snapshot") as response:
                    degraded = (await response.json())["gateway"]["degraded"]
                if degraded:
                    break
                await asyncio.sleep(0.1)
            async with http.get(url + "/healthz") as response:
                health = response.status
        stop.set()
        await task
        return degraded, health, task

    try:
        degraded, health, task = asyncio.run(go())
    finally:
        bench.close()
    assert health == 200 and task.exception() is None
    assert list(degraded) == ["dashboard"] and "PermissionError: projects/alerts" in degraded["dashboard"]
