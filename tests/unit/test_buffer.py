"""The record store: what a caller can observe through its API and on disk."""
from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import pytest
from tinydb import TinyDB

from gateway import storage as storage_mod
from gateway.buffer import store as store_mod
from gateway.storage import AtomicJSONStorage
from gateway.buffer.store import (FullPolicy, RecordState, RecordStore, StoreConfig, StoreError,
                                  segment_name)

T0 = 1_700_000_000.0


def docs(n: int, *, start: int = 0, rx: float = T0, devices: int = 3) -> list[dict]:
    return [{"rx": rx + start + i, "device": f"dev{(start + i) % devices}", "n": start + i}
            for i in range(n)]


def files(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "w3gate.buffer" and r.levelno == logging.WARNING]


@pytest.fixture
def store(tmp_path):
    s = RecordStore(tmp_path / "rec", StoreConfig(segment_records=4))
    yield s
    s.close()


# -- append, get, iterate ------------------------------------------------------------------------

def test_append_assigns_gap_free_seqs_and_get_returns_the_doc_with_its_state(store):
    batch = docs(3)
    result = store.append(batch)
    assert result.seqs == [1, 2, 3] and result.refused == 0 and result.dropped == 0
    assert store.append(docs(2, start=3)).seqs == [4, 5]
    assert store.get(2) == {**batch[1], "seq": 2, "state": "accepted"}
    assert "seq" not in batch[0]  # the caller's dicts are not modified
    assert store.get(0) is None and store.get(6) is None


def test_records_need_a_receive_time(store):
    with pytest.raises(StoreError) as e:
        store.append([{"rx": T0}, {"device": "x"}])
    assert e.value.reason == "bad_record"
    assert store.stats()["records"] == 0


def test_iter_records_filters_and_orders_across_segments(store):
    store.append(docs(10))  # segments of 4: 1-4, 5-8, 9-10
    assert [d["seq"] for d in store.iter_records()] == list(range(10, 0, -1))
    assert [d["seq"] for d in store.iter_records(newest_first=False)] == list(range(1, 11))
    assert [d["seq"] for d in store.iter_records(device="dev1")] == [8, 5, 2]
    assert [d["seq"] for d in store.iter_records(since_rx=T0 + 7, newest_first=False)] == [8, 9, 10]
    assert [d["seq"] for d in store.iter_records(after_seq=6, newest_first=False)] == [7, 8, 9, 10]
    assert [d["seq"] for d in store.iter_records(after_seq=6)] == [10, 9, 8, 7]
    assert [d["seq"] for d in store.iter_records(limit=3)] == [10, 9, 8]
    assert [d["seq"] for d in store.iter_records(device="dev0", limit=2, newest_first=False)] == [1, 4]
    assert list(store.iter_records(limit=0)) == []
    assert all(d["state"] == "accepted" for d in store.iter_records())


def test_a_small_limit_reads_only_the_newest_segment(store, monkeypatch):
    store.append(docs(40))
    read = []
    real = storage_mod.read_json
    monkeypatch.setattr(storage_mod, "read_json", lambda p: read.append(p.name) or real(p))
    assert [d["seq"] for d in store.iter_records(limit=4)] == [40, 39, 38, 37]
    assert read == []  # the active segment is served from memory
    assert [d["seq"] for d in store.iter_records(limit=6)] == [40, 39, 38, 37, 36, 35]
    assert read == [segment_name(33)]


def test_seq_continues_after_reopen(tmp_path):
    with RecordStore(tmp_path, StoreConfig(segment_records=4)) as s:
        s.append(docs(6))
    with RecordStore(tmp_path, StoreConfig(segment_records=4)) as s:
        assert s.append(docs(3, start=6)).seqs == [7, 8, 9]
        assert [d["n"] for d in s.iter_records(newest_first=False)] == list(range(9))
        assert s.stats()["records"] == 9 and s.stats()["last_seq"] == 9


# -- segments on disk ----------------------------------------------------------------------------

def test_segments_rotate_when_full_and_are_plain_tinydb_files(tmp_path):
    with RecordStore(tmp_path, StoreConfig(segment_records=4)) as s:
        assert s.append(docs(3)).seqs == [1, 2, 3]
        assert s.append(docs(7, start=3)).seqs == list(range(4, 11))  # spans two rotations
        assert s.stats()["segments"] == 3
    seg = tmp_path / "segments"
    assert sorted(os.listdir(seg)) == [segment_name(1), segment_name(5), segment_name(9)]
    assert segment_name(5) == "seg-000000000005.json"
    db = TinyDB(seg / segment_name(5))  # TinyDB's own JSONStorage reads it
    assert [(d.doc_id, d["seq"], d["n"]) for d in db.table("records").all()] == [
        (5, 5, 4), (6, 6, 5), (7, 7, 6), (8, 8, 7)]
    db.close()
    raw = (seg / segment_name(1)).read_text()
    assert raw == json.dumps(json.loads(raw), separators=(",", ":"))  # compact, canonical


def test_one_append_is_one_durable_write_unless_it_starts_a_segment(store, monkeypatch):
    """A new segment also costs one small meta.json write (its seq range, see test_buffer_integrity)."""
    writes = []
    real = storage_mod.atomic_write
    spy = lambda p, d, **kw: writes.append(p.name) or real(p, d, **kw)
    monkeypatch.setattr(storage_mod, "atomic_write", spy)
    monkeypatch.setattr(store_mod, "atomic_write", spy)
    store.append(docs(3))
    assert writes == [segment_name(1), "meta.json"]
    store.append(docs(1, start=3))
    assert writes == [segment_name(1), "meta.json", segment_name(1)]
    store.append(docs(3, start=4))  # 5-7 in a new segment
    assert writes[3:] == [segment_name(5), "meta.json"]
    store.append(docs(1, start=7))
    assert writes[5:] == [segment_name(5)]


def test_stats_bytes_is_what_is_on_disk(store, tmp_path):
    store.append(docs(10))
    store.mark_processed(3)
    on_disk = sum(p.stat().st_size for p in (tmp_path / "rec").rglob("*") if p.is_file())
    assert store.stats()["bytes"] == on_disk


def test_storage_reads_missing_or_empty_as_none_and_readonly_never_writes(tmp_path):
    path = tmp_path / "db.json"
    assert AtomicJSONStorage(path).read() is None
    path.write_text("")
    assert AtomicJSONStorage(path).read() is None
    path.unlink()
    ro = AtomicJSONStorage(path, readonly=True)
    with pytest.raises(StoreError) as e:
        ro.write({"records": {}})
    assert e.value.reason == "readonly" and not path.exists()


def test_append_only_storage_writes_what_tinydb_would(tmp_path):
    path = tmp_path / "db.json"
    db = TinyDB(path, storage=AtomicJSONStorage, append_only=True)
    table = db.table("records")
    table.insert_multiple([{"a": i} for i in range(3)])
    table.insert_multiple([{"a": i, "s": "é\"x"} for i in range(3, 5)])
    table.remove(doc_ids=[2])  # not an append: encoded in full
    table.insert({"a": 5})
    db.table("other").insert({"b": 1})
    expected = {"records": {str(i): {"a": i - 1} for i in (1, 3)}, "other": {"1": {"b": 1}}}
    expected["records"].update({str(i): {"a": i - 1, "s": "é\"x"} for i in (4, 5)})
    expected["records"]["6"] = {"a": 5}
    assert path.read_text() == json.dumps(expected, separators=(",", ":"))
    assert TinyDB(path).table("records").get(doc_id=5) == {"a": 4, "s": "é\"x"}
    assert list(tmp_path.iterdir()) == [path]  # no temp file left behind


# -- cursors and states --------------------------------------------------------------------------

def test_cursors_derive_states_are_monotonic_and_durable(tmp_path):
    with RecordStore(tmp_path) as s:
        s.append(docs(10))
        s.mark_processed(6)
        s.mark_anchored(3)
        s.mark_processed(2)  # lower: ignored
        s.mark_anchored(1)
        assert [s.get(q)["state"] for q in (3, 4, 6, 7)] == ["anchored", "processed", "processed", "accepted"]
        s.mark_anchored(8)  # anchored implies processed
        assert s.get(7)["state"] == "anchored" and s.stats()["processed_upto"] == 8
        s.mark_processed(99)  # cannot pass the last seq
        assert s.stats()["processed_upto"] == 10
    with RecordStore(tmp_path) as s:
        st = s.stats()
        assert (st["processed_upto"], st["anchored_upto"]) == (10, 8)
        assert [d["state"] for d in s.iter_records(limit=3)] == ["processed", "processed", "anchored"]
        assert s.state_of(8) is RecordState.ANCHORED


# -- full policies -------------------------------------------------------------------------------

def test_refuse_policy_refuses_the_trailing_docs_and_logs_once_per_episode(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="w3gate.buffer")
    cfg = StoreConfig(segment_records=4, max_records=10, full_policy=FullPolicy.REFUSE, retention_s=0)
    with RecordStore(tmp_path, cfg) as s:
        r = s.append(docs(12))
        assert r.seqs == list(range(1, 11)) and r.refused == 2 and r.dropped == 0
        assert s.append(docs(3, start=12)).refused == 3
        assert s.get(10)["n"] == 9 and s.stats()["records"] == 10
        assert s.stats()["refused_total"] == 5
        assert len(warnings(caplog)) == 1 and "refusing" in warnings(caplog)[0]
        s.mark_anchored(8)
        s.mark_processed(10)
        assert s.expire(now=T0 + 100) == 8  # the anchored segments 1-4 and 5-8; 9-10 only processed
        assert s.append(docs(12, start=15)).refused == 4
        assert len(warnings(caplog)) == 2  # room was freed in between: a new episode
    with RecordStore(tmp_path, cfg) as s:
        assert s.stats()["refused_total"] == 9  # the count is durable


def test_drop_anchored_drops_oldest_anchored_segments_then_refuses(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="w3gate.buffer")
    cfg = StoreConfig(segment_records=4, max_records=10, full_policy=FullPolicy.DROP_ANCHORED)
    with RecordStore(tmp_path, cfg) as s:
        s.append(docs(10))
        s.mark_anchored(9)  # segments 1-4 and 5-8 wholly anchored, 9-10 not
        r = s.append(docs(2, start=10))
        assert (r.seqs, r.refused, r.dropped) == ([11, 12], 0, 4)
        assert s.get(4) is None and s.get(5)["n"] == 4
        r = s.append(docs(2, start=12))
        assert (r.seqs, r.refused, r.dropped) == ([13, 14], 0, 0)  # room left by the drop
        r = s.append(docs(6, start=14))  # needs 6: segment 5-8 frees 4, the rest is refused
        assert (r.seqs, r.refused, r.dropped) == ([15, 16, 17, 18], 2, 4)
        assert [d["seq"] for d in s.iter_records(newest_first=False)] == list(range(9, 19))
        assert s.append(docs(1, start=20)).refused == 1  # nothing anchored left: refuse
        st = s.stats()
        assert (st["records"], st["first_seq"], st["dropped_total"], st["refused_total"]) == (10, 9, 8, 3)
        msgs = warnings(caplog)
        assert len(msgs) == 2  # one episode: its first drop and its first refusal
        assert "dropping" in msgs[0] and "refusing" in msgs[1]
    with RecordStore(tmp_path, cfg) as s:
        assert s.stats()["dropped_total"] == 8 and s.stats()["first_seq"] == 9


# -- expiry --------------------------------------------------------------------------------------

def test_expire_removes_old_segments_at_min_state_and_counts_them(tmp_path):
    cfg = StoreConfig(segment_records=4, retention_s=100)
    with RecordStore(tmp_path, cfg) as s:
        s.append(docs(12))  # rx T0..T0+11; segments 1-4, 5-8, 9-12
        s.mark_processed(12)
        s.mark_anchored(6)
        assert s.expire(now=T0 + 50) == 0  # nothing is past the retention yet
        assert s.expire(now=T0 + 200) == 4  # only segment 1-4 is wholly anchored
        assert s.expire(now=T0 + 200, min_state=RecordState.PROCESSED) == 8
        assert s.stats()["records"] == 0 and s.stats()["expired_total"] == 12
        # an empty segment stays, so the file names still say which seqs were issued
        assert os.listdir(tmp_path / "segments") == [segment_name(13)]
        assert (tmp_path / "segments" / segment_name(13)).read_text() == '{"records":{}}'
    with RecordStore(tmp_path, cfg) as s:
        assert s.append(docs(1)).seqs == [13]  # seqs are never reused
        assert s.stats()["expired_total"] == 12


def test_expire_keeps_a_segment_whose_newest_record_is_recent(store):
    store.append(docs(4, rx=T0) + docs(4, rx=T0 + 1000))
    store.mark_anchored(8)
    assert store.expire(now=T0 + 1000 + store.config.retention_s - 1) == 4
    assert store.expire(now=T0 + 1000 + store.config.retention_s + 10, min_state=RecordState.ACCEPTED) == 4


def test_an_interrupted_removal_is_finished_on_open(tmp_path):
    cfg = StoreConfig(segment_records=4, retention_s=0)
    with RecordStore(tmp_path, cfg) as s:
        s.append(docs(10))
        saved = (tmp_path / "segments" / segment_name(1)).read_bytes()
        assert s.expire(now=T0 + 100, min_state=RecordState.ACCEPTED) == 10
    (tmp_path / "segments" / segment_name(1)).write_bytes(saved)  # as if the unlink never happened
    with RecordStore(tmp_path, cfg) as s:
        assert s.stats()["records"] == 0 and s.get(1) is None
        assert s.append(docs(1)).seqs == [11]
    assert not (tmp_path / "segments" / segment_name(1)).exists()


# -- readers and damage --------------------------------------------------------------------------

def test_readonly_never_creates_or_writes_and_sees_appended_data(tmp_path):
    missing = tmp_path / "nothing"
    ro = RecordStore(missing, readonly=True)
    assert ro.stats()["records"] == 0 and list(ro.iter_records()) == []
    assert not missing.exists()
    writer = RecordStore(tmp_path / "rec", StoreConfig(segment_records=4))
    writer.append(docs(6))
    writer.mark_processed(5)
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "rec").rglob("*")}
    ro = RecordStore(tmp_path / "rec", readonly=True)
    assert [d["seq"] for d in ro.iter_records()] == [6, 5, 4, 3, 2, 1]
    assert ro.get(5)["state"] == "processed" and ro.stats()["last_seq"] == 6
    for op in (lambda: ro.append(docs(1)), lambda: ro.mark_processed(6), lambda: ro.expire()):
        with pytest.raises(StoreError) as e:
            op()
        assert e.value.reason == "readonly"
    ro.close()
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "rec").rglob("*")} == before
    writer.append(docs(3, start=6))
    assert RecordStore(tmp_path / "rec", readonly=True).stats()["last_seq"] == 9  # a fresh view
    writer.close()


def test_leftover_temp_files_are_ignored_and_removed(tmp_path):
    with RecordStore(tmp_path, StoreConfig(segment_records=4)) as s:
        s.append(docs(5))
    (tmp_path / "segments" / (segment_name(5) + ".tmp")).write_text('{"records": {"5": {"rx"')
    (tmp_path / "segments" / (segment_name(9) + ".tmp")).write_text("garbage")
    (tmp_path / "meta.json.tmp").write_text("")
    ro = RecordStore(tmp_path, readonly=True)
    assert ro.stats()["last_seq"] == 5 and [d["n"] for d in ro.iter_records()] == [4, 3, 2, 1, 0]
    with RecordStore(tmp_path, StoreConfig(segment_records=4)) as s:
        assert s.append(docs(1, start=5)).seqs == [6]
    assert files(tmp_path) == ["meta.json", "segments", f"segments/{segment_name(1)}",
                               f"segments/{segment_name(5)}", "writer.lock"]


def test_only_one_writer_at_a_time(tmp_path):
    with RecordStore(tmp_path) as s:
        s.append(docs(2))
        with pytest.raises(StoreError) as e:
            RecordStore(tmp_path)
        assert e.value.reason == "locked"
        assert RecordStore(tmp_path, readonly=True).stats()["records"] == 2  # readers are welcome
    with RecordStore(tmp_path) as s:  # released on close (and by the kernel when a process dies)
        assert s.append(docs(1)).seqs == [3]


def test_a_closed_store_refuses_writes(tmp_path):
    s = RecordStore(tmp_path)
    s.close()
    with pytest.raises(StoreError) as e:
        s.append(docs(1))
    assert e.value.reason == "closed"


def test_bad_config_is_refused(tmp_path):
    with pytest.raises(StoreError) as e:
        RecordStore(tmp_path, StoreConfig(segment_records=0))
    assert e.value.reason == "bad_config"
    assert not any(tmp_path.iterdir())


def test_a_copied_store_reads_the_same(tmp_path):
    """Everything needed is in the directory: no state lives outside it."""
    with RecordStore(tmp_path / "a", StoreConfig(segment_records=4)) as s:
        s.append(docs(9))
        s.mark_anchored(4)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    with RecordStore(tmp_path / "b", StoreConfig(segment_records=4)) as s:
        assert s.stats()["anchored_upto"] == 4
        assert [d["n"] for d in s.iter_records(newest_first=False)] == list(range(9))
